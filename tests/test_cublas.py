"""cuBLAS blockwise as a GEMM choice (``fp8inductor/kernels/cublas.py``).

CPU: the guard (which calls it admits), the choice (heuristic, tuned table, lowering gate) and the
column-major scales of the activation quant kernel (under the Triton interpreter). GPU (``gpu``
marker, an sm_90 device): every admitted layout against the reference, the rejected ones falling
back to the Triton kernels, NaN propagation, CUDA graphs, and the compiled model keeping the op.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from fp8inductor import tuned
from fp8inductor.kernels import block_gemm as bg
from fp8inductor.kernels import cublas
from fp8inductor.kernels.act_quant import act_quant_1x128
from fp8inductor.kernels.config import CONFIGS, CUBLAS, CUBLAS_MIN_M, GemmConfig, pick_config
from fp8inductor.reference import block_gemm_ref, quantize_activation_ref, quantize_weight_ref
from fp8inductor.testing import assert_fp8_equal, assert_scales_equal, default_device, gemm_abs_sum_max, gemm_tolerance

DEVICE = default_device()
BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32

# ----------------------------------------------------------------------------------------------
# The guard, on sizes and dtypes (the lab's measured conditions; cases from its sweep)
# ----------------------------------------------------------------------------------------------

ADMITTED = [(4, 128, 512), (12, 2112, 7168), (100, 4096, 1536), (2048, 6144, 4096), (16, 4096, 4000)]
REJECTED = {
    "K/128=3 (silently wrong)": (16, 2112, 384),
    "K/128=5 (silently wrong)": (256, 256, 640),
    "K/128=33 (silently wrong)": (128, 1024, 4112),
    "N=1000 (rejected by torch)": (128, 1000, 512),
    "K%16 (rejected by torch)": (128, 4096, 4008),
    "M=0": (0, 4096, 4096),
}
# M % 4 != 0: CUBLAS_STATUS_NOT_SUPPORTED as called, so block_gemm pads the rows to a multiple of 4
ROWS_PADDED = {"M=1": (1, 4096, 4096), "M=5": (5, 4096, 4096), "M=127": (127, 2112, 7168), "M=2047": (2047, 4096, 4096)}


@pytest.mark.parametrize("mnk", ADMITTED, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("out_dtype", [BF16, FP16, FP32], ids=str)
def test_shape_ok_admits_measured_good_cases(mnk, out_dtype):
    assert cublas.shape_ok(*mnk, out_dtype, None)


@pytest.mark.parametrize("why", list(REJECTED))
def test_shape_ok_rejects_measured_bad_cases(why):
    assert not cublas.shape_ok(*REJECTED[why], BF16, None)


@pytest.mark.parametrize("why", list(ROWS_PADDED))
def test_rows_not_a_multiple_of_4_are_admitted_padded(monkeypatch, why):
    """cuBLAS itself refuses M % 4 != 0 (shape_ok of the raw call), but admits/usable judge the call
    block_gemm makes, with M rounded up to a multiple of 4."""
    m, n, k = ROWS_PADDED[why]
    assert not cublas.shape_ok(m, n, k, BF16, None)
    assert cublas.padded_rows(m) % 4 == 0 and 0 <= cublas.padded_rows(m) - m < 4
    assert cublas.shape_ok(cublas.padded_rows(m), n, k, BF16, None)
    monkeypatch.setattr(cublas, "device_supported", lambda device: True)
    assert cublas.admits(torch.device("cpu"), m, n, k, BF16, None)
    assert not cublas.admits(torch.device("cpu"), 0, n, k, BF16, None)
    assert not cublas.admits(torch.device("cpu"), m, n, 384, BF16, None)  # K/128 = 3 stays refused
    monkeypatch.setenv("FP8INDUCTOR_CUBLAS_PAD_ROWS", "0")  # the A/B switch: the raw condition again
    assert not cublas.admits(torch.device("cpu"), m, n, k, BF16, None)
    assert cublas.admits(torch.device("cpu"), cublas.padded_rows(m), n, k, BF16, None)


def _fake_scaled_mm(calls: list):
    """torch._scaled_mm as cuBLAS blockwise behaves on the H100, on CPU tensors: M % 4 != 0 raises,
    scales must be column-major [M, G] (strides (1, M)); else the block-scaled product."""

    def scaled_mm(xq, wq_t, xs, ws_t, bias=None, out_dtype=BF16):
        m = xq.shape[0]
        calls.append((m, xs.stride()))
        if m % 4:
            raise RuntimeError("CUBLAS_STATUS_NOT_SUPPORTED (stand-in)")
        assert xq.is_contiguous() and xs.stride() == (1, m)
        return block_gemm_ref(xq, xs, wq_t.t(), ws_t.t(), bias, out_dtype)

    return scaled_mm


@pytest.mark.parametrize("m", [1, 3, 5, 127, 130])
@pytest.mark.parametrize("col_major", [False, True])
def test_block_gemm_pads_rows_to_a_multiple_of_4(monkeypatch, m, col_major):
    """M % 4 != 0: cuBLAS is called with zero rows appended (scale 0) and the first M rows come back,
    equal to the reference of the M rows (a stand-in _scaled_mm that refuses M % 4, as cuBLAS does)."""
    calls = []
    monkeypatch.setattr(torch, "_scaled_mm", _fake_scaled_mm(calls))
    n, k = 256, 640 + 128 * 3  # K/128 = 8
    g = torch.Generator().manual_seed(m)
    xq, xs = quantize_activation_ref(torch.randn(m, k, generator=g) * 4, 128)
    if col_major:
        xs = xs.t().contiguous().t()
    wq, ws = quantize_weight_ref(torch.randn(n, k, generator=g), (128, 128))
    y = cublas.block_gemm(xq, xs, wq, ws, None, BF16)
    mp = cublas.padded_rows(m)
    assert calls == [(mp, (1, mp))]
    assert y.shape == (m, n) and y.is_contiguous() and y.dtype == BF16
    torch.testing.assert_close(y, block_gemm_ref(xq, xs, wq, ws, None, BF16), rtol=0, atol=0)
    padded_q, padded_s = cublas.pad_rows(xq, xs, mp)
    assert padded_q.shape == (mp, k) and padded_q.dtype == xq.dtype and padded_s.stride() == (1, mp)
    assert not padded_q[m:].view(torch.uint8).any() and not padded_s[m:].any()
    assert torch.equal(padded_q[:m].view(torch.uint8), xq.view(torch.uint8)) and torch.equal(padded_s[:m], xs)


@pytest.mark.parametrize("m,rows", [(5, 8), (130, 132), (0, 4), (7, 7)])
def test_act_quant_writes_the_padded_rows(m, rows):
    """act_quant_1x128(rows=...) writes rows M.. as quantized zeros (code 0, a finite positive scale)
    and rows < M as without padding: cuBLAS's padded operand with no copy."""
    k = 640
    x = (torch.randn(m, k, generator=torch.Generator().manual_seed(m)) * 3).bfloat16()
    q, s = act_quant_1x128(x.to(DEVICE), col_major_scales=True, rows=rows)
    assert q.shape == (rows, k) and q.is_contiguous() and s.shape == (rows, 5) and s.stride() == (1, rows)
    ref_q, ref_s = quantize_activation_ref(x, 128)
    assert_fp8_equal(q[:m], ref_q)
    assert_scales_equal(s[:m].contiguous(), ref_s)
    assert not q[m:].view(torch.uint8).any()
    assert torch.isfinite(s[m:]).all() and (s[m:] > 0).all()
    with pytest.raises(ValueError, match="fewer than"):
        act_quant_1x128(x.to(DEVICE), rows=m - 1)


def test_linear_on_cublas_quantizes_straight_into_the_padded_rows(monkeypatch):
    """fp8_block_linear at M % 4 != 0 picking cuBLAS: the quant kernel writes the padded operand
    (no pad copy in block_gemm), cuBLAS sees 132 rows, the caller gets the 130 it asked for."""
    calls = []
    monkeypatch.setattr(torch, "_scaled_mm", _fake_scaled_mm(calls))
    monkeypatch.setattr(cublas, "device_supported", lambda device: True)
    monkeypatch.setattr(tuned, "lookup", lambda name, m, n, k: CUBLAS)
    copies = []
    real_pad = cublas.pad_rows
    monkeypatch.setattr(cublas, "pad_rows", lambda *a: copies.append(a) or real_pad(*a))
    m, n, k = 130, 256, 512
    x = (torch.randn(m, k, generator=torch.Generator().manual_seed(3)) * 2).bfloat16()
    wq, ws = quantize_weight_ref(torch.randn(n, k) * 0.05, (128, 128))
    y = bg.fp8_block_linear(x.to(DEVICE), wq.to(DEVICE), ws.to(DEVICE))  # the quant kernel needs DEVICE
    assert calls == [(132, (1, 132))] and not copies
    assert y.shape == (m, n) and y.is_contiguous()
    xq, xs = quantize_activation_ref(x, 128)
    # the stand-in multiplies 132 rows on DEVICE, the reference 130 on the CPU: same values up to
    # the fp32 summation order, then one bf16 rounding
    tol = gemm_tolerance(BF16, gemm_abs_sum_max(xq, xs, wq, ws))
    torch.testing.assert_close(y.float().cpu(), block_gemm_ref(xq, xs, wq, ws, None, BF16).float(), **tol)


def test_shape_ok_bias_rules():
    m, n, k = 128, 4096, 4096
    assert cublas.shape_ok(m, n, k, BF16, BF16) and cublas.shape_ok(m, n, k, FP16, FP16)
    assert not cublas.shape_ok(m, n, k, FP32, FP32)  # torch: no bias with an fp32 output
    assert not cublas.shape_ok(m, n, k, BF16, FP32)  # a bias in another dtype: the Triton kernels add it in fp32
    assert not cublas.shape_ok(m, n, k, torch.int32, None)


def test_enabled_switch_and_cpu_devices(monkeypatch):
    monkeypatch.delenv("FP8INDUCTOR_CUBLAS", raising=False)
    assert cublas.enabled()
    monkeypatch.setenv("FP8INDUCTOR_CUBLAS", "0")
    assert not cublas.enabled()
    assert not cublas.device_supported(torch.device("cpu"))
    monkeypatch.delenv("FP8INDUCTOR_CUBLAS")
    wq = torch.zeros(4096, 4096, dtype=torch.float8_e4m3fn)
    ws = torch.ones(32, 32)
    assert not cublas.usable_weight(128, wq, ws, None, BF16)  # CPU tensors: never cuBLAS


# ----------------------------------------------------------------------------------------------
# The choice: heuristic and tuned tables
# ----------------------------------------------------------------------------------------------


def test_heuristic_picks_cublas_from_its_threshold_only_where_admitted():
    assert pick_config(CUBLAS_MIN_M, 4096, 4096, 132, True, cublas_ok=True) == CUBLAS
    assert pick_config(8192, 4096, 4096, 132, True, cublas_ok=True) == CUBLAS
    assert pick_config(CUBLAS_MIN_M - 4, 4096, 4096, 132, True, cublas_ok=True).kind != "cublas"
    assert pick_config(8192, 4096, 4096, 132, True, cublas_ok=False) == CONFIGS["tma_128x128"]
    assert pick_config(8192, 4096, 4096, 132, True) == CONFIGS["tma_128x128"]  # the default: not admitted


def test_cublas_config_round_trips_through_a_tuning_table():
    data = {"schema": tuned.SCHEMA, "device": "X", "entries": {
        "N=4096,K=4096": {"2048": {"config": dataclasses.asdict(CUBLAS), "us": 1.0}}}}  # fmt: skip
    table = tuned.parse_table(json.loads(json.dumps(data)), "test")
    assert table["N=4096,K=4096"][2048] == CUBLAS
    with pytest.raises(ValueError, match="unknown GEMM kernel kind"):
        GemmConfig("cublaslt", 128, 128, 0, 0)


@pytest.mark.parametrize(
    "tuned_cfg,tma_ok,cublas_ok,want",
    [
        (CUBLAS, True, True, CUBLAS),
        (CUBLAS, True, False, CONFIGS["tma_128x128"]),  # e.g. K/128 % 4 != 0: the heuristic's Triton kernel
        (CONFIGS["tma_64x128"], True, True, CONFIGS["tma_64x128"]),  # the table knows better than the heuristic
        (CONFIGS["tma_64x128"], False, True, CUBLAS),  # TMA impossible: the heuristic, which admits cuBLAS
    ],
)
def test_tuned_cublas_entry_applies_only_where_admitted(monkeypatch, tuned_cfg, tma_ok, cublas_ok, want):
    monkeypatch.setattr(bg, "_device_name", lambda device: "Test GPU")
    monkeypatch.setattr(bg, "_num_sms", lambda device: 132)
    monkeypatch.setattr(tuned, "lookup", lambda name, m, n, k: tuned_cfg)
    assert bg._default_config(torch.device("cuda"), 4096, 4096, 4096, tma_ok, cublas_ok) == want


def test_cuda_build_gate(monkeypatch):
    assert cublas.cuda_build_ok("12.9") and cublas.cuda_build_ok("13.0") and cublas.cuda_build_ok("12.10")
    assert not cublas.cuda_build_ok("12.8") and not cublas.cuda_build_ok("11.8")
    assert not cublas.cuda_build_ok("rocm") and not cublas.cuda_build_ok("")
    monkeypatch.setattr(torch.version, "cuda", None)  # a CPU or ROCm build (None: read torch.version.cuda)
    assert not cublas.cuda_build_ok()


@pytest.mark.parametrize(
    "mnk,bias_dtype",
    [((128, 256, 512), None), ((2048, 6144, 4096), BF16), ((130, 256, 512), None), ((512, 256, 384), None),
     ((64, 256, 512), None), ((256, 1000, 512), None), ((512, 256, 512), FP32)],
    ids=str,
)  # fmt: skip
def test_static_choice_is_the_run_time_choice_on_fresh_weights(monkeypatch, mnk, bias_dtype):
    """What the lowering and the sibling pass assume (``static_choice``) is what ``fp8_block_linear``
    picks at run time for row-major, aligned weights: cuBLAS where admitted, else the same Triton
    config. (An sm_90 device as far as the gate can tell; CPU tensors stand in for the layout.)"""
    monkeypatch.setattr(cublas, "device_supported", lambda device: True)
    m, n, k = mnk
    wq = torch.zeros(n, k, dtype=torch.float8_e4m3fn)
    ws = torch.ones(-(-n // 128), -(-k // 128))
    bias = None if bias_dtype is None else torch.zeros(n, dtype=bias_dtype)
    dev = torch.device("cpu")
    run_time = bg._default_config(
        dev, m, n, k, bg._tma_ok_weight(wq, BF16), cublas.usable_weight(m, wq, ws, bias, BF16)
    )
    assert bg.static_choice(dev, m, n, k, BF16, bias_dtype) == run_time


def _fake_hopper_cublas(monkeypatch, fail: Exception | None, usable_at_gemm: bool = True) -> list:
    """CPU stand-in for an sm_90 device whose cuBLAS call raises ``fail`` (or would be refused at the
    GEMM: ``usable_at_gemm=False``); returns the list of cuBLAS calls."""
    calls = []

    def gemm(*args):
        calls.append(args)
        raise fail

    monkeypatch.setattr(cublas, "usable_weight", lambda *a: True)
    monkeypatch.setattr(cublas, "usable", lambda *a: usable_at_gemm)
    monkeypatch.setattr(cublas, "block_gemm", gemm)
    return calls


def test_default_choice_falls_back_to_triton_when_cublas_raises(monkeypatch, caplog):
    """A cuBLAS error on a default choice (the linear, the GEMM alone) runs the Triton kernels with one
    warning; on a forced cuBLAS config it is raised."""
    import logging

    m, n, k = 128, 256, 512  # the heuristic's cuBLAS range
    calls = _fake_hopper_cublas(monkeypatch, RuntimeError("CUBLAS_STATUS_NOT_SUPPORTED (stand-in)"))
    cublas.warn_failure.cache_clear()
    x = (torch.randn(m, k, generator=torch.Generator().manual_seed(1)) * 2).bfloat16().to(DEVICE)
    wq, ws = [t.to(DEVICE) for t in quantize_weight_ref(torch.randn(n, k) * 0.05, (128, 128))]
    with caplog.at_level(logging.WARNING, logger="fp8inductor"):
        y = bg.fp8_block_linear(x, wq, ws)
        xq, xs = quantize_activation_ref(x.cpu(), 128)
        y_gemm = bg.fp8_block_gemm(xq.to(DEVICE), xs.to(DEVICE), wq, ws)
    assert len(calls) == 2
    assert sum("cuBLAS blockwise GEMM failed" in r.getMessage() for r in caplog.records) == 1
    ref = block_gemm_ref(xq, xs, wq.cpu(), ws.cpu(), out_dtype=BF16)
    tol = gemm_tolerance(BF16, gemm_abs_sum_max(xq, xs, wq.cpu(), ws.cpu()), hopper_fp8_mma=DEVICE == "cuda")
    torch.testing.assert_close(y.float().cpu(), ref.float(), **tol)
    torch.testing.assert_close(y_gemm.float().cpu(), ref.float(), **tol)
    with pytest.raises(RuntimeError, match="stand-in"):
        bg.fp8_block_linear(x, wq, ws, config=CUBLAS)


def test_picked_cublas_refused_at_the_gemm_runs_triton(monkeypatch):
    """The linear picked cuBLAS from the weight's side, but the GEMM's own check says no: the Triton
    kernels run (no error, no cuBLAS call); a forced cuBLAS config is a clear error."""
    m, n, k = 128, 256, 512
    calls = _fake_hopper_cublas(monkeypatch, RuntimeError("never called"), usable_at_gemm=False)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(2)).bfloat16().to(DEVICE)
    wq, ws = [t.to(DEVICE) for t in quantize_weight_ref(torch.randn(n, k) * 0.05, (128, 128))]
    y = bg.fp8_block_linear(x, wq, ws)
    assert not calls and y.shape == (m, n)
    xq, xs = quantize_activation_ref(x.cpu(), 128)
    ref = block_gemm_ref(xq, xs, wq.cpu(), ws.cpu(), out_dtype=BF16)
    tol = gemm_tolerance(BF16, gemm_abs_sum_max(xq, xs, wq.cpu(), ws.cpu()), hopper_fp8_mma=DEVICE == "cuda")
    torch.testing.assert_close(y.float().cpu(), ref.float(), **tol)
    with pytest.raises(ValueError, match="does not take this call"):
        bg.fp8_block_linear(x, wq, ws, config=CUBLAS)


# ----------------------------------------------------------------------------------------------
# Column-major activation scales (the layout cuBLAS reads), written by the quant kernel itself
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mk", [(4, 512), (9, 1000), (130, 4000)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("scale_fmt", ["float", "ue8m0"])
def test_act_quant_column_major_scales_are_the_same_values(mk, scale_fmt):
    m, k = mk
    x = (torch.randn(m, k, generator=torch.Generator().manual_seed(m + k)) * 3).bfloat16()
    x[m // 2, 7] = float("nan")  # a NaN group: NaN scale in either layout
    q, s = act_quant_1x128(x.to(DEVICE), scale_fmt, col_major_scales=True)
    assert s.shape == (m, -(-k // 128)) and s.stride() == (1, m)
    ref_q, ref_s = quantize_activation_ref(x, 128, scale_fmt)
    assert_scales_equal(s.contiguous(), ref_s)
    assert_fp8_equal(q, ref_q)


def test_act_quant_column_major_empty():
    q, s = act_quant_1x128(torch.zeros(0, 512, dtype=BF16, device=DEVICE), col_major_scales=True)
    assert q.shape == (0, 512) and s.shape == (0, 4)


# ----------------------------------------------------------------------------------------------
# GPU: cuBLAS against the reference, and the fallbacks
# ----------------------------------------------------------------------------------------------

gpu = pytest.mark.gpu


def _needs_hopper():
    if not cublas.device_supported(torch.device("cuda")):
        pytest.skip("cuBLAS blockwise needs compute capability 9.x")


def _operands(m: int, n: int, k: int, seed: int):
    """Reference-quantized operands on the GPU, rows of very different magnitudes."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) * torch.pow(10.0, torch.empty(m, 1).uniform_(-2, 2, generator=g))
    w = torch.randn(n, k, generator=g) * 0.05
    xq, xs = quantize_activation_ref(x, 128)
    wq, ws = quantize_weight_ref(w, (128, 128))
    return [t.cuda() for t in (xq, xs, wq, ws)]


def _check(y: torch.Tensor, xq, xs, wq, ws, bias, out_dtype) -> None:
    cpu = [None if t is None else t.cpu() for t in (xq, xs, wq, ws, bias)]
    ref = block_gemm_ref(*cpu, out_dtype)
    assert y.dtype == out_dtype and y.shape == ref.shape and y.is_contiguous()
    # cuBLAS accumulates fp8 products like our wgmma kernels (measured 2**-15.8 of the term
    # magnitudes, testing.HOPPER_FP8_ACC_ATOL), then rounds once to out_dtype.
    tol = gemm_tolerance(out_dtype, gemm_abs_sum_max(*cpu[:4]), hopper_fp8_mma=True)
    torch.testing.assert_close(y.float().cpu(), ref.float(), **tol)


@gpu
@pytest.mark.parametrize("mnk", [(4, 144, 512), (12, 2112, 7168), (100, 16, 1536), (1000, 4096, 4000), (2048, 6144, 4096)],
                         ids=lambda s: "x".join(map(str, s)))  # fmt: skip
@pytest.mark.parametrize("out_dtype", [BF16, FP16, FP32], ids=str)
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
def test_cublas_matches_reference(mnk, out_dtype, with_bias):
    _needs_hopper()
    if with_bias and out_dtype == FP32:
        pytest.skip("no bias with an fp32 output (not admitted: test_shape_ok_bias_rules)")
    m, n, k = mnk
    xq, xs, wq, ws = _operands(m, n, k, seed=m + n + k)
    bias = torch.randn(n, generator=torch.Generator().manual_seed(3)).to(out_dtype).cuda() if with_bias else None
    assert cublas.usable(xq, wq, ws, bias, out_dtype)
    _check(bg.fp8_block_gemm(xq, xs, wq, ws, bias, out_dtype, config=CUBLAS), xq, xs, wq, ws, bias, out_dtype)


@gpu
@pytest.mark.parametrize("why", list(ROWS_PADDED))
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
def test_cublas_pads_rows_and_matches_reference(why, with_bias):
    """M % 4 != 0 on the real cuBLAS: the padded call, forced and by default (the op's linear too)."""
    _needs_hopper()
    m, n, k = ROWS_PADDED[why]
    xq, xs, wq, ws = _operands(m, n, k, seed=m + 5)
    bias = torch.randn(n, generator=torch.Generator().manual_seed(4)).to(BF16).cuda() if with_bias else None
    assert cublas.usable(xq, wq, ws, bias, BF16)
    _check(bg.fp8_block_gemm(xq, xs, wq, ws, bias, BF16, config=CUBLAS), xq, xs, wq, ws, bias, BF16)


@gpu
@pytest.mark.usefixtures("fresh_dynamo")
def test_padded_rows_through_the_op_under_cuda_graphs(monkeypatch):
    """A symbolic M runs the op, which for M % 4 != 0 returns a view of cuBLAS's padded product:
    the same values plainly compiled and replayed from a CUDA graph (mode="reduce-overhead")."""
    _needs_hopper()
    monkeypatch.setattr(tuned, "lookup", lambda name, m, n, k: CUBLAS)
    seen = []
    real = cublas.block_gemm
    monkeypatch.setattr(cublas, "block_gemm", lambda xq, *rest: seen.append(xq.shape[0]) or real(xq, *rest))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1024, 2048), nn.SiLU(), nn.Linear(2048, 1024)).to("cuda", BF16)
    x = torch.randn(301, 1024, device="cuda", dtype=BF16)
    with torch.inference_mode():
        y = torch.compile(model, backend="fp8block", dynamic=True)(x).clone()
        torch._dynamo.reset()
        f = torch.compile(model, backend="fp8block", mode="reduce-overhead", dynamic=True)
        for _ in range(3):  # warm-up, record, replay
            y_graph = f(x).clone()
    assert seen and set(seen) == {304}, seen  # quantized straight into 304 rows
    assert y.shape == (301, 1024) and torch.equal(y, y_graph)


@gpu
@pytest.mark.parametrize("why", [w for w in REJECTED if "M=0" not in w])
def test_rejected_shapes_run_the_triton_kernels(monkeypatch, why):
    """Where cuBLAS is wrong or unsupported the guard says no: forcing it is an error, and the
    default choice, even with the table saying cuBLAS, runs a Triton kernel that matches the reference."""
    _needs_hopper()
    m, n, k = REJECTED[why]
    xq, xs, wq, ws = _operands(m, n, k, seed=7)
    assert not cublas.usable(xq, wq, ws, None, BF16)
    with pytest.raises(ValueError, match="cuBLAS blockwise does not take this call"):
        bg.fp8_block_gemm(xq, xs, wq, ws, config=CUBLAS)
    monkeypatch.setattr(tuned, "lookup", lambda name, m, n, k: CUBLAS)
    called = []
    monkeypatch.setattr(cublas, "block_gemm", lambda *a: called.append(a))
    _check(bg.fp8_block_gemm(xq, xs, wq, ws), xq, xs, wq, ws, None, BF16)
    assert not called


@gpu
def test_layouts_cublas_cannot_take_run_the_triton_kernels(monkeypatch):
    _needs_hopper()
    m, n, k = 256, 4096, 4096
    xq, xs, wq, ws = _operands(m, n, k, seed=8)
    bias32 = torch.randn(n, device="cuda")
    wq_cm = wq.t().contiguous().t()  # column-major weight
    wide = torch.zeros(m, k + 16, dtype=torch.uint8, device="cuda").view(torch.float8_e4m3fn)
    wide[:, :k] = xq
    called = []
    monkeypatch.setattr(cublas, "block_gemm", lambda *a: called.append(a))
    monkeypatch.setattr(tuned, "lookup", lambda name, m, n, k: CUBLAS)
    for args in [(xq, xs, wq_cm, ws, None), (wide[:, :k], xs, wq, ws, None), (xq, xs, wq, ws, bias32)]:
        assert not cublas.usable(args[0], args[2], args[3], args[4], BF16)
        _check(bg.fp8_block_gemm(*args), *args, BF16)
    assert not called


@gpu
def test_linear_picks_cublas_and_agrees_with_triton(monkeypatch):
    """The op at a prefill shape: cuBLAS (with column-major scales straight from the quant kernel),
    within one bf16 rounding plus accumulation noise of the Triton kernels; FP8INDUCTOR_CUBLAS=0
    turns it off."""
    _needs_hopper()
    m, n, k = 512, 4096, 4096
    x = torch.randn(m, k, device="cuda", dtype=BF16)
    wq, ws = [t.cuda() for t in quantize_weight_ref(torch.randn(n, k) * 0.05, (128, 128))]
    seen = []
    real = cublas.block_gemm

    def spy(xq, xs, *rest):
        seen.append(xs.stride())
        return real(xq, xs, *rest)

    monkeypatch.setattr(cublas, "block_gemm", spy)
    monkeypatch.setattr(tuned, "lookup", lambda name, m, n, k: None)  # the heuristic: cuBLAS from M = 128
    monkeypatch.delenv("FP8INDUCTOR_CUBLAS", raising=False)
    y = bg.fp8_block_linear(x, wq, ws)
    assert seen == [(1, m)]  # cuBLAS ran, on scales written column-major (no copy)
    monkeypatch.setenv("FP8INDUCTOR_CUBLAS", "0")
    y_triton = bg.fp8_block_linear(x, wq, ws)
    assert len(seen) == 1
    xq, xs = quantize_activation_ref(x.cpu(), 128)
    ref = block_gemm_ref(xq, xs, wq.cpu(), ws.cpu(), out_dtype=BF16)
    tol = gemm_tolerance(BF16, gemm_abs_sum_max(xq, xs, wq.cpu(), ws.cpu()), hopper_fp8_mma=True)
    torch.testing.assert_close(y.float().cpu(), ref.float(), **tol)
    torch.testing.assert_close(y_triton.float().cpu(), ref.float(), **tol)


@gpu
def test_cublas_propagates_nan_rows_like_the_reference():
    _needs_hopper()
    m, n, k = 128, 256, 512
    x = torch.randn(m, k, device="cuda", dtype=BF16)
    x[5, 300] = float("nan")
    wq, ws = [t.cuda() for t in quantize_weight_ref(torch.randn(n, k) * 0.05, (128, 128))]
    y = bg.fp8_block_linear(x, wq, ws, config=CUBLAS)
    assert y[5].isnan().all() and not y[torch.arange(m, device="cuda") != 5].isnan().any()


@gpu
def test_cublas_linear_captures_in_a_cuda_graph():
    _needs_hopper()
    m, n, k = 256, 2112, 7168
    x = torch.randn(m, k, device="cuda", dtype=BF16)
    wq, ws = [t.cuda() for t in quantize_weight_ref(torch.randn(n, k) * 0.05, (128, 128))]
    eager = bg.fp8_block_linear(x, wq, ws, config=CUBLAS)
    graph, stream = torch.cuda.CUDAGraph(), torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        bg.fp8_block_linear(x, wq, ws, config=CUBLAS)
        with torch.cuda.graph(graph, stream=stream):
            captured = bg.fp8_block_linear(x, wq, ws, config=CUBLAS)
    torch.cuda.current_stream().wait_stream(stream)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(captured, eager, rtol=0, atol=0)


@gpu
@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("m", [512, 510])
def test_compiled_linear_lowers_to_scaled_mm_where_cublas_is_picked(monkeypatch, m):
    """The lowering turns a cuBLAS-picked linear into the IR activation quantization (``quant_ir``,
    an Inductor kernel) and one aten ``_scaled_mm`` call (no template, no custom op left); with
    cuBLAS off, the same linear becomes a template. Both match the eager op. M = 510: cuBLAS
    multiplies 512 rows (the quantization pads them) and the first 510 come back."""
    _needs_hopper()
    from torch._inductor.utils import run_and_get_code

    from fp8inductor.modules import quantize_

    torch.manual_seed(0)
    lin = nn.Linear(1024, 2048, bias=True, device="cuda", dtype=BF16)
    x = torch.randn(m, 1024, device="cuda", dtype=BF16)
    holder = nn.Sequential(nn.Linear(1024, 2048, bias=True, device="cuda", dtype=BF16))
    holder[0].load_state_dict(lin.state_dict())
    quantize_(holder)
    codes = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("FP8INDUCTOR_CUBLAS", flag)
        torch._dynamo.reset()
        with torch.inference_mode():
            y, code = run_and_get_code(torch.compile(lin, backend="fp8block"), x)
            want = holder(x)
        codes[flag] = _code_lines(code)
        tol = 2**-7  # one bf16 rounding plus Hopper fp8 accumulation noise (as test_gpu_lowering)
        torch.testing.assert_close(y.float(), want.float(), rtol=tol, atol=tol * want.abs().max().item())
    assert "@triton_heuristics.template(" not in codes["1"] and not _op_calls(codes["1"]), codes["1"]
    assert codes["1"].count("aten._scaled_mm.default(") == 1, codes["1"]
    assert "reinterpret_tensor(buf" in codes["1"] and f"({cublas.padded_rows(m)}, 1024)" in codes["1"], codes["1"]
    assert "@triton_heuristics.template(" in codes["0"] and "_scaled_mm" not in codes["0"]


def _code_lines(codes: list[str]) -> str:
    """The generated code without comments (they keep the FX graph's op names)."""
    return "\n".join(line for c in codes for line in c.splitlines() if not line.strip().startswith("#"))


def _op_calls(code: str) -> list[str]:
    """Calls of fp8inductor ops in generated code (not the op names that Inductor's
    ``assert_size_stride`` messages quote)."""
    return [line for line in code.splitlines() if "torch.ops.fp8inductor." in line and ".default(" in line]


class _QKV(nn.Module):
    """q/k/v on one activation, then o: a prefill-shaped attention projection stand-in."""

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(1024, 1024, bias=False)
        self.k = nn.Linear(1024, 256, bias=False)
        self.v = nn.Linear(1024, 256, bias=False)
        self.o = nn.Linear(1536, 1024, bias=False)

    def forward(self, x):
        return self.o(torch.cat([self.q(x), torch.relu(self.k(x)), self.v(x) * 2], -1))


@gpu
@pytest.mark.usefixtures("fresh_dynamo")
def test_compiled_siblings_fuse_into_one_cublas_gemm_at_prefill_m():
    """M = 512 > SIBLING_FUSION_MAX_M: q/k/v become one block_linear (one activation quant, one
    cuBLAS GEMM on the concatenated weight) because that GEMM runs on cuBLAS; the result matches the
    unfused compile within the GEMM tolerance (different cuBLAS kernels for different N). The
    activation quantizations are Inductor kernels, no op call is left."""
    _needs_hopper()
    from torch._dynamo.utils import counters
    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(0)
    model = _QKV().to("cuda", BF16).eval()
    x = torch.randn(512, 1024, device="cuda", dtype=BF16)
    with torch.inference_mode():
        y, code = run_and_get_code(torch.compile(model, backend="fp8block"), x)
        assert counters["fp8inductor"]["sibling_groups"] == 1
        code = _code_lines(code)
        assert code.count("aten._scaled_mm.default(") == 2, code  # qkv, o
        assert not _op_calls(code), code
        torch._dynamo.reset()
        y_sep = torch.compile(model, backend="fp8block", options={"fuse_siblings": False})(x)
    torch.testing.assert_close(y.float(), y_sep.float(), rtol=2**-6, atol=2**-6 * y_sep.abs().max().item())


class _MLP(nn.Module):
    """Llama's MLP: down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden: int = 1024, inter: int = 2048) -> None:
        super().__init__()
        self.gate = nn.Linear(hidden, inter, bias=False)
        self.up = nn.Linear(hidden, inter, bias=False)
        self.down = nn.Linear(inter, hidden, bias=False)

    def forward(self, x):
        return self.down(torch.nn.functional.silu(self.gate(x)) * self.up(x))


@gpu
@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("quantized", [False, True], ids=["backend", "quantize_"])
def test_compiled_mlp_quantizes_in_the_producer_kernel(quantized):
    """At a cuBLAS M, SiLU(gate) * up and down's activation quantization are one Inductor kernel (no
    bf16 intermediate, no op call), for the backend's linears and for ``quantize_``'s FP8 modules
    (unfused gate / up, which still share x's quantization). The result matches the eager FP8 MLP:
    down's input differs by Inductor's unrounded product, so the tolerance allows a bf16 rounding
    of it through the 2048-term dot (as test_gpu_lowering's epilogue test)."""
    _needs_hopper()
    from torch._inductor.utils import run_and_get_code

    from fp8inductor.modules import quantize_

    torch.manual_seed(0)
    model = _MLP().to("cuda", BF16).eval()
    eager = _MLP().to("cuda", BF16).eval()
    eager.load_state_dict(model.state_dict())
    quantize_(eager)
    if quantized:
        model = eager
    x = torch.randn(4, 256, 1024, device="cuda", dtype=BF16)
    with torch.inference_mode():
        want = eager(x)
        y, code = run_and_get_code(torch.compile(model, backend="fp8block"), x)
    code = _code_lines(code)
    assert not _op_calls(code), code
    assert code.count("aten._scaled_mm.default(") == (3 if quantized else 2), code
    assert code.count("= async_compile.triton(") == 2, code  # quant(x); silu * up + quant
    torch.testing.assert_close(y.float(), want.float(), rtol=2**-6, atol=2**-6 * want.abs().max().item())
