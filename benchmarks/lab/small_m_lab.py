"""Small-M (decode) linear lab: ``fp8_block_linear`` (quant + split-K GEMM) by config, against bf16.

    PYTHONPATH=. python benchmarks/lab/small_m_lab.py [--out results.json]

For each decode shape and M in {1, 4, 16}, GPU time (``triton.testing.do_bench_cudagraph``, so
launch gaps inside a CUDA graph count, host overhead does not; weights rotated over > 4x L2) of
bf16 ``torch.mm``, of ``fp8_block_linear`` with its default (tuned) config and under a grid of
split-K configs, each checked bit for bit against quantize + ``fp8_block_gemm``. Prints, writes JSON.

History (H100, 2026-11-25): a variant that quantized x inside the split-K main loop (one launch per
linear) ran here against quantize + GEMM and lost everywhere: M=1 4096x4096 17.4 vs 13.7 us,
14336x4096 43.5 vs 27.7 us, 4096x14336 43.1 vs 29.4 us (the x loads feed elementwise code, not the
dot, so Triton's pipeliner does not prefetch them: each K block waits on one load latency).
"""

# ruff: noqa: B023 -- each closure is timed at once, inside its own loop iteration

from __future__ import annotations

import argparse
import itertools
import json

import torch
import triton
import triton.testing

from fp8inductor.kernels.act_quant import act_quant_1x128
from fp8inductor.kernels.block_gemm import GemmConfig, _default_config, fp8_block_gemm, fp8_block_linear
from fp8inductor.kernels.weight_quant import weight_quant_128x128

SHAPES = [(4096, 4096), (1024, 4096), (6144, 4096), (14336, 4096), (4096, 14336), (28672, 4096),
          (2112, 7168), (7168, 16384), (24576, 1536)]  # fmt: skip
MS = (1, 4, 16)
GRID = [GemmConfig("splitk", 16, bn, 4, st, split_k=sk)
        for bn, sk, st in itertools.product((64, 128), (2, 4, 8, 16), (4, 6))]  # fmt: skip
L2 = 50 * 2**20


def bench(fn) -> float:
    return triton.testing.do_bench_cudagraph(fn, rep=50) * 1e3  # us


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dev = torch.device("cuda")
    rows = []
    for n, k in SHAPES:
        copies = max(2, -(-4 * L2 // (n * k)))
        ws_list = [weight_quant_128x128(torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02) for _ in range(copies)]
        wb_list = [torch.randn(k, n, device=dev, dtype=torch.bfloat16) for _ in range(max(2, copies // 2))]
        for m in MS:
            x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            cfg = _default_config(dev, m, n, k, True, cublas_ok=False)
            it = itertools.cycle(range(copies))
            itb = itertools.cycle(range(len(wb_list)))

            def rot(f):
                return lambda: f(ws_list[next(it)])

            res = {"m": m, "n": n, "k": k, "default": str(cfg)}
            res["bf16"] = bench(lambda: torch.mm(x, wb_list[next(itb)]))

            def unfused(w, cfg=cfg):
                xq, xs = act_quant_1x128(x)
                return fp8_block_gemm(xq, xs, w[0], w[1], None, torch.bfloat16, config=cfg)

            res["linear"] = bench(rot(lambda w: fp8_block_linear(x, w[0], w[1])))
            best = (float("inf"), None)
            for g in GRID:
                y = fp8_block_linear(x, *ws_list[0], config=g)
                if not torch.equal(y, unfused(ws_list[0], g)):
                    raise SystemExit(f"linear != quant + gemm at M={m} N={n} K={k} {g}")
                t = bench(rot(lambda w, g=g: fp8_block_linear(x, w[0], w[1], config=g)))
                if t < best[0]:
                    best = (t, g)
            res["grid_best_us"], res["grid_best"] = best[0], str(best[1])
            gbytes = n * k + m * k * 2 + m * n * 2
            res["linear_TBps"] = gbytes / res["linear"] / 1e6
            rows.append(res)
            print(f"M={m:2d} N={n:5d} K={k:5d} bf16 {res['bf16']:6.1f} linear {res['linear']:6.1f} "
                  f"({res['linear_TBps']:.2f} TB/s; vs bf16 {res['bf16'] / res['linear']:.2f}x) "
                  f"grid best {best[0]:6.1f} {best[1]}", flush=True)  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "triton": triton.__version__, "rows": rows}, f, indent=1)  # fmt: skip


if __name__ == "__main__":
    main()
