"""The block-scaled FP8 GEMM as an Inductor ``TritonTemplate`` (Jinja source), for ``fp8inductor.lowering``.

The main loop is not repeated here: the generated kernel imports ``_mainloop_tma`` /
``_mainloop_ptr`` and the tile helpers from ``fp8inductor.kernels.block_gemm``, the very functions
the standalone kernels run (Triton inlines them). What the template adds is Inductor's
``store_output``: the fp32 tile goes through the fused epilogue (bias, the cast to the activation
dtype, and whatever pointwise ops Inductor fuses after the linear: residual add, activation) before
the one store.

Template inputs (all row-major contiguous, as the lowering makes them):
    XQ [..., K] float8_e4m3fn activation codes     XS [..., ceil(K/128)] float32 activation scales
    WQ [N, K] float8_e4m3fn weight codes           WS [ceil(N/128), ceil(K/128)] float32 weight scales
Output: [..., N] float32 (the epilogue casts), OUT_NDIM dims: the caller's activation shape, so the
epilogue and the caller's pointwise ops index the output as they do (a 2-D output viewed as 3-D
afterwards is not fused by Inductor 2.11, measured with ``benchmarks/lab/fusion_probe.py``). The
kernel runs over M = prod(leading dims) rows and splits the row index back into leading indices for
``store_output``. Constexprs (``GemmConfig``): BLOCK_M, BLOCK_N, BLOCK_K
(= QBLOCK = 128), GROUP_M, PERSISTENT (persistent grid over tiles with TMA loads, as
``_fp8_gemm_tma_kernel``; else one program per tile with pointer loads, as ``_fp8_gemm_tiles_kernel``),
FLATTEN, EVEN_K, NUM_PROGS (persistent grid size), OUT_NDIM.
"""

from __future__ import annotations

TEMPLATE_NAME = "fp8inductor_block_gemm"

TEMPLATE_SOURCE = r"""
from fp8inductor.kernels.block_gemm import _grouped_tile, _mainloop_ptr, _mainloop_tma, _scale_ptrs, _tile_ptrs
{{def_kernel("XQ", "XS", "WQ", "WS")}}
    M = {% for d in range(OUT_NDIM - 1) %}{{size("XQ", d)}}{% if not loop.last %} * {% endif %}{% endfor %}
    N = {{size("WQ", 0)}}
    K = {{size("XQ", OUT_NDIM - 1)}}
    if M * N == 0:
        return
    stride_xm = {{stride("XQ", OUT_NDIM - 2)}}
    stride_xk = {{stride("XQ", OUT_NDIM - 1)}}
    stride_xsm = {{stride("XS", OUT_NDIM - 2)}}
    stride_xsk = {{stride("XS", OUT_NDIM - 1)}}
    stride_wn = {{stride("WQ", 0)}}
    stride_wk = {{stride("WQ", 1)}}
    stride_wsn = {{stride("WS", 0)}}
    stride_wsk = {{stride("WS", 1)}}
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    nkb = tl.cdiv(K, BLOCK_K)
{%- set out_idx = [] %}
{%- for d in range(OUT_NDIM - 1) %}{% set _ = out_idx.append("idx_l%d" % d) %}{% endfor %}
{%- set _ = out_idx.append("idx_n") %}
{%- if PERSISTENT %}
    x_desc = tl.make_tensor_descriptor(XQ, shape=[M, K], strides=[stride_xm, 1], block_shape=[BLOCK_M, BLOCK_K])
    w_desc = tl.make_tensor_descriptor(WQ, shape=[N, K], strides=[stride_wn, 1], block_shape=[BLOCK_N, BLOCK_K])
    for tile_id in tl.range(tl.program_id(0), num_pid_m * num_pid_n, NUM_PROGS, flatten=FLATTEN):
        pid_m, pid_n = _grouped_tile(tile_id, num_pid_m, num_pid_n, GROUP_M)
        xs_ptrs, ws_ptrs = _scale_ptrs(XS, WS, pid_m, pid_n, M, N, stride_xsm, stride_wsn, BLOCK_M, BLOCK_N, QBLOCK)
        acc = _mainloop_tma(x_desc, w_desc, xs_ptrs, ws_ptrs, pid_m, pid_n, nkb, stride_xsk, stride_wsk,
                            BLOCK_M, BLOCK_N, BLOCK_K, QBLOCK)
        idx_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M))[:, None]
        idx_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N))[None, :]
        mask = (idx_m < M) & (idx_n < N)
        idx_r = idx_m
{%- for d in range(OUT_NDIM - 2, 0, -1) %}
        idx_l{{d}} = idx_r % {{size(None, d)}}
        idx_r = idx_r // {{size(None, d)}}
{%- endfor %}
        idx_l0 = idx_r
        {{store_output(out_idx, "acc", "mask", indent_width=8, val_shape=("BLOCK_M", "BLOCK_N"))}}
{%- else %}
    pid_m, pid_n = _grouped_tile(tl.program_id(0), num_pid_m, num_pid_n, GROUP_M)
    a_ptrs, b_ptrs = _tile_ptrs(XQ, WQ, pid_m, pid_n, M, N, stride_xm, stride_xk, stride_wn, stride_wk,
                                BLOCK_M, BLOCK_N, BLOCK_K)
    xs_ptrs, ws_ptrs = _scale_ptrs(XS, WS, pid_m, pid_n, M, N, stride_xsm, stride_wsn, BLOCK_M, BLOCK_N, QBLOCK)
    acc = _mainloop_ptr(a_ptrs, b_ptrs, xs_ptrs, ws_ptrs, 0, nkb, K, stride_xk, stride_wk, stride_xsk, stride_wsk,
                        BLOCK_M, BLOCK_N, BLOCK_K, QBLOCK, EVEN_K)
    idx_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M))[:, None]
    idx_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N))[None, :]
    mask = (idx_m < M) & (idx_n < N)
    idx_r = idx_m
{%- for d in range(OUT_NDIM - 2, 0, -1) %}
    idx_l{{d}} = idx_r % {{size(None, d)}}
    idx_r = idx_r // {{size(None, d)}}
{%- endfor %}
    idx_l0 = idx_r
    {{store_output(out_idx, "acc", "mask", val_shape=("BLOCK_M", "BLOCK_N"))}}
{%- endif %}
"""
