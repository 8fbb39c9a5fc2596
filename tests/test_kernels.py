"""Triton kernels vs ``fp8inductor.reference``.

Quantization must be bit-exact (up to the sign of zero codes); the GEMM must be within one
rounding to the output dtype of ``block_gemm_ref`` on the same quantized inputs.

Runs natively on CUDA when a GPU is visible, otherwise under the Triton interpreter on CPU
tensors (``tests/conftest.py`` sets ``TRITON_INTERPRET=1`` before the kernels are imported).
"""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fp8inductor.kernels.act_quant import _fp32_to_e4m3, act_quant_1x128, native_fp8_cast
from fp8inductor.kernels import cublas
from fp8inductor.kernels.block_gemm import (
    CONFIGS,
    GemmConfig,
    _default_config,
    _tma_ok,
    fp8_block_gemm,
    fp8_block_linear,
    pick_config,
)
from fp8inductor.kernels.weight_quant import weight_quant_128x128
from fp8inductor.reference import (
    FP8_DTYPE,
    SCALE_FMTS,
    block_fp8_linear_ref,
    block_gemm_ref,
    ceil_div,
    quantize_activation_ref,
    quantize_weight_ref,
)
from fp8inductor.testing import (
    assert_fp8_equal,
    assert_scales_equal,
    default_device,
    gemm_abs_sum_max,
    gemm_tolerance,
)

DEVICE = default_device()
DTYPES = (torch.bfloat16, torch.float16, torch.float32)

# The references always run on CPU copies: they are the spec, and on CUDA torch computes
# ``tensor / python_scalar`` as a multiplication by the scalar's reciprocal, not as an IEEE
# division, so ``amax_to_scale`` on a CUDA tensor can be 1 ulp off its CPU (and kernel) result.

# Under the interpreter numpy warns about NaN/Inf arithmetic that the kernels do on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:(invalid value|overflow|divide by zero) encountered:RuntimeWarning")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _largest(dtype: torch.dtype) -> float:
    """A huge but finite magnitude of each dtype (fp16 tops out at 65504)."""
    return 6e4 if dtype == torch.float16 else 3e38


# ----------------------------------------------------------------------------------------------
# The fp32 -> e4m3 rounding helper, on its own
# ----------------------------------------------------------------------------------------------


@triton.jit
def _e4m3_cast_kernel(x_ptr, q_ptr, n, BLOCK: tl.constexpr, NATIVE: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    tl.store(q_ptr + offs, _fp32_to_e4m3(x, NATIVE), mask=mask)


def _e4m3_edge_values() -> torch.Tensor:
    """Every e4m3 value, every midpoint between neighbours (ties) and the fp32 values just beside
    each midpoint, both signs; plus out-of-range, non-finite, fp32-subnormal and random values."""
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(FP8_DTYPE).float()
    grid = codes[codes.isfinite() & (codes >= 0)].unique().sort().values  # 0 .. 448
    mids = (grid[:-1].double() + grid[1:].double()) / 2  # exact in fp32 (<= 5 significant bits)
    mids = mids.float()
    inf = torch.tensor(float("inf"))
    near = torch.cat([mids, torch.nextafter(mids, inf), torch.nextafter(mids, -inf)])
    special = torch.tensor(
        [
            448.0,
            448.0001,
            463.9,
            464.0,
            464.1,
            480.0,
            1e4,
            3.4e38,
            float("inf"),
            float("nan"),
            0.0,
            1e-45,
            1e-40,
            1.1754942e-38,
            2.0**-10,
            2.0**-10 * 1.0001,
            124.33,
            1e-6,
        ]
    )
    rand = torch.randn(4096, generator=_gen(0)) * torch.exp2(torch.randint(-14, 10, (4096,), generator=_gen(1)))
    pos = torch.cat([grid, near, special, rand.abs()])
    return torch.cat([pos, -pos])


# The emulation everywhere; the hardware cast (what the activation kernel uses on a GPU) on a GPU.
@pytest.mark.parametrize("native", [False] + ([True] if native_fp8_cast(torch.device(DEVICE)) else []))
def test_e4m3_rounding_helper_matches_torch_cast(native):
    x = _e4m3_edge_values().to(DEVICE)
    q = torch.empty(x.shape, dtype=FP8_DTYPE, device=DEVICE)
    block = 1024
    _e4m3_cast_kernel[(triton.cdiv(x.numel(), block),)](x, q, x.numel(), BLOCK=block, NATIVE=native)
    expected = x.cpu().clamp(-448.0, 448.0).to(FP8_DTYPE)  # torch's cast: round to nearest even
    assert_fp8_equal(q, expected, "e4m3 rounding helper")


# ----------------------------------------------------------------------------------------------
# Activation quantization
# ----------------------------------------------------------------------------------------------


def _check_act(x: torch.Tensor, scale_fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    q, s = act_quant_1x128(x, scale_fmt)
    ref_q, ref_s = quantize_activation_ref(x.cpu(), 128, scale_fmt)
    assert q.dtype == FP8_DTYPE and s.dtype == torch.float32
    assert q.shape == x.shape and s.shape == (x.shape[0], ceil_div(x.shape[1], 128))
    assert q.is_contiguous() and s.is_contiguous()
    assert_scales_equal(s, ref_s)
    assert_fp8_equal(q, ref_q)
    return q, s


def _awkward_activation(m: int, k: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Random rows whose groups span magnitudes 1e-6 .. 1e4, with an all-zero group, a group of
    exact e4m3 ties, subnormal-range values and a huge value where the shape leaves room."""
    kb = ceil_div(k, 128)
    mag = torch.pow(10.0, torch.empty(m, kb).uniform_(-6, 4, generator=_gen(seed)))
    x = torch.randn(m, k, generator=_gen(seed + 1)) * mag.repeat_interleave(128, dim=1)[:, :k]
    if dtype == torch.float16:
        x = x.clamp(-6e4, 6e4)
    if m >= 2:
        x[1, : min(k, 128)] = 0.0  # all-zero group: scale 1e-4 / 448, codes 0
    if m >= 3 and k >= 8:
        # amax 448 -> s == 1 (float fmt): the codes are the RNE of these values themselves.
        x[2, :8] = torch.tensor([448.0, 68.0, 232.0, 10.5, 1.0625, -68.0, 1.5 * 2**-9, 2.0**-10])
    x[0, :4] = torch.tensor([1e-6, -1e-6, 3e-7, 1e-6])[: min(k, 4)]  # subnormal-range (fp16: subnormal)
    x[-1, -1] = _largest(dtype)  # huge: the rest of its group quantizes to (signed) zero
    return x.to(dtype).to(DEVICE)


@pytest.mark.parametrize("scale_fmt", SCALE_FMTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m", [1, 3, 17, 130])
@pytest.mark.parametrize("k", [128, 256, 200, 72, 1000])
def test_act_quant_matches_reference(m, k, dtype, scale_fmt):
    _check_act(_awkward_activation(m, k, dtype, seed=m * 1000 + k), scale_fmt)


@pytest.mark.parametrize("config", [(1, 8, 4), (8, 4, 4), (32, 2, 8)])
def test_act_quant_tile_configs_match_reference(config):
    """Programs covering several rows and several groups (masked last groups, K = 1000, 9 rows)."""
    x = _awkward_activation(9, 1000, torch.bfloat16, seed=7)
    q, s = act_quant_1x128(x, "float", config=config)
    ref_q, ref_s = quantize_activation_ref(x.cpu(), 128, "float")
    assert_scales_equal(s, ref_s)
    assert_fp8_equal(q, ref_q)


@pytest.mark.parametrize("scale_fmt", SCALE_FMTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_act_quant_nan_confined_to_its_group(dtype, scale_fmt):
    x = (torch.randn(5, 300, generator=_gen(3)) * 3).to(dtype).to(DEVICE)
    x[2, 150] = float("nan")  # row 2, group 1 (columns 128..255)
    q, s = _check_act(x, scale_fmt)
    nan_s = s.isnan()
    assert nan_s[2, 1] and int(nan_s.sum()) == 1
    q_nan = q.float().isnan()
    assert q_nan[2, 128:256].all() and int(q_nan.sum()) == 128


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_act_quant_inf(dtype):
    x = torch.randn(3, 256, generator=_gen(4)).to(dtype).to(DEVICE)
    x[1, 5] = float("inf")
    x[2, 200] = float("-inf")
    q, s = _check_act(x, "float")
    assert s[1, 0].isinf() and s[2, 1].isinf() and s.isinf().sum() == 2
    # finite / Inf -> 0, Inf / Inf -> NaN
    assert q[1, 5].float().isnan() and q[2, 200].float().isnan()
    assert (q[1, :128].float().nan_to_num(0.0) == 0).all()


@pytest.mark.parametrize("scale_fmt", SCALE_FMTS)
def test_act_quant_huge_fp32(scale_fmt):
    x = torch.randn(4, 384, generator=_gen(5), dtype=torch.float32) * 1e37
    x[0, :128] = 3e38
    x[3, 300] = -3.4e38
    _check_act(x.to(DEVICE), scale_fmt)


def _top_scale_tensor(rows_per_value: int, dtype: torch.dtype) -> torch.Tensor:
    """[rows_per_value * 8, 256]: each run of rows has one group (the first 128 columns) whose amax
    gives the ue8m0 scale 2**120, from just above 448 * 2**119 up to the dtype's largest, with the
    code-240/256 tie 248 * 2**120, and an ordinary group beside it."""
    top = 2.0**120
    largest = torch.finfo(dtype).max
    values = torch.tensor([449 * 2.0**119, 3.0e38, 244 * top, 247.9 * top, 248 * top, 252 * top, 3.39e38, largest])
    x = torch.zeros(len(values), 256)
    x[:, 0], x[:, 1], x[:, 2] = values, -values, values / 3
    x[:, 128:] = torch.randn(len(values), 128, generator=_gen(12))
    return x.repeat_interleave(rows_per_value, dim=0).to(dtype)


@pytest.mark.parametrize("scale_fmt", SCALE_FMTS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_act_quant_top_of_fp32_range(dtype, scale_fmt):
    """ue8m0 scale 2**120: codes saturate at 240 (reference.code_bound), bit-exact with the
    reference, and the dequantized values are finite."""
    x = _top_scale_tensor(1, dtype).to(DEVICE)
    q, s = _check_act(x, scale_fmt)
    deq = q.cpu().float() * s.cpu().repeat_interleave(128, dim=1)
    assert torch.isfinite(deq).all()
    _assert_top_groups_saturate_at_240(q.cpu().float()[:, :128], s.cpu()[:, 0], scale_fmt)


def _assert_top_groups_saturate_at_240(codes: torch.Tensor, scales: torch.Tensor, scale_fmt: str) -> None:
    """codes [R, 128] of one group per row, scales [R] (each row's group scale)."""
    top = scales == 2.0**120
    if scale_fmt == "ue8m0":
        assert int(top.sum()) >= 5 and codes[top].abs().max() == 240
    else:
        assert not top.any() and codes.abs().max() == 448


@pytest.mark.parametrize("scale_fmt", SCALE_FMTS)
def test_weight_quant_top_of_fp32_range(scale_fmt):
    w = _top_scale_tensor(128, torch.bfloat16).to(DEVICE)  # each value the amax of its own block
    q, s = _check_weight(w, scale_fmt)
    deq = q.cpu().float() * s.cpu().repeat_interleave(128, dim=0).repeat_interleave(128, dim=1)
    assert torch.isfinite(deq).all()
    _assert_top_groups_saturate_at_240(q.cpu().float()[:, :128], s.cpu()[:, 0].repeat_interleave(128), scale_fmt)


def test_act_quant_empty():
    for shape in [(0, 200), (0, 128)]:
        x = torch.zeros(shape, dtype=torch.bfloat16, device=DEVICE)
        q, s = act_quant_1x128(x)
        ref_q, ref_s = quantize_activation_ref(x, 128)
        assert q.shape == ref_q.shape and s.shape == ref_s.shape
        assert q.dtype == FP8_DTYPE and s.dtype == torch.float32
    # K == 0 (the reference cannot reshape a [3, 0] tensor): empty codes and scales, no launch.
    q, s = act_quant_1x128(torch.zeros(3, 0, device=DEVICE))
    assert q.shape == (3, 0) and s.shape == (3, 0)


@pytest.mark.parametrize("scale_fmt", SCALE_FMTS)
def test_act_quant_strided_inputs(scale_fmt):
    wide = _awkward_activation(17, 300, torch.bfloat16, seed=6)
    _check_act(wide[:, 37:237], scale_fmt)  # column slice: row stride 300, K = 200
    _check_act(wide[::2, 5:133], scale_fmt)  # row step 2
    tall = _awkward_activation(200, 17, torch.float32, seed=7)
    _check_act(tall.t(), scale_fmt)  # transposed: column stride 17


def test_act_quant_rejects_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        act_quant_1x128(torch.zeros(2, 3, 128, device=DEVICE))
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        act_quant_1x128(torch.zeros(2, 128, dtype=torch.float64, device=DEVICE))
    with pytest.raises(ValueError, match="scale_fmt"):
        act_quant_1x128(torch.zeros(2, 128, device=DEVICE), "e8m0")


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    m=st.integers(1, 40),
    k=st.integers(1, 700),
    dtype=st.sampled_from(DTYPES),
    scale_fmt=st.sampled_from(SCALE_FMTS),
    log2_mag=st.integers(-40, 40),
    spread=st.integers(0, 12),
    seed=st.integers(0, 2**16),
)
def test_act_quant_hypothesis(m, k, dtype, scale_fmt, log2_mag, spread, seed):
    if dtype == torch.float16:
        log2_mag = max(-20, min(log2_mag, 10))  # keep in fp16's range (6e-8 .. 65504)
    # Magnitudes 2**(log2_mag +- spread), varying per element, so groups mix tiny and large values.
    exps = torch.randint(-spread, spread + 1, (m, k), generator=_gen(seed))
    x = torch.randn(m, k, generator=_gen(seed + 1)) * torch.exp2((exps + log2_mag).float())
    if dtype == torch.float16:
        x = x.clamp(-6e4, 6e4)
    _check_act(x.to(dtype).to(DEVICE), scale_fmt)


# ----------------------------------------------------------------------------------------------
# Weight quantization
# ----------------------------------------------------------------------------------------------


def _check_weight(w: torch.Tensor, scale_fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    q, s = weight_quant_128x128(w, scale_fmt)
    ref_q, ref_s = quantize_weight_ref(w.cpu(), (128, 128), scale_fmt)
    assert q.dtype == FP8_DTYPE and s.dtype == torch.float32
    assert q.shape == w.shape and s.shape == (ceil_div(w.shape[0], 128), ceil_div(w.shape[1], 128))
    assert q.is_contiguous() and s.is_contiguous()
    assert_scales_equal(s, ref_s)
    assert_fp8_equal(q, ref_q)
    return q, s


def _awkward_weight(n: int, k: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Blocks of magnitudes 1e-6 .. 1e3, an all-zero block (where there are several) and a huge value."""
    nb, kb = ceil_div(n, 128), ceil_div(k, 128)
    mag = torch.pow(10.0, torch.empty(nb, kb).uniform_(-6, 3, generator=_gen(seed)))
    mag = mag.repeat_interleave(128, dim=0)[:n].repeat_interleave(128, dim=1)[:, :k]
    w = torch.randn(n, k, generator=_gen(seed + 1)) * mag
    if nb * kb > 1:
        w[:128, :128] = 0.0
    w[-1, -1] = _largest(dtype)
    return w.to(dtype).to(DEVICE)


@pytest.mark.parametrize("scale_fmt", SCALE_FMTS)
@pytest.mark.parametrize("n", [128, 256, 200, 576, 72])
@pytest.mark.parametrize("k", [128, 256, 200, 576, 72])
def test_weight_quant_matches_reference(n, k, scale_fmt):
    _check_weight(_awkward_weight(n, k, torch.bfloat16, seed=n * 1000 + k), scale_fmt)


@pytest.mark.parametrize("scale_fmt", SCALE_FMTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_weight_quant_dtypes(dtype, scale_fmt):
    _check_weight(_awkward_weight(200, 330, dtype, seed=8), scale_fmt)


@pytest.mark.parametrize("scale_fmt", SCALE_FMTS)
def test_weight_quant_strided_inputs(scale_fmt):
    base = _awkward_weight(576, 200, torch.bfloat16, seed=9)
    _check_weight(base.t(), scale_fmt)  # [200, 576], strides (1, 200)
    _check_weight(base[3:203, 50:150], scale_fmt)  # slice, row stride 200


def test_weight_quant_nan_and_inf_confined_to_their_blocks():
    w = torch.randn(256, 384, generator=_gen(10)).to(DEVICE)
    w[10, 300] = float("nan")  # block (0, 2)
    w[200, 20] = float("inf")  # block (1, 0)
    q, s = _check_weight(w, "float")
    assert s[0, 2].isnan() and int(s.isnan().sum()) == 1
    assert s[1, 0].isinf() and int(s.isinf().sum()) == 1
    q_nan = q.float().isnan()
    assert q_nan[:128, 256:].all()
    assert int(q_nan.sum()) == 128 * 128 + 1  # the NaN block, plus Inf / Inf in block (1, 0)


def test_weight_quant_rejects_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        weight_quant_128x128(torch.zeros(128, device=DEVICE))
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        weight_quant_128x128(torch.zeros(128, 128, dtype=torch.int32, device=DEVICE))


# ----------------------------------------------------------------------------------------------
# Block-scaled GEMM
# ----------------------------------------------------------------------------------------------


def _gemm_operands(m: int, n: int, k: int, seed: int):
    """Operands quantized by the *reference* (so the GEMM test does not depend on the quant kernels)."""
    row_mag = torch.pow(10.0, torch.empty(m, 1).uniform_(-2, 2, generator=_gen(seed + 1)))
    x = torch.randn(m, k, generator=_gen(seed)) * row_mag
    w = torch.randn(n, k, generator=_gen(seed + 2)) * 0.05
    xq, xs = quantize_activation_ref(x, 128)
    wq, ws = quantize_weight_ref(w, (128, 128))
    return xq.to(DEVICE), xs.to(DEVICE), wq.to(DEVICE), ws.to(DEVICE)


def _cpu(*tensors):
    return [None if t is None else t.cpu() for t in tensors]


def _uses_wgmma(m: int, n: int, k: int, config: GemmConfig | None, xq, wq, ws, bias, out_dtype) -> bool:
    """True where the GPU multiplies with fp8 wgmma (BLOCK_M >= 64 on sm_90): Hopper accumulation."""
    if DEVICE != "cuda":
        return False  # the interpreter computes fp8 dots exactly
    if config is None:
        config = _default_config(
            xq.device, m, n, k, _tma_ok(xq, wq, out_dtype), cublas.usable(xq, wq, ws, bias, out_dtype)
        )
    return config.kind == "cublas" or config.block_m >= 64  # cuBLAS accumulates as our wgmma kernels do


def _check_gemm(xq, xs, wq, ws, bias, out_dtype, config: GemmConfig | None = None) -> torch.Tensor:
    y = fp8_block_gemm(xq, xs, wq, ws, bias, out_dtype, config=config)
    ref = block_gemm_ref(*_cpu(xq, xs, wq, ws, bias), out_dtype)
    assert y.dtype == out_dtype and y.shape == ref.shape and y.is_contiguous()
    # Same quantized inputs: the two differ by the accumulation inside each K block and the final
    # rounding to out_dtype only -> one ulp of out_dtype plus accumulation noise (gemm_tolerance).
    (m, k), n = xq.shape, wq.shape[0]
    hopper = _uses_wgmma(m, n, k, config, xq, wq, ws, bias, out_dtype)
    tol = gemm_tolerance(out_dtype, gemm_abs_sum_max(*_cpu(xq, xs, wq, ws)), hopper_fp8_mma=hopper)
    torch.testing.assert_close(y.float().cpu(), ref.float(), **tol)
    return y


GEMM_SHAPES = [(1, 256, 256), (5, 200, 200), (17, 128, 72), (33, 384, 1000), (65, 136, 328), (130, 200, 576)]


@pytest.mark.parametrize("out_dtype", DTYPES, ids=str)
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("mnk", GEMM_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gemm_matches_reference(mnk, with_bias, out_dtype):
    m, n, k = mnk
    xq, xs, wq, ws = _gemm_operands(m, n, k, seed=m + n + k)
    bias = torch.randn(n, generator=_gen(11)).to(out_dtype).to(DEVICE) if with_bias else None
    _check_gemm(xq, xs, wq, ws, bias, out_dtype)


# Every shipped configuration against the reference: partial M/N tiles, a partial K block where the
# kernel allows it (TMA needs K % 16 == 0), with bias; (M, N, K) per kernel kind.
CONFIG_SHAPES = {"tma": [(130, 200, 384), (257, 384, 512)], "tiles": [(70, 200, 328), (17, 384, 256)],
                 "splitk": [(3, 200, 1000), (16, 256, 512)]}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_config_matches_reference(name):
    cfg = CONFIGS[name]
    for m, n, k in CONFIG_SHAPES[cfg.kind]:
        xq, xs, wq, ws = _gemm_operands(m, n, k, seed=m * n + k)
        bias = torch.randn(n, generator=_gen(20)).to(DEVICE)
        _check_gemm(xq, xs, wq, ws, bias, torch.bfloat16, config=cfg)


def _shipped_triton_configs() -> list[GemmConfig]:
    """The distinct Triton configs of every shipped tuning table (cuBLAS entries have their own tests)."""
    import json

    from fp8inductor.tuned import CONFIG_DIR, parse_table

    found = {
        cfg
        for path in sorted(CONFIG_DIR.glob("*.json"))
        for per_m in parse_table(json.loads(path.read_text()), str(path)).values()
        for cfg in per_m.values()
        if cfg.kind != "cublas"
    }
    return sorted(found, key=repr)


SHIPPED_CONFIGS = _shipped_triton_configs()


@pytest.mark.parametrize("cfg", SHIPPED_CONFIGS, ids=repr)
def test_every_shipped_tuned_config_matches_reference(cfg):
    """Each Triton config that a shipped table (fp8inductor/configs/*.json) can pick, on awkward shapes."""
    for m, n, k in CONFIG_SHAPES[cfg.kind]:
        xq, xs, wq, ws = _gemm_operands(m, n, k, seed=m * n + k + 1)
        bias = torch.randn(n, generator=_gen(21)).to(DEVICE)
        _check_gemm(xq, xs, wq, ws, bias, torch.bfloat16, config=cfg)


def test_shipped_tables_pick_triton_configs():
    assert SHIPPED_CONFIGS, "no Triton config in the shipped tables: the test above would test nothing"


def test_pick_config_regimes():
    assert pick_config(1, 2112, 7168, 132, True).kind == "splitk"  # 33 tiles: split K
    assert pick_config(16, 28672, 4096, 132, True).kind == "tiles"  # 224 tiles of 16x128
    assert pick_config(64, 7168, 16384, 132, True) == CONFIGS["tiles_64x64"]
    assert pick_config(512, 4096, 4096, 132, True) == CONFIGS["tma_64x128"]
    assert pick_config(8192, 4096, 4096, 132, True) == CONFIGS["tma_128x128"]
    assert pick_config(8192, 4096, 4104, 132, False) == CONFIGS["tiles_128x128"]


def test_tma_config_on_unaligned_layout_is_an_error():
    xq, xs, wq, ws = _gemm_operands(70, 200, 328, seed=21)  # K % 16 != 0
    with pytest.raises(ValueError, match="TMA needs"):
        fp8_block_gemm(xq, xs, wq, ws, config=CONFIGS["tma_128x128"])


def test_gemm_fp32_out_is_close_to_fp32_reference():
    # Both sides accumulate in fp32 and differ only in the summation order inside a K block.
    # Measured for these shapes: interpreter max |y - ref| <= 2.4e-7 (max relative 1.9e-6, where
    # the sum cancels; often exactly 0); H100 max relative 3.5e-6 on outputs above 1% of the largest.
    for m, n, k in [(5, 200, 200), (33, 384, 1000)]:
        xq, xs, wq, ws = _gemm_operands(m, n, k, seed=12)
        y = fp8_block_gemm(xq, xs, wq, ws, out_dtype=torch.float32)
        ref = block_gemm_ref(*_cpu(xq, xs, wq, ws), out_dtype=torch.float32)
        torch.testing.assert_close(y.cpu(), ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))


def test_gemm_bias_dtypes():
    xq, xs, wq, ws = _gemm_operands(9, 200, 256, seed=13)
    for bias_dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        bias = torch.randn(200, generator=_gen(14)).to(bias_dtype).to(DEVICE)
        _check_gemm(xq, xs, wq, ws, bias, torch.bfloat16)


def test_gemm_strided_operands():
    xq, xs, wq, ws = _gemm_operands(20, 200, 328, seed=15)
    wide = torch.zeros(20, 400, dtype=torch.uint8, device=DEVICE).view(FP8_DTYPE)
    wide[:, 40:368] = xq
    xq_slice = wide[:, 40:368]  # row stride 400
    xs_colmajor = xs.t().contiguous().t()  # strides (1, M)
    ws_colmajor = ws.t().contiguous().t()
    bias = torch.randn(400, generator=_gen(16)).to(DEVICE)[::2]  # stride 2
    y = _check_gemm(xq_slice, xs_colmajor, wq, ws_colmajor, bias, torch.bfloat16)
    torch.testing.assert_close(y, fp8_block_gemm(xq, xs, wq, ws, bias.contiguous()), rtol=0, atol=0)


def test_gemm_empty():
    xq, xs, wq, ws = _gemm_operands(0, 200, 256, seed=17)
    y = fp8_block_gemm(xq, xs, wq, ws)
    assert y.shape == (0, 200) and y.dtype == torch.bfloat16
    # K == 0: y = bias, a fresh tensor even where a view of bias would have the right dtype and shape
    xq, xs = xq.new_empty(1, 0), xs.new_empty(1, 0)
    wq, ws = wq.new_empty(200, 0), ws.new_empty(2, 0)
    bias = torch.randn(200, generator=_gen(18)).to(DEVICE)
    y = fp8_block_gemm(xq, xs, wq, ws, bias, torch.float32)
    assert torch.equal(y, bias[None]) and y.data_ptr() != bias.data_ptr()
    zeros = torch.zeros(1, 200, dtype=torch.bfloat16, device=DEVICE)
    assert torch.equal(fp8_block_gemm(xq, xs, wq, ws, None, torch.bfloat16), zeros)


def test_gemm_rejects_bad_input():
    xq, xs, wq, ws = _gemm_operands(4, 200, 256, seed=18)
    with pytest.raises(TypeError, match="xq must be"):
        fp8_block_gemm(xq.float(), xs, wq, ws)
    with pytest.raises(TypeError, match="FP8 weight"):
        fp8_block_gemm(xq, xs, wq.float(), ws)
    with pytest.raises(ValueError, match="xs has shape"):
        fp8_block_gemm(xq, xs[:, :1], wq, ws)
    with pytest.raises(TypeError, match="xs must be float32"):
        fp8_block_gemm(xq, xs.double(), wq, ws)
    with pytest.raises(ValueError, match="weight_scale_inv has shape"):
        fp8_block_gemm(xq, xs, wq, ws[:1])
    with pytest.raises(ValueError, match="but wq is"):
        fp8_block_gemm(xq[:, :128], xs[:, :1], wq, ws)
    with pytest.raises(ValueError, match="bias must have shape"):
        fp8_block_gemm(xq, xs, wq, ws, bias=torch.zeros(199, device=DEVICE))
    with pytest.raises(TypeError, match="out_dtype"):
        fp8_block_gemm(xq, xs, wq, ws, out_dtype=torch.int32)


@pytest.mark.gpu
def test_gemm_rejects_mixed_devices():
    xq, xs, wq, ws = _gemm_operands(4, 200, 256, seed=19)
    with pytest.raises(ValueError, match="one device"):
        fp8_block_gemm(xq, xs.cpu(), wq, ws)


@pytest.mark.parametrize("scale_fmt", SCALE_FMTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_linear_matches_reference(dtype, scale_fmt):
    m, n, k = 7, 200, 328
    x = torch.randn(m, k, generator=_gen(20)).to(dtype).to(DEVICE)
    w = torch.randn(n, k, generator=_gen(21)).to(DEVICE) * 0.05
    wq, ws = weight_quant_128x128(w)
    bias = torch.randn(n, generator=_gen(22)).to(dtype).to(DEVICE)
    y = fp8_block_linear(x, wq, ws, bias, scale_fmt)
    x, wq, ws, bias = _cpu(x, wq, ws, bias)
    ref = block_fp8_linear_ref(x, wq, ws, bias, scale_fmt=scale_fmt)
    assert y.dtype == dtype and y.shape == (m, n)
    xq, xs = quantize_activation_ref(x, 128, scale_fmt)
    tol = gemm_tolerance(dtype, gemm_abs_sum_max(xq, xs, wq, ws))
    torch.testing.assert_close(y.float().cpu(), ref.float(), **tol)


# ----------------------------------------------------------------------------------------------
# Split-K: in-kernel reduction by the last split (tile tickets), cleared by the quant kernel
# ----------------------------------------------------------------------------------------------

# BLOCK_N below, equal to and above the 128-row weight block (scalar vs per-column weight scales);
# one split, a few, and more splits than K blocks (clamped: no empty split).
SPLITK_CONFIGS = {
    "splitk_16x64_s3": GemmConfig("splitk", 16, 64, 4, 4, split_k=3),
    "splitk_16x128_s8": GemmConfig("splitk", 16, 128, 4, 3, split_k=8),
    "splitk_16x256_s2": GemmConfig("splitk", 16, 256, 8, 2, split_k=2),
    "splitk_16x32_s64": GemmConfig("splitk", 16, 32, 4, 4, split_k=64),
    "splitk_64x64_s1": GemmConfig("splitk", 64, 64, 4, 4, split_k=1),
}
SPLITK_SHAPES = [(1, 200, 1000), (5, 576, 384), (16, 130, 72), (17, 256, 640), (70, 136, 1000)]  # (M, N, K)


@pytest.mark.parametrize("name", list(SPLITK_CONFIGS))
@pytest.mark.parametrize("mnk", SPLITK_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_splitk_linear_matches_reference_and_is_deterministic(mnk, name):
    """fp8_block_linear with a split-K config (tickets cleared by the quant kernel) equals quantize +
    fp8_block_gemm (tickets from torch.zeros) bit for bit, run after run, and the reference."""
    cfg = SPLITK_CONFIGS[name]
    m, n, k = mnk
    row_mag = torch.pow(10.0, torch.empty(m, 1).uniform_(-3, 3, generator=_gen(m + 1)))
    for dtype, scale_fmt, with_bias in [(torch.bfloat16, "float", True), (torch.float32, "ue8m0", False)]:
        x = (torch.randn(m, k, generator=_gen(m + n + k)) * row_mag).to(dtype).to(DEVICE)
        wq, ws = weight_quant_128x128((torch.randn(n, k, generator=_gen(n)) * 0.05).to(DEVICE))
        bias = torch.randn(n, generator=_gen(k)).to(dtype).to(DEVICE) if with_bias else None
        y = fp8_block_linear(x, wq, ws, bias, scale_fmt, config=cfg)
        assert y.dtype == dtype and y.shape == (m, n) and y.is_contiguous()
        xq, xs = act_quant_1x128(x, scale_fmt)
        torch.testing.assert_close(y, fp8_block_gemm(xq, xs, wq, ws, bias, dtype, config=cfg), rtol=0, atol=0)
        torch.testing.assert_close(y, fp8_block_linear(x, wq, ws, bias, scale_fmt, config=cfg), rtol=0, atol=0)
        xc, wqc, wsc, bc = _cpu(x, wq, ws, bias)
        ref = block_fp8_linear_ref(xc, wqc, wsc, bc, scale_fmt=scale_fmt)
        xq, xs = quantize_activation_ref(xc, 128, scale_fmt)
        tol = gemm_tolerance(dtype, gemm_abs_sum_max(xq, xs, wqc, wsc), hopper_fp8_mma=DEVICE == "cuda" and cfg.block_m >= 64)
        torch.testing.assert_close(y.float().cpu(), ref.float(), **tol)


def test_act_quant_clears_the_tickets_it_is_given():
    x = torch.randn(3, 300, generator=_gen(40)).to(DEVICE)
    for n_zero in (1, 1000, 2500):  # one, within and beyond one 1024-wide store
        tickets = torch.full((n_zero,), 7, dtype=torch.int32, device=DEVICE)
        q, s = act_quant_1x128(x, zero=tickets)
        assert (tickets == 0).all()
        q_ref, s_ref = act_quant_1x128(x)
        assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8)) and torch.equal(s, s_ref)
    tickets = torch.full((5,), 7, dtype=torch.int32, device=DEVICE)
    act_quant_1x128(x[:0], zero=tickets)  # M = 0: no launch, still cleared
    assert (tickets == 0).all()
    with pytest.raises(ValueError, match="zero must be"):
        act_quant_1x128(x, zero=torch.zeros(4, dtype=torch.int64, device=DEVICE))


def test_splitk_tickets_are_left_zero_for_reuse():
    """The last split of each tile puts its ticket back to zero, so one buffer serves many launches
    (the tuner relies on it; a stale ticket would make the wrong split reduce)."""
    from fp8inductor.kernels.block_gemm import _gemm, _split_plan

    cfg = SPLITK_CONFIGS["splitk_16x64_s3"]
    m, n, k = 5, 200, 1000
    xq, xs, wq, ws = _gemm_operands(m, n, k, seed=41)
    tickets = torch.zeros(_split_plan(cfg, m, n, k)[2], dtype=torch.int32, device=DEVICE)
    first = _gemm(xq, xs, wq, ws, None, torch.bfloat16, cfg, tickets)
    assert (tickets == 0).all()
    for _ in range(3):
        torch.testing.assert_close(_gemm(xq, xs, wq, ws, None, torch.bfloat16, cfg, tickets), first, rtol=0, atol=0)
    _check_gemm(xq, xs, wq, ws, None, torch.bfloat16, config=cfg)


# ----------------------------------------------------------------------------------------------
# Programmatic dependent launch (kernels/pdl.py): changes when kernels start, never what they compute
# ----------------------------------------------------------------------------------------------


def test_pdl_gating(monkeypatch):
    from fp8inductor.kernels import pdl

    monkeypatch.delenv("FP8INDUCTOR_PDL", raising=False)
    assert not pdl.pdl_enabled(torch.device("cpu"), 1)
    assert pdl.launch_options(False) == {}  # the interpreter's launcher takes no launch_pdl
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not pdl.pdl_enabled(torch.device("cuda"), 1)  # interpreted kernels have no griddepcontrol
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not pdl.pdl_enabled(torch.device("cuda"), pdl.PDL_MAX_M + 1)
    monkeypatch.setattr(pdl, "_capable", lambda device: True)  # an sm_90 GPU, as far as the gate can tell
    assert pdl.pdl_enabled(torch.device("cuda"), pdl.PDL_MAX_M)
    assert pdl.launch_options(True) == {"launch_pdl": True}
    monkeypatch.setenv("TRITON_INTERPRET", "true")  # any value Triton reads as true
    assert not pdl.pdl_enabled(torch.device("cuda"), 1)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv("FP8INDUCTOR_PDL", "0")
    assert not pdl.pdl_enabled(torch.device("cuda"), 1)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 5, 8])
@pytest.mark.parametrize("name", ["splitk_16x64_s3", "splitk_16x128_s8", "tiles_16x64"])
def test_pdl_launches_are_bit_equal_and_capture_in_cuda_graphs(monkeypatch, m, name):
    """Linears chained through pointwise ops, eager and replayed from a CUDA graph, with PDL (and its
    L2 weight prefetch) on and off: the same bits. Two linears back to back (the second one's quant
    kernel reads the first GEMM's output) cover a PDL launch whose predecessor is a PDL-launched GEMM."""
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("PDL needs compute capability >= 9.0")
    from fp8inductor.kernels import pdl

    cfg = SPLITK_CONFIGS.get(name) or CONFIGS[name]
    n, k = 384, 1000  # K % 128 != 0: the masked last K block (its prefetch line lies inside the row)
    w1 = weight_quant_128x128((torch.randn(k, k, generator=_gen(60)) * 0.05).to(DEVICE))
    w2 = weight_quant_128x128((torch.randn(n, k, generator=_gen(61)) * 0.05).to(DEVICE))
    x = torch.randn(m, k, generator=_gen(62)).bfloat16().to(DEVICE)

    def chain():
        h = fp8_block_linear(x * 0.5, *w1, config=cfg)
        return fp8_block_linear(fp8_block_linear(h, *w1, config=cfg) + h, *w2, config=cfg)

    outs = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("FP8INDUCTOR_PDL", flag)
        assert pdl.pdl_enabled(x.device, m) == (flag == "1")
        eager = chain()
        graph, stream = torch.cuda.CUDAGraph(), torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            chain()
            with torch.cuda.graph(graph, stream=stream):
                captured = chain()
        torch.cuda.current_stream().wait_stream(stream)
        for _ in range(3):
            graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(captured, eager, rtol=0, atol=0)
        outs[flag] = eager
    torch.testing.assert_close(outs["1"], outs["0"], rtol=0, atol=0)
