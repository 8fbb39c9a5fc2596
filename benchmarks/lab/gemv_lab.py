"""M = 1 lab: an FMA (no tensor core) split-K GEMV against the shipped split-K GEMM and bf16.

    PYTHONPATH=. python benchmarks/lab/gemv_lab.py

Question: at M = 1 the shipped split-K kernel (BLOCK_M = 16 mma.sync, 15 rows of padding) reads
4096x4096 fp8 weights at ~1.65 TB/s (10.2 us, tuned, H100), where bf16 cuBLAS reads at ~2.4 TB/s.
Does a GEMV with wide register loads (several 128-groups of K per iteration, fp32 FMAs, partial
sums reduced in-kernel by tile tickets like the shipped kernel) stream faster? Lab only: prints
the best config per shape and the error against the reference; nothing here ships.
"""

# ruff: noqa: B023 -- each closure is timed at once, inside its own loop iteration

from __future__ import annotations

import itertools

import torch
import triton
import triton.language as tl
import triton.testing

from fp8inductor.kernels.act_quant import act_quant_1x128
from fp8inductor.kernels.block_gemm import _default_config, _gemm, _split_plan, _store_tile
from fp8inductor.kernels.weight_quant import weight_quant_128x128
from fp8inductor.reference import block_gemm_ref


@triton.jit
def _gemv_kernel(
    xq_ptr, xs_ptr, wq_ptr, ws_ptr, part_ptr, ticket_ptr, y_ptr,  # x [1, K] contiguous; w [N, K] contiguous
    N, K, groups_per_split, nkb, stride_wsn,
    BLOCK_N: tl.constexpr, G: tl.constexpr,  # G 128-groups of K per iteration
):  # fmt: skip
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    num_splits = tl.num_programs(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rn = tl.where(offs_n < N, offs_n, 0).to(tl.int64)
    offs_g = tl.arange(0, G)
    offs_c = tl.arange(0, 128)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    kb_lo = split * groups_per_split
    kb_hi = tl.minimum(kb_lo + groups_per_split, nkb)
    for kb0 in range(kb_lo, kb_hi, G):
        kbs = kb0 + offs_g  # [G]
        valid_g = kbs < kb_hi
        offs_k = kbs[:, None] * 128 + offs_c[None, :]  # [G, 128]
        mask_k = valid_g[:, None] & (offs_k < K)
        a = tl.load(xq_ptr + offs_k, mask=mask_k, other=0.0).to(tl.float32)  # [G, 128]
        w = tl.load(wq_ptr + rn[:, None, None] * K + offs_k[None, :, :], mask=mask_k[None, :, :], other=0.0)
        d = tl.sum(w.to(tl.float32) * a[None, :, :], axis=2)  # [BLOCK_N, G]
        sa = tl.load(xs_ptr + kbs, mask=valid_g, other=0.0)  # [G]
        sb = tl.load(ws_ptr + (rn // 128)[:, None] * stride_wsn + kbs[None, :], mask=valid_g[None, :], other=0.0)
        acc += tl.sum(d * (sa[None, :] * sb), axis=1)
    acc2 = acc[None, :]  # [1, BLOCK_N]
    p_ptrs = part_ptr + offs_n[None, :]
    mask = offs_n[None, :] < N
    tl.store(p_ptrs + split * N, acc2, mask=mask)
    tl.debug_barrier()
    ticket = tl.atomic_add(ticket_ptr + pid_n, 1, sem="acq_rel", scope="gpu")
    if ticket == num_splits - 1:
        tot = tl.zeros((1, BLOCK_N), dtype=tl.float32)
        for s in range(num_splits):
            tot += tl.load(p_ptrs + s * N, mask=mask, other=0.0, cache_modifier=".cg")
        _store_tile(tot, y_ptr, y_ptr, 0, pid_n, 1, N, N, 1, False, 1, BLOCK_N)
        tl.atomic_xchg(ticket_ptr + pid_n, 0)


def gemv(xq, xs, wq, ws, block_n, g, splits, warps, tickets):
    n, k = wq.shape
    nkb = triton.cdiv(k, 128)
    per = triton.cdiv(nkb, splits)
    per = triton.cdiv(per, g) * g
    splits = triton.cdiv(nkb, per)
    part = torch.empty((splits, n), dtype=torch.float32, device=xq.device)
    y = torch.empty((1, n), dtype=torch.bfloat16, device=xq.device)
    _gemv_kernel[(triton.cdiv(n, block_n), splits)](
        xq, xs, wq, ws, part, tickets, y, n, k, per, nkb, ws.stride(0), BLOCK_N=block_n, G=g, num_warps=warps
    )
    return y


def main() -> None:
    dev = torch.device("cuda")
    l2 = 50 * 2**20
    grid = list(itertools.product((16, 32, 64), (1, 2, 4), (1, 2, 4, 8, 16), (4, 8)))
    for n, k in [(4096, 4096), (1024, 4096), (6144, 4096), (14336, 4096), (4096, 14336), (2112, 7168)]:
        copies = max(2, -(-4 * l2 // (n * k)))
        ws_list = [weight_quant_128x128(torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02) for _ in range(copies)]
        wb = [torch.randn(k, n, device=dev, dtype=torch.bfloat16) for _ in range(max(2, copies // 2))]
        x = torch.randn(1, k, device=dev, dtype=torch.bfloat16)
        xq, xs = act_quant_1x128(x)
        ref = block_gemm_ref(xq.cpu(), xs.cpu(), ws_list[0][0].cpu(), ws_list[0][1].cpu(), out_dtype=torch.float32)
        tickets = torch.zeros(1 << 16, dtype=torch.int32, device=dev)
        it = itertools.cycle(range(copies))
        itb = itertools.cycle(range(len(wb)))
        t_bf16 = triton.testing.do_bench_cudagraph(lambda: torch.mm(x, wb[next(itb)]), rep=50) * 1e3
        cfg = _default_config(dev, 1, n, k, True, cublas_ok=False)
        tk = torch.zeros(_split_plan(cfg, 1, n, k)[2], dtype=torch.int32, device=dev) if cfg.kind == "splitk" else None
        t_ship = triton.testing.do_bench_cudagraph(
            lambda: _gemm(xq, xs, *ws_list[next(it)], None, torch.bfloat16, cfg, tk), rep=50) * 1e3  # fmt: skip
        best = (float("inf"), None, None)
        for bn, g, sp, wp in grid:
            try:
                y = gemv(xq, xs, *ws_list[0], bn, g, sp, wp, tickets)
                err = ((y.float().cpu() - ref).norm() / ref.norm()).item()
                t = triton.testing.do_bench_cudagraph(lambda: gemv(xq, xs, *ws_list[next(it)], bn, g, sp, wp, tickets), rep=30) * 1e3
            except Exception as e:  # noqa: BLE001 -- a lab: report and go on
                print(f"  N={n} K={k} {(bn, g, sp, wp)} failed: {type(e).__name__}: {str(e)[:100]}")
                continue
            if err < 5e-3 and t < best[0]:
                best = (t, (bn, g, sp, wp), err)
        print(f"M=1 N={n:5d} K={k:5d}: bf16 {t_bf16:6.1f} us | shipped GEMM {t_ship:6.1f} us ({cfg.kind} {cfg.block_n} s{cfg.split_k}) "
              f"| gemv best {best[0]:6.1f} us {best[1]} (BLOCK_N, G, splits, warps), rel err {best[2]} "
              f"| {n * k / best[0] / 1e6:.2f} TB/s", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
