"""Activation-quant tile configurations, timed on the GPU (lab tool behind ``ACT_QUANT_CONFIG``).

    python benchmarks/lab/act_quant_lab.py [--shape 16384x7168]

For each (BLOCK_M, GROUPS, num_warps): effective TB/s (bf16 read + fp8 write + fp32 scales) at the
shape, median of ``triton.testing.do_bench``; every config's output must equal the default's
byte for byte (the default is checked against the reference by tests/test_kernels.py).
Also times a device-to-device copy of the input as the ceiling.
"""

from __future__ import annotations

import argparse
import itertools

import torch
import triton

from fp8inductor.kernels.act_quant import ACT_QUANT_CONFIG, act_quant_1x128


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="16384x7168")
    args = ap.parse_args()
    m, k = (int(v) for v in args.shape.split("x"))
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    nbytes = m * k * 2 + m * k + m * triton.cdiv(k, 128) * 4
    q0, s0 = act_quant_1x128(x)
    y = torch.empty_like(x)
    copy_ms = triton.testing.do_bench(lambda: y.copy_(x), warmup=25, rep=100)
    print(f"{m}x{k}: copy {2 * m * k * 2 / copy_ms / 1e9:.2f} TB/s; default config {ACT_QUANT_CONFIG}", flush=True)
    results = []
    for bm, groups, warps in itertools.product((1, 2, 4, 8, 16, 32), (1, 2, 4, 8), (2, 4, 8)):
        if bm * groups * 128 > 16384 or bm * groups * 128 < 32 * warps * 4:
            continue
        cfg = (bm, groups, warps)
        q, s = act_quant_1x128(x, config=cfg)
        assert torch.equal(q.view(torch.uint8), q0.view(torch.uint8)) and torch.equal(s, s0), cfg
        ms = triton.testing.do_bench(lambda: act_quant_1x128(x, config=cfg), warmup=10, rep=50)
        results.append((nbytes / ms / 1e9, cfg, ms))
    for tbs, cfg, ms in sorted(results, reverse=True)[:12]:
        print(f"  {cfg}: {tbs:.2f} TB/s ({ms * 1e3:.1f} us)")
    dflt = next(r for r in results if r[1] == ACT_QUANT_CONFIG)
    print(f"  default {ACT_QUANT_CONFIG}: {dflt[0]:.2f} TB/s")


if __name__ == "__main__":
    main()
