"""SiLU(gate) * up + 1x128 quantization: a hand-written kernel against Inductor's fused IR.

    PYTHONPATH=. python benchmarks/lab/silu_quant_lab.py [--out silu_quant_lab.json]   # H100/H200
    PYTHONPATH=. TRITON_INTERPRET=1 python benchmarks/lab/silu_quant_lab.py --cpu-check  # numerics only

Why: down_proj's input quantization is, at prefill, Inductor's persistent reduction fused into the
SiLU * up kernel (``fp8inductor/quant_ir.py``). Run G (docs/benchmarks.md, H100, git 642c291)
measured it at 64.6 µs per layer at Llama-3-8B 1 x 2048 (147 MB moved: 2.3 TB/s) where the bf16 model's SiLU * up
alone takes 53.5 µs; 1x2048 prefill missed 1.4x by 44 µs per forward (8 layers). This lab decides
whether a kernel of our own, as ``rms_norm_quant`` is for the norm, is worth wiring into the pass.

Answer (H100 80GB HBM3, 2026-12-06, torch 2.11 / triton 3.6; ``docs/bench_silu_quant_lab.json``): no.
Ours 60.0 / 114.9 / 15.2 / 114.4 us against the IR's 59.4 / 116.0 / 15.1 / 116.2 us on the four
shapes below (both about 2.5 TB/s, codes and scales bit-equal); wired into the pass (commit 84f9e03)
it took 65.5 us per layer in the model against the IR's 63.5, the forward unchanged. Removed again;
docs/benchmarks.md ("SiLU(gate) * up + quantization as a kernel of our own") has the numbers.

Per shape [M, 2N] (the gate/up GEMM's fused output: gate in columns [0, N), up in [N, 2N)):

* ``ours``: ``silu_mul_quant`` below, for each (BLOCK_M, num_warps) of the sweep: one program per
  (128-column group, BLOCK_M rows) tile, group index fastest (neighbouring programs read
  neighbouring 256-byte chunks of the same rows); SiLU as Inductor writes it
  (``g / (exp(-g) + 1)`` in fp32, libdevice ``exp``, Triton's division), times up in fp32 (no bf16
  rounding in between, as Inductor's fused chain), then the package's quantization helpers (IEEE
  scale and quotient, RNE e4m3). Scales are written column-major ([G, M] storage, what cuBLAS reads),
  BLOCK_M consecutive floats per program instead of one 4-byte store per 8 KB.
* ``ir``: ``quantize_activation(silu(gate) * up)`` compiled with ``backend="fp8block"`` (the IR
  path; the op's row-major scales here, the model's lowering writes them column-major).
* ``bf16``: ``torch.compile`` of SiLU(gate) * up alone: what the bf16 model pays.

Times: GPU kernel time per call from torch.profiler (what a busy GPU pays) and ``do_bench``
medians. Effective TB/s counts gate and up read (bf16) and the codes + scales written.
Numerics: ``ours`` against ``ir`` (bit-equal expected: the same fp32 operations) and against the
op's kernel (``act_quant_1x128``) on eager's fp32 SiLU * up (``x * sigmoid(x)``: may differ in the
last fp32 bit, so a few codes may move by one step).
"""

from __future__ import annotations

import argparse
import functools
import json

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from triton.language.extra import libdevice

import fp8inductor  # noqa: F401  (registers the backend and the ops)
from fp8inductor.kernels.act_quant import _amax_to_scale, _fp32_to_e4m3, act_quant_1x128, native_fp8_cast
from fp8inductor.kernels.norm_quant import _div_by_scale
from fp8inductor.reference import FP8_DTYPE

GROUP = 128
SHAPES = [(2048, 14336), (4096, 14336), (512, 14336), (2048, 28672)]  # (M, N): Llama-3-8B / 70B intermediates
SWEEP = [(8, 4), (16, 4), (16, 8), (32, 4), (32, 8), (64, 8)]  # (BLOCK_M, num_warps)


@triton.jit
def _silu_mul_quant_kernel(
    gu_ptr,  # [M, 2N] bf16: gate in columns [0, N), up in [N, 2N); strides (stride_m, 1)
    q_ptr,  # [M, N] float8e4nv codes (out), contiguous
    s_ptr,  # [M, N / 128] fp32 scales (out), strides (1, M): column-major
    M,
    N,
    stride_m,
    BLOCK_M: tl.constexpr,
    GROUP: tl.constexpr,  # 128
    NATIVE_CAST: tl.constexpr,  # on the GPU (hardware e4m3 cast, libdevice exp), else the interpreter
):
    g = tl.program_id(0)  # the 128-column group: fastest, neighbours read neighbouring chunks
    rows = tl.program_id(1).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = g * GROUP + tl.arange(0, GROUP)
    row_ok = rows < M
    offs = rows[:, None] * stride_m + cols[None, :]  # [BLOCK_M, GROUP]
    gate = tl.load(gu_ptr + offs, mask=row_ok[:, None], other=0.0).to(tl.float32)
    up = tl.load(gu_ptr + offs + N, mask=row_ok[:, None], other=0.0).to(tl.float32)
    if NATIVE_CAST:  # the GPU: libdevice's expf, as Inductor's generated code calls it
        e = libdevice.exp(-gate)
    else:  # the interpreter has no libdevice; numpy's exp
        e = tl.exp(-gate)
    y = gate / (e + 1.0) * up  # Inductor's SiLU * up, fp32 throughout
    amax = tl.max(tl.abs(y), axis=1)  # [BLOCK_M]
    has_nan = tl.max((y != y).to(tl.int32), axis=1) > 0
    s = _amax_to_scale(amax, has_nan, False)
    q = _fp32_to_e4m3(_div_by_scale(y, s), NATIVE_CAST)
    tl.store(q_ptr + rows[:, None] * N + cols[None, :], q, mask=row_ok[:, None])
    tl.store(s_ptr + g.to(tl.int64) * M + rows, s, mask=row_ok)  # column-major: BLOCK_M floats in a row


def silu_mul_quant(gate_up: torch.Tensor, block_m: int = 32, num_warps: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """gate_up: [M, 2N] bf16, N % 128 == 0, unit column stride. Returns q [M, N] e4m3 and s [M, N/128]
    fp32 column-major (strides (1, M))."""
    m, two_n = gate_up.shape
    n = two_n // 2
    if two_n % 2 or n % GROUP or gate_up.stride(1) != 1:
        raise ValueError(f"silu_mul_quant: needs [M, 2N] with N % {GROUP} == 0 and unit column stride")
    q = torch.empty((m, n), dtype=FP8_DTYPE, device=gate_up.device)
    s = torch.empty((n // GROUP, m), dtype=torch.float32, device=gate_up.device).t()
    if m:
        grid = (n // GROUP, triton.cdiv(m, block_m))
        _silu_mul_quant_kernel[grid](
            gate_up, q, s, m, n, gate_up.stride(0),
            BLOCK_M=block_m, GROUP=GROUP, NATIVE_CAST=native_fp8_cast(gate_up.device), num_warps=num_warps,
        )  # fmt: skip
    return q, s


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def eager_fp32_want(gate_up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The op's kernel on eager's fp32 SiLU * up (row-major scales)."""
    gate, up = gate_up.float().chunk(2, dim=-1)
    return act_quant_1x128((F.silu(gate) * up).contiguous())


def codes_differing(q: torch.Tensor, want: torch.Tensor) -> int:
    return int((q.view(torch.uint8) != want.view(torch.uint8)).sum())


def scales_differing(s: torch.Tensor, want: torch.Tensor) -> int:
    """Scales whose bits differ; two NaNs (of any payload) count as equal."""
    s, want = s.contiguous(), want.contiguous()
    bits_differ = s.view(torch.int32) != want.view(torch.int32)
    return int((bits_differ & ~(s.isnan() & want.isnan())).sum())


def kernel_us(fn) -> float:
    """GPU kernel time per call (µs), torch.profiler: quant_fusion_lab's measurement."""
    from quant_fusion_lab import kernel_us as kernel_us_and_names  # this directory: sys.path[0]

    return kernel_us_and_names(fn)[0]


def cpu_check() -> None:
    """Numerics under the Triton interpreter: awkward M, zeros, a NaN, huge values, against the op's
    kernel on eager's fp32 product."""
    g = torch.Generator().manual_seed(0)
    gu = torch.randn(37, 2 * 384, generator=g).to(torch.bfloat16)
    gu[3] = 0
    gu[5, 7] = float("nan")
    gu[9, 400:420] = 3e4
    for block_m, warps in ((8, 4), (32, 8)):
        q, s = silu_mul_quant(gu, block_m, warps)
        want_q, want_s = eager_fp32_want(gu)
        print(json.dumps({
            "block_m": block_m, "codes": q.numel(), "codes_differing": codes_differing(q, want_q),
            "scales_differing": scales_differing(s, want_s), "nan_rows_scales": s[5].isnan().tolist()[:3],
            "s_strides": list(s.stride()),
        }))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--cpu-check", action="store_true", help="numerics only, Triton interpreter on the CPU")
    args = ap.parse_args()
    if args.cpu_check:
        cpu_check()
        return
    dev = torch.device("cuda")
    rows = []
    with torch.inference_mode():
        for m, n in SHAPES:
            gen = torch.Generator(device=dev).manual_seed(0)
            gu = torch.randn(m, 2 * n, device=dev, dtype=torch.bfloat16, generator=gen)
            moved = m * 2 * n * 2 + m * n + m * (n // GROUP) * 4
            row: dict = {"m": m, "n": n, "mb_moved": moved / 1e6}
            for block_m, warps in SWEEP:
                call = functools.partial(silu_mul_quant, gu, block_m, warps)
                row[f"ours_m{block_m}_w{warps}_us"] = kernel_us(call)
            best = min((v, k) for k, v in row.items() if k.startswith("ours_m"))
            row["ours_best"], row["ours_best_us"] = best[1], best[0]
            row["ours_best_tb_s"] = moved / best[0] / 1e6
            bm, w = (int(t[1:]) for t in best[1].split("_")[1:3])
            q, s = silu_mul_quant(gu, bm, w)
            row["ours_do_bench_us"] = triton.testing.do_bench(functools.partial(silu_mul_quant, gu, bm, w)) * 1e3
            want_q, want_s = eager_fp32_want(gu)
            row["codes_differing_vs_eager_fp32"] = codes_differing(q, want_q)
            row["scales_differing_vs_eager_fp32"] = scales_differing(s, want_s)
            print(json.dumps(row), flush=True)  # ours survives a failing compile below
            try:
                torch._dynamo.reset()
                ir = torch.compile(lambda t: torch.ops.fp8inductor.quantize_activation(silu_mul(t), 128, "float"),
                                   backend="fp8block")  # fmt: skip
                bf16 = torch.compile(silu_mul)
                q_ir, s_ir = ir(gu)
                row["ir_kernel_us"] = kernel_us(functools.partial(ir, gu))
                row["bf16_kernel_us"] = kernel_us(functools.partial(bf16, gu))
                row["ir_tb_s"] = moved / row["ir_kernel_us"] / 1e6
                row["codes_differing_vs_ir"] = codes_differing(q, q_ir)
                row["scales_differing_vs_ir"] = scales_differing(s, s_ir)
                row["ours_vs_ir"] = row["ir_kernel_us"] / row["ours_best_us"]
            except Exception as exc:  # e.g. fp8inductor not installed: no fp8block entry point
                row["compile_error"] = f"{type(exc).__name__}: {exc}"[:300]
            rows.append(row)
            print(json.dumps(row), flush=True)
    from quant_fusion_lab import write_results  # this directory: sys.path[0]

    write_results(args.out, rows)


if __name__ == "__main__":
    main()
