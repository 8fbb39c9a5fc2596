"""PDL lab: a decode-shaped chain of FP8 linears in one CUDA graph, with and without programmatic
dependent launch (``fp8inductor/kernels/pdl.py``).

    PYTHONPATH=. python benchmarks/lab/pdl_lab.py [--layers 8] [--out results.json]

The chain stands in for a Llama-3-8B decoder layer after sibling fusion: a pointwise kernel (the
norm), the q/k/v GEMM (6144 x 4096), a pointwise kernel (attention), o_proj (4096 x 4096) + residual,
a pointwise kernel (the norm), gate/up (28672 x 4096), SiLU * up, down (4096 x 14336) + residual;
every linear is ``fp8_block_linear`` (activation quant + GEMM). ``--layers`` layers with their own
weights (so nothing stays in L2 between steps), captured once per variant as a CUDA graph and timed
by replay (``triton.testing.do_bench``, median). Variants: PDL off; PDL without the L2 weight
prefetch; PDL with a prefetch of 1, 2 and 4 K blocks (the first run of 2026-11-25 tried num_stages,
the configs' pipeline depth; table in kernels/pdl.py). PDL is on only up to ``pdl.PDL_MAX_M`` rows:
raise it (``--max-m``) to measure above. Each variant's output is checked bit
for bit against PDL off (PDL changes when kernels start, never what they compute).
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import triton
import triton.testing

from fp8inductor.kernels import pdl
from fp8inductor.kernels.block_gemm import fp8_block_linear
from fp8inductor.kernels.weight_quant import weight_quant_128x128

HIDDEN, INTER, QKV = 4096, 14336, 6144
VARIANTS = {  # name -> (FP8INDUCTOR_PDL, PDL_PREFETCH_K_BLOCKS)
    "off": ("0", 1),
    "pdl, no prefetch": ("1", 0),
    "pdl, prefetch 1": ("1", 1),
    "pdl, prefetch 2": ("1", 2),
    "pdl, prefetch 4": ("1", 4),
}


def make_layers(n_layers: int, dev: torch.device) -> list[dict]:
    def w(n, k):
        return weight_quant_128x128(torch.randn(n, k, device=dev, dtype=torch.bfloat16) * k**-0.5)

    return [
        {
            "qkv": w(QKV, HIDDEN),
            "o": w(HIDDEN, HIDDEN),
            "gate_up": w(2 * INTER, HIDDEN),
            "down": w(HIDDEN, INTER),
            "norm": torch.rand(HIDDEN, device=dev, dtype=torch.bfloat16) + 0.5,
        }
        for _ in range(n_layers)
    ]


def step(h: torch.Tensor, layers: list[dict]) -> torch.Tensor:
    """h [M, 4096] bf16 -> [M, 4096] bf16 through every layer (pointwise stand-ins between the linears)."""
    for p in layers:
        qkv = fp8_block_linear(h * p["norm"], *p["qkv"])  # [M, 6144]
        attn = qkv[:, :HIDDEN] * 0.5  # a pointwise kernel where attention would be
        h = h + fp8_block_linear(attn, *p["o"])
        gu = fp8_block_linear(h * p["norm"], *p["gate_up"])  # [M, 28672]
        act = torch.nn.functional.silu(gu[:, :INTER]) * gu[:, INTER:]
        h = h + fp8_block_linear(act, *p["down"])
    return h


def run_variant(name: str, layers: list[dict], x: torch.Tensor) -> tuple[float, torch.Tensor]:
    env, prefetch = VARIANTS[name]
    os.environ["FP8INDUCTOR_PDL"] = env
    pdl.PDL_PREFETCH_K_BLOCKS = prefetch
    out = step(x, layers)  # compile + warm up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step(x, layers)
        with torch.cuda.graph(graph, stream=stream):
            out = step(x, layers)
    torch.cuda.current_stream().wait_stream(stream)
    graph.replay()
    torch.cuda.synchronize()
    ms = triton.testing.do_bench(graph.replay, warmup=50, rep=300, return_mode="median")
    return ms * 1e3, out.clone()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--ms", default="1,8,32")
    ap.add_argument("--out", default=None)
    ap.add_argument("--max-m", type=int, default=None, help="override pdl.PDL_MAX_M")
    args = ap.parse_args()
    if args.max_m is not None:
        pdl.PDL_MAX_M = args.max_m
    dev = torch.device("cuda")
    torch.manual_seed(0)
    layers = make_layers(args.layers, dev)
    rows = []
    print(f"{torch.cuda.get_device_name(dev)}; torch {torch.__version__}, triton {triton.__version__}; "
          f"{args.layers} layers, us per step (one CUDA graph replay)")  # fmt: skip
    for m in (int(v) for v in args.ms.split(",")):
        x = torch.randn(m, HIDDEN, device=dev, dtype=torch.bfloat16)
        ref = None
        for name in VARIANTS:
            us, out = run_variant(name, layers, x)
            same = True if ref is None else torch.equal(out.view(torch.int16), ref.view(torch.int16))
            ref = out if ref is None else ref
            rows.append({"m": m, "variant": name, "us": us, "bit_equal_to_off": same})
            off_us = next(r["us"] for r in rows if r["m"] == m and r["variant"] == "off")
            print(f"M={m:3d} {name:26s} {us:9.1f} us  {off_us / us:5.3f}x of off  bit-equal: {same}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(dev), "torch": torch.__version__,
                       "triton": triton.__version__, "layers": args.layers, "rows": rows}, f, indent=1)  # fmt: skip


if __name__ == "__main__":
    main()
