"""Norm-quant lab: the one-kernel (residual add +) RMSNorm + quantization against Inductor's own.

    PYTHONPATH=. python benchmarks/lab/norm_quant_lab.py [--out norm_quant_lab.json]

Per shape [M, K] (Llama-3-8B: K = 4096; prefill 1 x 2048 and 8 x 512, decode 1 and 32 rows), with a
residual: ``h = x + r``, ``n = LlamaRMSNorm(h)``, then

* ``fused``: ``rms_norm_quant`` (kernels/norm_quant.py), for each num_warps of the sweep;
* ``inductor_quant``: the same under ``torch.compile(backend="fp8block", fuse_norms=False)``, the
  quantization written as Inductor IR (two kernels: Inductor cannot put the row statistic and the
  group amax in one);
* ``inductor_bf16``: plain ``torch.compile`` of the add + norm returning (h, n): what bf16 pays.

Times are ``triton.testing.do_bench`` medians (fresh inputs each shape); effective TB/s counts x, r,
the weight read once, h written, and q + s written (bf16: n written).
"""

from __future__ import annotations

import argparse
import json

import torch
import triton
from transformers.models.llama.modeling_llama import LlamaRMSNorm

import fp8inductor
from fp8inductor.kernels.norm_quant import rms_norm_quant

SHAPES = [(2048, 4096), (4096, 4096), (32, 4096), (1, 4096), (2048, 7168)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = []
    for m, k in SHAPES:
        torch.manual_seed(0)
        x = torch.randn(1, m, k, device="cuda", dtype=torch.bfloat16)
        r = torch.randn(1, m, k, device="cuda", dtype=torch.bfloat16)
        norm = LlamaRMSNorm(k, eps=1e-5).to("cuda", torch.bfloat16)

        def unfused(x, r):
            h = x + r
            q, s = torch.ops.fp8inductor.quantize_activation(norm(h), 128, "float")
            return h, q, s

        def bf16(x, r):
            h = x + r
            return h, norm(h)

        row = {"m": m, "k": k}
        moved = 2 * m * k * 2 + k * 2 + m * k * 2  # x, r, w read; h written
        quant_out = m * k + m * (k // 128) * 4
        with torch.inference_mode():
            for warps in (2, 4, 8, 16):
                t = triton.testing.do_bench(lambda: rms_norm_quant(x, r, norm.weight, 1e-5, num_warps=warps))
                row[f"fused_w{warps}_us"] = t * 1e3
            # numerics vs the reference on the CPU
            h, q, s = rms_norm_quant(x, r, norm.weight, 1e-5)
            _, rq, rs = fp8inductor.reference.rms_norm_quant_ref(x.cpu(), r.cpu(), norm.weight.cpu(), 1e-5)
            row["codes_differing"] = int((q.cpu().view(torch.uint8) != rq.view(torch.uint8)).sum())
            row["scales_differing"] = int((s.cpu() != rs).sum())
            print(json.dumps(row), flush=True)  # the kernel's own numbers survive a failing compile below
            try:
                c_q = torch.compile(unfused, backend="fp8block", options={"fuse_norms": False})
                c_b = torch.compile(bf16)
                c_q(x, r), c_b(x, r)
                row["inductor_quant_us"] = triton.testing.do_bench(lambda: c_q(x, r)) * 1e3
                row["inductor_bf16_us"] = triton.testing.do_bench(lambda: c_b(x, r)) * 1e3
            except Exception as exc:  # e.g. fp8inductor not installed: no fp8block entry point
                row["compile_error"] = f"{type(exc).__name__}: {exc}"[:300]
        best = min(v for key, v in row.items() if key.startswith("fused_w"))
        row["fused_best_us"] = best
        row["fused_tb_s"] = (moved + quant_out) / best / 1e6
        if "compile_error" not in row:
            row["inductor_quant_tb_s"] = (moved + quant_out) / row["inductor_quant_us"] / 1e6
            row["inductor_bf16_tb_s"] = (moved + m * k * 2) / row["inductor_bf16_us"] / 1e6
        rows.append(row)
        print(json.dumps(row), flush=True)
        torch._dynamo.reset()
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
