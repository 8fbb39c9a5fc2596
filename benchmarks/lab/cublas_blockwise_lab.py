"""cuBLAS blockwise lab: where is ``torch._scaled_mm`` with DeepSeek-V3 block scales right?

    PYTHONPATH=. python benchmarks/lab/cublas_blockwise_lab.py [--out results.json]

cuBLAS (>= 12.9, sm_90) runs the 1x128 (activation) x 128x128 (weight) scaled FP8 GEMM that this
library's Triton kernels run. ``torch._scaled_mm`` reaches it with the call of
``shared/notes/measured-anchors.md``::

    torch._scaled_mm(xq, wq.t(), xs_colmajor, ws.t(), out_dtype=torch.bfloat16)

but a call that passes torch's checks can still be wrong (relative error 0.47 at M=16, N=2112,
K=384, measured 2026-11-25) or fail inside cuBLAS (CUBLAS_STATUS_NOT_SUPPORTED at M=5). Before the
GEMM dispatch may choose cuBLAS, this lab sweeps awkward shapes, output dtypes and a bias, and
records for each the relative error against the float32 reference of the same quantized inputs,
or the error raised. The guard in ``fp8inductor/kernels/cublas.py`` is drawn from its results.
"""

from __future__ import annotations

import argparse
import json
import platform

import torch

from fp8inductor.reference import dequantize_activation_ref, dequantize_weight_ref

MS = [1, 2, 4, 5, 8, 12, 16, 17, 24, 32, 33, 64, 100, 127, 128, 129, 256, 1000, 2047, 2048]
NKS = [
    (128, 512), (256, 512), (1000, 512), (2112, 512), (4096, 4096), (6144, 4096),  # K/128 % 4 == 0
    (2112, 384), (4096, 384), (256, 640), (4096, 1152), (4096, 1536), (2112, 7168),  # 3, 3, 5, 9, 12, 56
    (4096, 4000), (1024, 4112), (4096, 4032), (4096, 4064),  # K % 128 != 0: ceil 32, 33, 32, 32
]  # fmt: skip
OUT_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def one(m: int, n: int, k: int, g: torch.Generator) -> dict:
    from fp8inductor import quantize_activation, quantize_weight

    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=g)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16, generator=g) * k**-0.5
    bias = torch.randn(n, device="cuda", dtype=torch.float32, generator=g)
    xq, xs = quantize_activation(x)
    wq, ws = quantize_weight(w)
    ref = (
        dequantize_activation_ref(xq, xs, dtype=torch.float32) @ dequantize_weight_ref(wq, ws, dtype=torch.float32).t()
    )
    xs_cm = xs.t().contiguous().t()  # [M, K/128], strides (1, M)
    out: dict = {"m": m, "n": n, "k": k}
    for name, dt in OUT_DTYPES.items():
        for with_bias in (False, True):
            key = f"{name}{'+bias' if with_bias else ''}"
            b = bias.to(dt) if with_bias else None
            r = ref + b.float() if with_bias else ref
            try:
                y = torch._scaled_mm(xq, wq.t(), xs_cm, ws.t(), bias=b, out_dtype=dt)
                torch.cuda.synchronize()
                err = ((y.float() - r).norm() / r.norm()).item()
                out[key] = err if err == err else "nan"
            except Exception as e:  # noqa: BLE001 -- the lab records every failure
                out[key] = f"{type(e).__name__}: {str(e).splitlines()[0][:100]}"
                torch.cuda.synchronize()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="write the raw results as JSON")
    args = p.parse_args()
    g = torch.Generator(device="cuda").manual_seed(0)
    rows = [one(m, n, k, g) for n, k in NKS for m in MS]
    keys = [f"{n}{b}" for n in OUT_DTYPES for b in ("", "+bias")]
    bad = 0
    for r in rows:
        flags = []
        for key in keys:
            v = r[key]
            if isinstance(v, float) and v < 1e-2:
                continue
            flags.append(f"{key}={v if isinstance(v, str) else f'{v:.3g}'}")
        if flags:
            bad += 1
            print(f"M={r['m']:<5} N={r['n']:<5} K={r['k']:<5} K/128={-(-r['k'] // 128):<3} " + "; ".join(flags))
    print(f"{bad} of {len(rows)} shapes had at least one wrong or failed variant")
    meta = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
            "cuda": torch.version.cuda, "cublaslt": getattr(torch.backends.cuda, "cublaslt_version", lambda: None)()
            if callable(getattr(torch.backends.cuda, "cublaslt_version", None)) else None,
            "python": platform.python_version(), "has_scaled_mm_v2": hasattr(torch, "_scaled_mm_v2")}  # fmt: skip
    print(json.dumps(meta))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
