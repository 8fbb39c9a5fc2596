"""L2 prefetch lab: does fetching o_proj's FP8 weights into L2 while attention runs speed up a decode step?

    PYTHONPATH=. python benchmarks/lab/l2_prefetch_lab.py [--layers 8] [--ms 1,8] [--out results.json]

Question. In a batch-1 decode step the attention of one layer (SDPA over a 513-position static cache
plus RoPE and the cache update) takes ~18 µs on the H100 (``bench_model.py --profile-decode``,
32 layers, 2026-12-06: 569 µs a step) and reads about 2 MB: DRAM is nearly idle. o_proj, right after
it, streams 16.8 MB of FP8 weights from DRAM in ~10 µs (1.7 TB/s, most of it fixed cost). If a
kernel launched right after the q/k/v GEMM issues L2 prefetches for o_proj's weights, the DRAM work
moves under the attention and o_proj reads L2. Does it, and does the prefetching kernel itself
return at once (prefetches are fire-and-forget) or wait for its lines?

The chain is pdl_lab.py's decoder layer with a real attention in place of its pointwise stand-in:
norm, q/k/v GEMM (6144 x 4096), [prefetch], RoPE-like pointwise on q/k, cache update, SDPA (GQA 32/8
heads, 513 positions), o_proj (4096 x 4096) + residual, norm, gate/up (28672 x 4096), SiLU * up,
down (4096 x 14336) + residual. Every linear is ``fp8_block_linear`` (the shipped configs, PDL as
shipped). ``--layers`` layers with their own weights and caches (nothing stays in L2 between steps),
captured once per variant as a CUDA graph, timed by replay (``triton.testing.do_bench``, median).

Variants (the prefetch kernel runs after the q/k/v linear; it never changes a result: checked bit
for bit against "off"):

* off: no prefetch;
* line: ``prefetch.global.L2`` of every 128-byte line of o_proj's codes and scales;
* line evict_last: the same with ``::evict_last`` (lines the attention's traffic should not evict);
* bulk: ``cp.async.bulk.prefetch.L2.global`` (the TMA unit), one 16 KB chunk per thread;
* bulk + gate/up head: bulk, plus the first ``--gate-up-mb`` MB of the gate/up weight rows;
* prefetch alone: the prefetch kernel by itself (its own duration: does it wait for its lines?).

Answer (H100 80GB HBM3, torch 2.11, triton 3.6, 2026-12-06 18:53 UTC, git 28d11ba + this lab; raw
data ``docs/l2_prefetch_lab.json``): no. Every variant made the step slower: at M = 1 (off 969 µs)
line 1062 (+9.6%), line evict_last 1078 (+11%), bulk 1104 (+14%), bulk + 16 MB of gate/up 1174
(+21%); at M = 8 (off 1152 µs) +2.7%, +5.7%, +7.7%, +14%. The prefetch is not fire-and-forget: the kernel ends when its lines have arrived (bulk:
10.3 µs for 16.8 MB, 1.64 TB/s; line: 5.0 µs), so in one stream it runs before the attention instead
of under it, and o_proj gained less than the prefetch cost. Outputs were bit-equal throughout. A
variant of the op that launched a bulk prefetch after the q/k/v GEMM (planned by the pass for each
attention) measured the same in the model: 32 Llama-3-8B layers, batch-1 decode, 4965 µs a step
against 4687 without it (bench_model.py, same machine and run). Overlap would need the prefetch on
another stream, beside the attention; not tried.
"""

# ruff: noqa: B023 -- each closure is captured and timed at once, inside its own loop iteration

from __future__ import annotations

import argparse
import datetime
import json

import torch
import triton
import triton.language as tl
import triton.testing

from fp8inductor.kernels.block_gemm import fp8_block_linear
from fp8inductor.kernels.weight_quant import weight_quant_128x128

HIDDEN, INTER, QKV, HEADS, KV_HEADS, HEAD_DIM = 4096, 14336, 6144, 32, 8, 128
CACHE, POS = 1024, 512  # static cache length, position written (attention over 0..POS)
LINE = 128  # bytes per prefetch.global.L2
CHUNK = 16384  # bytes per cp.async.bulk.prefetch


@triton.jit
def _prefetch_lines_kernel(base_ptr, nbytes, LINES_PER_PROG: tl.constexpr, EVICT_LAST: tl.constexpr):
    """prefetch.global.L2 of LINES_PER_PROG 128-byte lines per program, from byte base + pid * that."""
    offs = (tl.program_id(0) * LINES_PER_PROG + tl.arange(0, LINES_PER_PROG)).to(tl.int64) * 128
    ptrs = base_ptr + tl.where(offs < nbytes, offs, 0)
    if EVICT_LAST:
        tl.inline_asm_elementwise("prefetch.global.L2::evict_last [$1]; mov.u32 $0, 0;", "=r,l", [ptrs],
                                  dtype=tl.int32, is_pure=False, pack=1)  # fmt: skip
    else:
        tl.inline_asm_elementwise("prefetch.global.L2 [$1]; mov.u32 $0, 0;", "=r,l", [ptrs],
                                  dtype=tl.int32, is_pure=False, pack=1)  # fmt: skip


@triton.jit
def _prefetch_bulk_kernel(base_ptr, nchunks, CHUNKS_PER_PROG: tl.constexpr):
    """cp.async.bulk.prefetch.L2.global of CHUNKS_PER_PROG 16 KB chunks per program (one per thread)."""
    idx = tl.program_id(0) * CHUNKS_PER_PROG + tl.arange(0, CHUNKS_PER_PROG)
    ptrs = base_ptr + tl.where(idx < nchunks, idx, 0).to(tl.int64) * 16384
    tl.inline_asm_elementwise("cp.async.bulk.prefetch.L2.global [$1], 16384; mov.u32 $0, 0;", "=r,l", [ptrs],
                              dtype=tl.int32, is_pure=False, pack=1)  # fmt: skip


def prefetch(t: torch.Tensor, how: str, nbytes: int | None = None) -> None:
    """Prefetch the first ``nbytes`` (default all) of contiguous tensor ``t`` into L2."""
    nbytes = t.numel() * t.element_size() if nbytes is None else nbytes
    base = t.view(torch.uint8).view(-1)
    if how == "bulk":
        nchunks = triton.cdiv(nbytes, CHUNK)  # may read up to 16 KB past the end: keep inside the tensor
        nchunks = min(nchunks, (t.numel() * t.element_size()) // CHUNK)
        if nchunks:
            _prefetch_bulk_kernel[(triton.cdiv(nchunks, 128),)](base, nchunks, CHUNKS_PER_PROG=128, num_warps=4)
        return
    nlines = triton.cdiv(nbytes, LINE)
    _prefetch_lines_kernel[(triton.cdiv(nlines, 1024),)](
        base, nbytes, LINES_PER_PROG=1024, EVICT_LAST=how == "line_evict_last", num_warps=4
    )


def make_layers(n_layers: int, batch: int, dev: torch.device) -> list[dict]:
    def w(n, k):
        return weight_quant_128x128(torch.randn(n, k, device=dev, dtype=torch.bfloat16) * k**-0.5)

    def cache():
        return torch.randn(batch, KV_HEADS, CACHE, HEAD_DIM, device=dev, dtype=torch.bfloat16)

    def layer():
        return {
            "qkv": w(QKV, HIDDEN), "o": w(HIDDEN, HIDDEN), "gate_up": w(2 * INTER, HIDDEN), "down": w(HIDDEN, INTER),
            "norm": torch.rand(HIDDEN, device=dev, dtype=torch.bfloat16) + 0.5, "k": cache(), "v": cache(),
        }  # fmt: skip

    return [layer() for _ in range(n_layers)]


def step(h: torch.Tensor, layers: list[dict], how: str, gate_up_mb: float) -> torch.Tensor:
    """h [B, 4096] bf16 -> [B, 4096] bf16 through every layer."""
    b = h.shape[0]
    rot = torch.linspace(0.5, 1.5, HEAD_DIM, device=h.device, dtype=h.dtype)
    for p in layers:
        qkv = fp8_block_linear(h * p["norm"], *p["qkv"])  # [B, 6144]
        if how != "off":
            prefetch(p["o"][0], how)
            prefetch(p["o"][1], "line")
            if gate_up_mb > 0:
                prefetch(p["gate_up"][0], how, int(gate_up_mb * 2**20))
        q = (qkv[:, :HIDDEN].view(b, HEADS, 1, HEAD_DIM) * rot).contiguous()  # RoPE stand-in
        k_new = qkv[:, HIDDEN : HIDDEN + 1024].view(b, KV_HEADS, HEAD_DIM) * rot
        p["k"][:, :, POS] = k_new
        p["v"][:, :, POS] = qkv[:, HIDDEN + 1024 :].view(b, KV_HEADS, HEAD_DIM)
        attn = torch.nn.functional.scaled_dot_product_attention(
            q, p["k"][:, :, : POS + 1], p["v"][:, :, : POS + 1], enable_gqa=True
        )  # [B, 32, 1, 128]
        h = h + fp8_block_linear(attn.reshape(b, HIDDEN), *p["o"])
        gu = fp8_block_linear(h * p["norm"], *p["gate_up"])  # [B, 28672]
        act = torch.nn.functional.silu(gu[:, :INTER]) * gu[:, INTER:]
        h = h + fp8_block_linear(act, *p["down"])
    return h


def capture(fn) -> torch.cuda.CUDAGraph:
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
        with torch.cuda.graph(graph, stream=stream):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph.replay()
    torch.cuda.synchronize()
    return graph


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--ms", default="1,8")
    ap.add_argument("--gate-up-mb", type=float, default=16.0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dev = torch.device("cuda")
    torch.manual_seed(0)
    rows = []
    print(f"{torch.cuda.get_device_name(dev)}; torch {torch.__version__}, triton {triton.__version__}; "
          f"{args.layers} layers, us per step (one CUDA graph replay)")  # fmt: skip
    variants = {"off": ("off", 0.0), "line": ("line", 0.0), "line evict_last": ("line_evict_last", 0.0),
                "bulk": ("bulk", 0.0), f"bulk + gate/up {args.gate_up_mb:g} MB": ("bulk", args.gate_up_mb)}  # fmt: skip
    for m in (int(v) for v in args.ms.split(",")):
        layers = make_layers(args.layers, m, dev)
        x = torch.randn(m, HIDDEN, device=dev, dtype=torch.bfloat16)
        ref = None
        for name, (how, mb) in variants.items():
            out = torch.empty_like(x)

            def run(how=how, mb=mb, out=out):
                out.copy_(step(x, layers, how, mb))

            graph = capture(run)
            us = triton.testing.do_bench(graph.replay, warmup=50, rep=300, return_mode="median") * 1e3
            graph.replay()
            torch.cuda.synchronize()
            same = True if ref is None else torch.equal(out.view(torch.int16), ref.view(torch.int16))
            ref = out.clone() if ref is None else ref
            off_us = us if name == "off" else next(r["us"] for r in rows if r["m"] == m and r["variant"] == "off")
            rows.append({"m": m, "variant": name, "us": us, "bit_equal_to_off": same})
            print(f"M={m:3d} {name:28s} {us:9.1f} us  {off_us / us:5.3f}x of off  bit-equal: {same}")
            del graph
        for how in ("line", "line_evict_last", "bulk"):  # the prefetch kernels alone, o_proj's codes
            o = layers[0]["o"][0]
            graph = capture(lambda how=how: [prefetch(p["o"][0], how) for p in layers])
            us = triton.testing.do_bench(graph.replay, warmup=50, rep=300, return_mode="median") * 1e3
            nbytes = o.numel() * args.layers
            rows.append({"m": m, "variant": f"prefetch alone {how}", "us": us / args.layers})
            print(f"M={m:3d} prefetch alone {how:16s} {us / args.layers:7.2f} us per 16.8 MB kernel "
                  f"({nbytes / us / 1e6:.2f} TB/s if it waited for its lines)")  # fmt: skip
            del graph
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(dev), "torch": torch.__version__,
                       "triton": triton.__version__, "date": datetime.datetime.now(datetime.UTC).isoformat(),
                       "layers": args.layers, "rows": rows}, f, indent=1)  # fmt: skip


if __name__ == "__main__":
    main()
