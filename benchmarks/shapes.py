"""The GEMM shape suite of ``bench_gemm.py``, as data.

A shape is ``y[M, N] = x[M, K] @ W[N, K].T``: ``M`` tokens, ``N`` output features, ``K`` input features.
The (N, K) pairs are the linear layers of two model families that ship block-FP8 checkpoints:

* Llama-3-8B-like (hidden 4096, intermediate 14336, 32 query / 8 KV heads of 128): fused QKV,
  attention output, fused gate+up, down projection;
* DeepSeek-V3 (hidden 7168, 128 heads, q_lora_rank 1536, kv_lora_rank 512 + rope 64): attention
  output, q_b projection, fused q_a + kv_a projection (N = 2112 is not a multiple of 128, so the last
  weight block row is partial).

``M`` sweeps decode (1, 16, 64), small batches (128, 512) and prefill (2048, 8192).
"""

from __future__ import annotations

import dataclasses

M_VALUES: tuple[int, ...] = (1, 16, 64, 128, 512, 2048, 8192)

NK_VALUES: tuple[tuple[int, int], ...] = (
    (6144, 4096),  # Llama-3-8B fused QKV: 4096 + 2 * 8 * 128
    (4096, 4096),  # Llama-3-8B attention output (o_proj)
    (28672, 4096),  # Llama-3-8B fused gate + up: 2 * 14336
    (4096, 14336),  # Llama-3-8B down_proj
    (7168, 16384),  # DeepSeek-V3 attention output: 128 heads * 128 (v_head_dim) -> 7168
    (24576, 1536),  # DeepSeek-V3 q_b_proj: q_lora_rank 1536 -> 128 heads * 192
    (2112, 7168),  # DeepSeek-V3 fused q_a + kv_a: 1536 + 512 + 64 (partial last 128-row block)
)

# --quick: one decode, one mid and one prefill M on three (N, K) pairs, one of them with a partial block.
QUICK_M_VALUES: tuple[int, ...] = (1, 128, 2048)
QUICK_NK_VALUES: tuple[tuple[int, int], ...] = ((4096, 4096), (28672, 4096), (2112, 7168))

# --dry-run (CPU, reference implementations): tiny shapes that keep the same features as the suite:
# M = 1 and M % 4 != 0 (cuBLAS blockwise limits), and an N that is not a multiple of 128.
DRY_RUN_M_VALUES: tuple[int, ...] = (1, 6, 16)
DRY_RUN_NK_VALUES: tuple[tuple[int, int], ...] = ((256, 256), (320, 512))


@dataclasses.dataclass(frozen=True)
class GemmShape:
    """One benchmarked problem: x [m, k] @ W[n, k].T -> y [m, n]."""

    m: int
    n: int
    k: int

    @property
    def nk(self) -> tuple[int, int]:
        return (self.n, self.k)

    @property
    def flops(self) -> int:
        return 2 * self.m * self.n * self.k  # one multiply and one add per (m, n, k)

    def __str__(self) -> str:
        return f"M={self.m} N={self.n} K={self.k}"


def suite(quick: bool = False, dry_run: bool = False) -> list[GemmShape]:
    """The shapes to run, grouped by (N, K) (the weights are allocated once per group), M ascending."""
    if dry_run:
        ms, nks = DRY_RUN_M_VALUES, DRY_RUN_NK_VALUES
    elif quick:
        ms, nks = QUICK_M_VALUES, QUICK_NK_VALUES
    else:
        ms, nks = M_VALUES, NK_VALUES
    return [GemmShape(m, n, k) for n, k in nks for m in ms]


if __name__ == "__main__":
    for label, shapes in (("full", suite()), ("quick", suite(quick=True)), ("dry-run", suite(dry_run=True))):
        print(f"{label}: {len(shapes)} shapes")
        for s in shapes:
            print(f"  {s}")
