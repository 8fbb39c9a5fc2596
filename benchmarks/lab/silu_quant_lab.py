"""SiLU(gate) * up + 1x128 quantization: a hand-written kernel against Inductor's fused IR.

    PYTHONPATH=. python benchmarks/lab/silu_quant_lab.py [--out silu_quant_lab.json]   # H100/H200
    PYTHONPATH=. TRITON_INTERPRET=1 python benchmarks/lab/silu_quant_lab.py --cpu-check  # numerics only

Why: down_proj's input quantization is, at prefill, Inductor's persistent reduction fused into the
SiLU * up kernel (``fp8inductor/quant_ir.py``). Run G (docs/benchmarks.md, H100, git 642c291)
measured it at 64.6 µs per layer at Llama-3-8B 1 x 2048 (147 MB moved: 2.3 TB/s) where the bf16 model's SiLU * up
alone takes 53.5 µs; 1x2048 prefill missed 1.4x by 44 µs per forward (8 layers). This lab decides
whether a kernel of our own, as ``rms_norm_quant`` is for the norm, is worth wiring into the pass.

Per shape [M, 2N] (the gate/up GEMM's fused output: gate in columns [0, N), up in [N, 2N)):

* ``ours``: ``fp8inductor.kernels.silu_quant.silu_mul_quant`` on the two halves (views), for each
  (BLOCK_M, num_warps) of the sweep: one program per (128-column group, BLOCK_M rows) tile, group
  index fastest (neighbouring programs read neighbouring 256-byte chunks of the same rows); SiLU as
  Inductor writes it
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

import fp8inductor  # noqa: F401  (registers the backend and the ops)
from fp8inductor.kernels.act_quant import act_quant_1x128
from fp8inductor.kernels.silu_quant import silu_mul_quant as kernel_silu_mul_quant

GROUP = 128
SHAPES = [(2048, 14336), (4096, 14336), (512, 14336), (2048, 28672)]  # (M, N): Llama-3-8B / 70B intermediates
SWEEP = [(8, 4), (16, 4), (16, 8), (32, 4), (32, 8), (64, 8)]  # (BLOCK_M, num_warps)


def silu_mul_quant(gate_up: torch.Tensor, block_m: int, num_warps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The package's kernel on the two halves of gate_up [M, 2N] (views, row stride 2N)."""
    gate, up = gate_up.chunk(2, dim=-1)
    return kernel_silu_mul_quant(gate, up, "float", block_m, num_warps)


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
