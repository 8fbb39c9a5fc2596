"""Standalone 1x128 activation quantization bandwidth (the kernel issue's >= 2.5 TB/s target).

    PYTHONPATH=. python benchmarks/bench_act_quant.py

Effective bandwidth = (bytes of x read + fp8 codes written + fp32 scales written) / median time,
next to a device-to-device copy of x (read + write) as the ceiling. Shapes are large enough that
host time does not matter.
"""

from __future__ import annotations

import torch
import triton

from fp8inductor.kernels.act_quant import act_quant_1x128
from fp8inductor.reference import quantize_activation_ref
from fp8inductor.testing import fp8_canonical_bits

SHAPES = [(16384, 7168), (4096, 4096), (8192, 14336), (2048, 7168)]


def main() -> None:
    print(f"{torch.cuda.get_device_name(0)}; torch {torch.__version__}, triton {triton.__version__}")
    print(f"{'M x K':>14} {'act_quant us':>13} {'TB/s':>6} {'copy TB/s':>10} {'bit-exact':>9}")
    for m, k in SHAPES:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        q, s = act_quant_1x128(x)
        rq, rs = quantize_activation_ref(x[:256].cpu())
        # bit-exact up to the sign of zero codes (the contract); scales bit-exact
        codes_equal = torch.equal(fp8_canonical_bits(q[:256].cpu()), fp8_canonical_bits(rq))
        exact = codes_equal and torch.equal(s[:256].cpu(), rs)
        t = triton.testing.do_bench(lambda: act_quant_1x128(x), warmup=25, rep=100, return_mode="median")
        y = torch.empty_like(x)
        tc = triton.testing.do_bench(lambda: y.copy_(x), warmup=25, rep=100, return_mode="median")
        moved = m * k * 2 + m * k + m * (k // 128) * 4
        print(f"{m:>6} x {k:<6} {t * 1e3:13.1f} {moved / t / 1e9:6.2f} {2 * m * k * 2 / tc / 1e9:10.2f} {exact!s:>9}")


if __name__ == "__main__":
    main()
