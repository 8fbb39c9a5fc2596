"""Decode attention over a static cache with a mask, GQA (Llama-3-8B: 32 query heads, 8 KV heads,
D 128): which fused-kernel call is fastest, and which are correct? (H100 lab for ``fp8inductor.gqa_heads``.)

Variants, each timed alone in a CUDA graph (do_bench_cudagraph), against eager ``repeat_kv`` + SDPA:

* ``repeat_kv+cudnn``: transformers' form (the K/V copies + cuDNN's op), what Inductor runs today;
* ``cudnn_gqa``: cuDNN's op given the 8 KV heads as they are (no copy; cuDNN reads GQA natively?);
* ``fold+cudnn`` / ``fold+efficient``: query heads of a group folded into query rows ([B, 8, 4, D]);
* ``triton_gqa_decode``: ``fp8inductor.kernels.gqa_decode`` (split-KV, the KV heads as stored);
* ``flash_gqa_nomask``: flash attention with ``enable_gqa`` and no mask (a speed reference only).

Usage: python benchmarks/lab/gqa_attention_lab.py [--out gqa_attention_lab.json]
       python benchmarks/lab/gqa_attention_lab.py --compile-only   # no GPU: sm_90 compile + resources
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import triton

aten = torch.ops.aten
HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="gqa_attention_lab.json")
    p.add_argument("--cache", type=int, default=1024)
    p.add_argument("--pos", type=int, default=512)
    p.add_argument("--compile-only", action="store_true")
    args = p.parse_args(argv)
    if args.compile_only:
        return compile_only()
    dev = torch.device("cuda")
    h_q, h_kv, d, s = 32, 8, 128, args.cache
    rows = []
    meta = {"device": torch.cuda.get_device_name(dev), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cache": s, "pos": args.pos}  # fmt: skip
    print(meta, flush=True)
    for b in (1, 8, 32):
        rows.append(measure(b, h_q, h_kv, d, s, args.pos, dev))
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    return 0


def compile_only() -> int:
    """Compile the Triton decode kernels for sm_90 behind compile_check's fake driver; print resources."""
    sys.path.insert(0, str(HERE))
    import compile_check as cc  # benchmarks/lab
    from triton.runtime.jit import KernelInterface

    from fp8inductor.kernels.gqa_decode import gqa_decode_attention

    triton.runtime.driver.set_active(cc.FakeCudaDriver())
    KernelInterface.__getitem__ = cc._warmup_getitem
    q = torch.randn(1, 32, 1, 128, dtype=torch.bfloat16)
    k, v = (torch.randn(1, 8, 1024, 128, dtype=torch.bfloat16) for _ in range(2))
    gqa_decode_attention(q, k, v, torch.ones(1, 1, 1, 1024, dtype=torch.bool))
    for name, kern, dt in cc.COMPILED:
        print(name, f"{dt:.1f}s shared {kern.metadata.shared}", cc.resources(kern), flush=True)
    return 0


def measure(b: int, h_q: int, h_kv: int, d: int, s: int, pos: int, dev: torch.device) -> dict:
    """One batch size: every variant's time and error (or the error it raised)."""

    from fp8inductor.kernels.gqa_decode import gqa_decode_attention

    n_rep = h_q // h_kv
    g = torch.Generator(device=dev).manual_seed(b)
    q = torch.randn(b, 1, h_q, d, device=dev, generator=g, dtype=torch.bfloat16).transpose(1, 2)
    k, v = (torch.randn(b, h_kv, s, d, device=dev, generator=g, dtype=torch.bfloat16) for _ in range(2))
    keep = torch.zeros(b, 1, 1, s, dtype=torch.bool, device=dev)
    keep[..., : pos + 1] = True
    bias = torch.zeros(b, 1, 1, s, device=dev, dtype=torch.bfloat16).masked_fill(~keep, float("-inf"))

    def rep(x):
        return x[:, :, None].expand(b, h_kv, n_rep, s, d).reshape(b, h_q, s, d)

    ref = torch.nn.functional.scaled_dot_product_attention(
        q.float(), rep(k).float(), rep(v.float()), attn_mask=keep
    )  # fp32 math reference
    q_f = q.contiguous().view(b, h_kv, n_rep, d)
    bias_f = torch.cat([bias] * n_rep, 2)  # [B, 1, n_rep, S]
    variants = {
        "repeat_kv+cudnn": lambda: aten._scaled_dot_product_cudnn_attention(q, rep(k), rep(v), bias, False)[0],
        "cudnn_gqa": lambda: aten._scaled_dot_product_cudnn_attention(q, k, v, bias, False)[0],
        "fold+cudnn": lambda: aten._scaled_dot_product_cudnn_attention(q_f, k, v, bias_f, False)[0].view(
            b, h_q, 1, d),
        "repeat_kv+efficient": lambda: aten._scaled_dot_product_efficient_attention(
            q, rep(k), rep(v), bias.expand(b, h_q, 1, s), False)[0],
        "fold+efficient": lambda: aten._scaled_dot_product_efficient_attention(
            q_f, k, v, bias_f.expand(b, h_kv, n_rep, s), False)[0].reshape(b, h_q, 1, d),  # [B,S,H,D] strides: a copy
        "triton_gqa_decode": lambda: gqa_decode_attention(q, k, v, bias),
        "flash_gqa_nomask": lambda: torch.nn.functional.scaled_dot_product_attention(
            q, k[:, :, : pos + 1], v[:, :, : pos + 1], enable_gqa=True),
    }  # fmt: skip
    row = {"B": b}
    for name, fn in variants.items():
        try:
            out = fn()
            err = ((out.float() - ref).norm() / ref.norm()).item()
            us = triton.testing.do_bench_cudagraph(fn, rep=50) * 1e3
            row[name] = {"us": us, "rel_err": err}
            print(f"B={b} {name}: {us:.1f} us, rel err {err:.2e}", flush=True)
        except Exception as e:  # noqa: BLE001  (a lab: record what a backend refuses)
            row[name] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
            print(f"B={b} {name}: {type(e).__name__}: {str(e)[:200]}", flush=True)
    return row


if __name__ == "__main__":
    raise SystemExit(main())
