"""Runs every Triton kernel once on awkward shapes, for ``compute-sanitizer --tool memcheck``.

    compute-sanitizer --tool memcheck python tests/sanitize_kernels.py

Not a pytest module: the sanitizer watches this whole process. Exits non-zero on a wrong result.
"""

from __future__ import annotations

import torch

from fp8inductor.kernels.act_quant import act_quant_1x128
from fp8inductor.kernels.block_gemm import GemmConfig, fp8_block_gemm, fp8_block_linear
from fp8inductor.kernels.weight_quant import weight_quant_128x128
from fp8inductor.reference import block_fp8_linear_ref, quantize_weight_ref

SHAPES = [(1, 128, 128), (3, 200, 72), (17, 576, 7168), (130, 2112, 1000), (255, 384, 328)]  # (M, N, K)


def main() -> int:
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for m, n, k in SHAPES:
        x = torch.randn(m, k, generator=g).bfloat16()
        w = (torch.randn(n, k, generator=g) / k**0.5).bfloat16()
        b = torch.randn(n, generator=g).bfloat16()
        xc, wc, bc = x.cuda(), w.cuda(), b.cuda()
        q, s = weight_quant_128x128(wc)
        xq, xs = act_quant_1x128(xc[:, : k - 1] if k > 1 else xc)  # a strided view too
        act_quant_1x128(xc, col_major_scales=True)  # the scale layout of the cuBLAS path
        xq, xs = act_quant_1x128(xc, "ue8m0")
        fp8_block_gemm(xq, xs, q, s, bc, torch.float16)
        y = fp8_block_linear(xc, q, s, bc)
        splitk = GemmConfig("splitk", 16, 64, 4, 4, split_k=4)  # the one-kernel linear with tickets
        y_fused = fp8_block_linear(xc, q, s, bc, config=splitk)
        fp8_block_gemm(xq, xs, q, s, bc, torch.float32, config=splitk)
        torch.cuda.synchronize()
        rq, rs = quantize_weight_ref(w)
        ref = block_fp8_linear_ref(x, rq, rs, b)
        err = ((y.cpu().float() - ref.float()).norm() / ref.float().norm()).item()
        err = max(err, ((y_fused.cpu().float() - ref.float()).norm() / ref.float().norm()).item())
        worst = max(worst, err)
        print(f"M={m} N={n} K={k}: rel err {err:.2e}")
    worst = max(worst, _norm_quant(g))
    worst = max(worst, _cublas_linear(g))
    worst = max(worst, _compiled_templates())
    worst = max(worst, _gqa_decode(g))
    print(f"worst {worst:.2e}")
    return 0 if worst < 1e-2 else 1


def _norm_quant(g: torch.Generator) -> float:
    """rms_norm_quant: ragged and non-power-of-two group counts, strided rows, with and without residual."""
    from fp8inductor.kernels.norm_quant import rms_norm_quant
    from fp8inductor.reference import rms_norm_quant_ref

    worst = 0.0
    for m, k in [(1, 4096), (3, 200), (17, 7168), (130, 1000)]:
        x = torch.randn(m, k + 8, generator=g).bfloat16()[:, 4 : k + 4]  # row stride k + 8
        r = torch.randn(m, k, generator=g).bfloat16()
        w = (torch.rand(k, generator=g) + 0.5).bfloat16()
        for res in (r, None):
            h, q, s = rms_norm_quant(x.cuda(), None if res is None else res.cuda(), w.cuda(), 1e-5, "ue8m0")
            torch.cuda.synchronize()
            _, rq, rs = rms_norm_quant_ref(x, res, w, 1e-5, "ue8m0")
            deq = q.cpu().float() * s.cpu().repeat_interleave(128, dim=1)[:, :k]
            want = rq.float() * rs.repeat_interleave(128, dim=1)[:, :k]
            err = ((deq - want).norm() / want.norm()).item()
            worst = max(worst, err)
            print(f"rms_norm_quant M={m} K={k} residual={res is not None}: rel err {err:.2e}")
    # the norm kernel clears a split-K GEMM's tile tickets (the fused decode q/k/v linear), then two
    # split-K GEMMs run on that buffer one after another (each leaves it zero)
    splitk = GemmConfig("splitk", 16, 64, 4, 4, split_k=4)
    for m, n, k in [(1, 384, 4096), (5, 200, 1000)]:
        x = torch.randn(m, k, generator=g).bfloat16().cuda()
        w = (torch.rand(k, generator=g) + 0.5).bfloat16().cuda()
        q, s = weight_quant_128x128((torch.randn(n, k, generator=g) / k**0.5).bfloat16().cuda())
        tickets = torch.full((1000,), 3, dtype=torch.int32, device="cuda")
        _, xq, xs = rms_norm_quant(x, x, w, 1e-5, zero=tickets)
        ys = [fp8_block_gemm(xq, xs, q, s, None, torch.bfloat16, config=splitk, tickets=tickets) for _ in range(2)]
        want = fp8_block_gemm(xq, xs, q, s, None, torch.bfloat16, config=splitk)
        torch.cuda.synchronize()
        ok = bool(not tickets.any()) and all(torch.equal(y, want) for y in ys)
        worst = max(worst, 0.0 if ok else 1.0)
        print(f"rms_norm_quant tickets + split-K M={m} N={n} K={k}: {'ok' if ok else 'MISMATCH'}")
    return worst


def _cublas_linear(g: torch.Generator) -> float:
    """The cuBLAS choice: column-major scales from the quant kernel straight into torch._scaled_mm."""
    from fp8inductor.kernels import cublas
    from fp8inductor.kernels.config import CUBLAS

    if not cublas.device_supported(torch.device("cuda")):
        return 0.0
    worst = 0.0
    for m in (132, 130):  # 130: the quant kernel writes 132 rows, the two last zero (cuBLAS's padding)
        n, k = 2112, 4000  # K % 128 != 0 with ceil(K/128) % 4 == 0: admitted
        x = torch.randn(m, k, generator=g).bfloat16()
        w = (torch.randn(n, k, generator=g) / k**0.5).bfloat16()
        q, s = weight_quant_128x128(w.cuda())
        y = fp8_block_linear(x.cuda(), q, s, config=CUBLAS)
        torch.cuda.synchronize()
        rq, rs = quantize_weight_ref(w)
        ref = block_fp8_linear_ref(x, rq, rs)
        err = ((y.cpu().float() - ref.float()).norm() / ref.float().norm()).item()
        print(f"cuBLAS M={m} N={n} K={k}: rel err {err:.2e}")
        worst = max(worst, err)
    return worst


def _gqa_decode(g: torch.Generator) -> float:
    """The split-KV decode attention: a ragged cache length, a view of a longer cache, a bool mask
    with a fully masked batch row (zeros), an additive mask broadcast over the batch."""
    from fp8inductor.kernels.gqa_decode import gqa_decode_attention
    from fp8inductor.reference import gqa_decode_attention_ref

    worst = 0.0
    for b, h_q, h_kv, s, d in ((1, 32, 8, 1000, 128), (3, 8, 2, 67, 64)):
        q = torch.randn(b, 1, h_q, d, generator=g).bfloat16().cuda().transpose(1, 2)
        k, v = (torch.randn(b, h_kv, s + 5, d, generator=g).bfloat16().cuda()[:, :, :s] for _ in range(2))
        keep = (torch.rand(b, 1, 1, s, generator=g) > 0.2).cuda()
        if b > 1:
            keep[-1] = False  # a batch row with every key masked
        for mask in (keep, torch.zeros(1, 1, 1, s, device="cuda").masked_fill(~keep[:1], float("-inf"))):
            y = gqa_decode_attention(q, k, v, mask)
            ref = gqa_decode_attention_ref(q, k, v, mask)
            err = ((y.float() - ref).norm() / ref.norm().clamp_min(1e-30)).item()
            print(f"gqa_decode B={b} H={h_q}/{h_kv} S={s} D={d} {mask.dtype}: rel err {err:.2e}")
            worst = max(worst, err)
    return worst


def _compiled_templates() -> float:
    """The Inductor template path (persistent TMA and pointer-tile configs, fused epilogues)."""
    import os

    import fp8inductor.backend  # noqa: F401
    from fp8inductor.modules import quantize_

    os.environ["FP8INDUCTOR_CUBLAS"] = "0"  # M=300 N=2112 K=1024 would leave the GEMM to cuBLAS: keep templates

    worst = 0.0
    for m, n, k in [(130, 384, 328), (300, 2112, 1024), (40, 576, 640)]:
        lin = torch.nn.Linear(k, n, device="cuda", dtype=torch.bfloat16)
        x = torch.randn(1, m, k, device="cuda", dtype=torch.bfloat16)
        eager = torch.nn.Sequential(torch.nn.Linear(k, n, device="cuda", dtype=torch.bfloat16))
        eager[0].load_state_dict(lin.state_dict())
        quantize_(eager)
        with torch.inference_mode():
            y = torch.compile(lin, backend="fp8block")(x)
            ref = eager(x)
        torch.cuda.synchronize()
        err = ((y.float() - ref.float()).norm() / ref.float().norm()).item()
        worst = max(worst, err)
        print(f"compiled M={m} N={n} K={k}: rel err vs the op {err:.2e}")
    return worst


if __name__ == "__main__":
    raise SystemExit(main())
