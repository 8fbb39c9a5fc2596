"""Lab: M % 4 != 0 on cuBLAS blockwise with padded rows, against the Triton kernels those M ran before.

    PYTHONUNBUFFERED=1 PYTHONPATH=. python3 benchmarks/lab/pad_rows_lab.py --out $OUT/pad_rows_lab.json   # H100

For each (M, N, K): ``fp8_block_linear`` (activation quant + GEMM, what the op runs) with
``FP8INDUCTOR_CUBLAS_PAD_ROWS`` on (cuBLAS on padded rows) and off (the Triton kernels, the choice
before), and at M rounded up to a multiple of 4 (cuBLAS unpadded: the ceiling). Each result is
checked against the reference of the same input; CUDA graphs (GPU time only: the op's host
time would hide a small GEMM), each replay runs the linear over enough weight copies to pass L2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from fp8inductor.kernels import cublas
from fp8inductor.kernels.block_gemm import fp8_block_linear
from fp8inductor.reference import block_fp8_linear_ref, quantize_weight_ref

SHAPES = [
    (m, n, k) for m in (2047, 8191, 510, 127) for n, k in ((6144, 4096), (4096, 14336), (28672, 4096), (2112, 7168))
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="pad_rows_lab.json")
    args = p.parse_args(argv)
    dev = torch.device("cuda")
    env = {"device": torch.cuda.get_device_name(dev), "torch": torch.__version__, "triton": triton.__version__,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}  # fmt: skip
    print(env, flush=True)
    rows = []
    for m, n, k in SHAPES:
        g = torch.Generator(device=dev).manual_seed(m + n + k)
        copies = max(1, min(6, int(4 * 50e6 // (n * k)) + 1))
        weights = [quantize_weight_ref(torch.randn(n, k, device=dev, generator=g) * 0.05) for _ in range(copies)]
        row = {"M": m, "N": n, "K": k}
        for label, rows_m, pad in (("padded", m, "1"), ("triton", m, "0"), ("aligned", cublas.padded_rows(m), "1")):
            os.environ["FP8INDUCTOR_CUBLAS_PAD_ROWS"] = pad
            x = torch.randn(rows_m, k, device=dev, generator=g, dtype=torch.bfloat16)
            y = fp8_block_linear(x, *weights[0])
            ref = block_fp8_linear_ref(x, *weights[0])
            rel = ((y.float() - ref.float()).norm() / ref.float().norm()).item()

            def call(x=x, weights=weights):  # every weight copy once: one CUDA graph replay streams them all
                return [fp8_block_linear(x, *w) for w in weights]

            ms = triton.testing.do_bench_cudagraph(call, rep=100) / copies
            row[label] = {"us": ms * 1e3, "tflops": 2.0 * rows_m * n * k / ms / 1e9, "rel": rel}
        os.environ.pop("FP8INDUCTOR_CUBLAS_PAD_ROWS", None)
        rows.append(row)
        print(
            f"M={m} N={n} K={k}: padded {row['padded']['us']:.1f} us ({row['padded']['tflops']:.0f} TFLOP/s), "
            f"triton {row['triton']['us']:.1f} us, aligned M={cublas.padded_rows(m)} {row['aligned']['us']:.1f} us; "
            f"padded/triton speed {row['triton']['us'] / row['padded']['us']:.2f}x; "
            f"rel {row['padded']['rel']:.2e} / {row['triton']['rel']:.2e}",
            flush=True,
        )
        Path(args.out).write_text(json.dumps({"env": env, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
