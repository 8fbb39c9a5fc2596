"""Inductor lowerings of ``fp8inductor::block_linear`` and ``quantize_activation``.

Without this module Inductor calls the ops as opaque FallbackKernels (activation quant + GEMM
kernels chosen at run time). With it, inside an ``fp8block`` compile on an FP8 GPU and for a static
M, ``block_linear(x, wq, ws, bias)`` lowers by the GEMM the op would pick (``static_choice``):

* a Triton template config:

      xq, xs = quantize_activation(x)                 # FallbackKernel (Triton, bit-exact)
      acc    = <GEMM choice>(xq, xs, wq, ws)          # [..., N] float32, x's leading shape
      y      = (acc + bias.float()).to(x.dtype)       # pointwise: fused into the template's store

  so Inductor fuses the bias, the cast and any pointwise consumer (residual add, activation) into
  the GEMM's store (``store_output``) instead of writing the linear's output and reading it back;
* cuBLAS blockwise (``kernels/cublas.py``: large M on the H100, 1.27x our best Triton config at the
  median, docs/tuning.md), where the IR quantization is available (``quant_ir.available``) and the
  weight, its scales and the bias are dense (``_dense``):

      xq, xs = quant_ir.quantize_1x128(x)             # Inductor kernel fused into x's producer;
                                                      # xs column-major, as cuBLAS reads it
      y      = aten._scaled_mm(xq, wq.t(), xs, ws.t(), bias, out_dtype=x.dtype)

  (cuBLAS writes x's dtype itself: no fp32 accumulator round trip; no custom-op dispatch per linear);
* split-K (small M, few output tiles: the last split of each tile stores it, no single store to fuse
  into), a norm-fused (``quantized_block_linear``) tiles pick at M <= 8 (the op launches it with PDL
  behind the norm kernel: ``_op_overlaps_producer``), or cuBLAS where the IR or the layouts do not
  allow the above: the op, a FallbackKernel.

Outside max-autotune that is one choice, no benchmarking: the shipped tuned config for this device
and shape (``fp8inductor.tuned``) or the heuristic (``pick_config``). Under ``max_autotune`` /
``max_autotune_gemm`` a template pick gets every template config of ``kernels.config.CONFIGS`` that
fits and the op's own launcher (``fp8inductor::block_gemm``, which can split K), benchmarked by
Inductor's autotuner. cuBLAS is chosen only where ``kernels/cublas.py`` admits the call: it is
silently wrong when ceil(K/128) % 4 != 0 (measured), and an autotuner that benchmarks a wrong kernel
could pick it.

``quantize_activation`` called by the user's model lowers to ``quant_ir`` too (CPU and GPU).

A symbolic M (``dynamic=True``, ``mark_dynamic``) keeps the block_linear FallbackKernel, whose
launcher picks the config per M at run time: one compiled graph serves prefill and decode with the
right kernel for each (a template's block sizes would be fixed at compile time for one M hint).

Gated off (FallbackKernel): CPU tensors (block_linear), GPUs below compute capability 8.9, group
size != 128, 1-D activations, ``gemm_lowering="extern"``, compiles outside the fp8block backend
(whose pass ``uuid`` puts these sources in the FX-graph cache key), and any exception while lowering
(logged once per message). A failure later, when Triton compiles or launches a kernel, is not caught.
"""

from __future__ import annotations

import functools
import logging
import math

import sympy
import torch
from torch._inductor import config as inductor_config
from torch._inductor import ir
from torch._inductor import lowering as L
from torch._inductor.select_algorithm import (
    ExternKernelChoice,
    SymbolicGridFn,
    TritonTemplate,
    autotune_select_algorithm,
)
from torch._inductor.virtualized import V

from . import ops
from .kernels.config import CONFIGS, QBLOCK, GemmConfig
from .kernels.template import TEMPLATE_NAME, TEMPLATE_SOURCE

log = logging.getLogger("fp8inductor")
aten = torch.ops.aten


@SymbolicGridFn
def _grid(m, n, meta, *, cdiv, min):
    """Programs: one per [BLOCK_M, BLOCK_N] output tile, at most NUM_PROGS when persistent."""
    tiles = cdiv(m, meta["BLOCK_M"]) * cdiv(n, meta["BLOCK_N"])
    return (min(meta["NUM_PROGS"], tiles) if meta["PERSISTENT"] else tiles, 1, 1)


_TEMPLATE = TritonTemplate(name=TEMPLATE_NAME, grid=_grid, source=TEMPLATE_SOURCE)
_EXTERN_TRITON = ExternKernelChoice(
    ops.block_gemm, name="fp8inductor_block_gemm", has_out_variant=False, op_overload=ops.block_gemm,
    use_fallback_kernel=True,
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Gates
# ---------------------------------------------------------------------------------------------


def _active_config():
    """The FP8BlockConfig of the fp8block compile in progress, or None outside one."""
    from .passes import _ACTIVE_SCOPE

    scope = _ACTIVE_SCOPE.get()
    return None if scope is None else scope.config


def _fp8_gpu(device: torch.device) -> bool:
    return device.type == "cuda" and ops._cuda_has_fp8(device.index if device.index is not None else 0)


def _static_int(expr) -> int | None:
    """An int for a static size (int or sympy.Integer), None for a symbolic one."""
    if isinstance(expr, int):
        return expr
    if isinstance(expr, sympy.Expr) and expr.is_Integer:
        return int(expr)
    return None


def _max_autotune() -> bool:
    return bool(inductor_config.max_autotune or inductor_config.max_autotune_gemm)


@functools.cache
def _warn_template_failure(reason: str) -> None:
    log.warning("fp8inductor: GEMM template unavailable (%s); using the op's own kernels", reason)


# ---------------------------------------------------------------------------------------------
# Choices
# ---------------------------------------------------------------------------------------------


def _template_kwargs(cfg: GemmConfig, k: int, num_sms: int) -> dict:
    return dict(
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        BLOCK_K=QBLOCK,
        QBLOCK=QBLOCK,
        GROUP_M=cfg.group_m,
        PERSISTENT=cfg.kind == "tma",
        FLATTEN=cfg.flatten,
        EVEN_K=k % QBLOCK == 0,
        NUM_PROGS=num_sms * cfg.ctas_per_sm,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )


def _candidate_configs(picked: GemmConfig, m: int, tma_ok: bool) -> list[GemmConfig]:
    """Template configs worth offering: the op's own pick (``static_choice``) first, then the shipped
    CONFIGS that fit. Empty when that pick is split-K or cuBLAS (the FallbackKernel runs it)."""
    if picked.kind in ("splitk", "cublas"):
        return []
    out = [picked]
    if _max_autotune():
        for cfg in CONFIGS.values():
            if cfg.kind == "splitk" or (cfg.kind == "tma" and not tma_ok) or cfg in out:
                continue
            if cfg.block_m > 16 and m <= 16:  # 64+ rows of padding per tile for a decode batch
                continue
            out.append(cfg)
    return out


def _shared_quantization(form: str, scale_fmt: str, make):
    """``make()`` once per activation, scale format and ``form`` per graph: the linears that read the
    same activation (q/k/v, gate/up) share one quantization.

    The memo is keyed by the activation's FX node (the current ``block_linear`` node's first
    argument): in the functional graph one node is one value, so an in-place update between two
    linears (a new node after functionalization) can never hand the second linear the first one's
    quantization. (Keying by Inductor buffer name would: a reinplaced mutation keeps the name. Keying
    by layout would miss: the first use fixes it.) Without an FX node, no sharing.
    """
    fx_node = V.graph.current_node
    x_node = fx_node.args[0] if fx_node is not None and fx_node.args else None
    if not isinstance(x_node, torch.fx.Node):
        return make()
    memo = V.graph.__dict__.setdefault("_fp8inductor_act_quant", {})
    key = (x_node, scale_fmt, form)
    if key not in memo:
        memo[key] = make()
    return memo[key]


def _op_quantization(x, scale_fmt: str, group_size: int = QBLOCK):
    """``quantize_activation(x)`` as the op's FallbackKernel: (xq [..., K] fp8, xs [..., ceil(K/group)] fp32)."""
    return L.fallback_handler(ops.quantize_activation, add_to_fallback_set=False)(x, group_size, scale_fmt)


def _quantized_activation(x, scale_fmt: str):
    """(xq [..., K] fp8, xs [..., ceil(K/128)] fp32) of x by the op's kernel, shared per activation."""
    return _shared_quantization("op", scale_fmt, functools.partial(_op_quantization, x, scale_fmt))


def _gemm(quantized, wq, ws, lead: list[int], n: int, k: int, picked: GemmConfig):
    """[*lead, N] float32 TensorBox of the block-scaled GEMM of the activation against (wq, ws), or None.
    quantized: () -> (xq [*lead, K] fp8, xs [*lead, K/128] fp32), the activation's quantization
    (called only when a template config is offered); picked: the op's own config for this linear
    (``static_choice``)."""
    device = wq.get_device()
    m = math.prod(lead)
    tma_ok = k % 16 == 0  # xq and wq are row-major and freshly allocated (aligned); TMA rows need 16 B
    configs = _candidate_configs(picked, m, tma_ok)
    if not configs:
        return None  # split-K or cuBLAS: the FallbackKernel's launcher runs them, with no fp32 round trip
    from .kernels.block_gemm import _ensure_tma_allocator, _num_sms

    _ensure_tma_allocator()  # device-side TMA descriptors need a workspace allocator (autotuning here)
    xq, xs = quantized()
    # xs keeps a fixed layout it has (rms_norm_quant writes it column-major): the template reads it
    # through its strides; the codes and weights must be row-major (TMA rows, _tile_ptrs' K loop).
    # The template steps over the M = prod(lead) rows by the stride of dim -2 alone, so both
    # activation operands go in as views where that stride is the flattened row's.
    xq = ir.ExternKernel.require_contiguous(xq)
    xq = _template_rows(xq) or xq
    xs_fixed = _template_rows(xs)
    if xs_fixed is None:
        xs = ir.ExternKernel.require_contiguous(xs)
        xs_fixed = _template_rows(xs)
    xs = xs_fixed or xs
    inputs = [xq, xs, *(ir.ExternKernel.require_contiguous(t) for t in (wq, ws))]
    layout = ir.FixedLayout(device, torch.float32, [*lead, n], ir.FlexibleLayout.contiguous_strides([*lead, n]))
    choices: list = []
    for cfg in configs:
        try:
            choices.append(
                _TEMPLATE.generate(
                    input_nodes=tuple(inputs),
                    layout=layout,
                    call_sizes=[sympy.Integer(m), sympy.Integer(n)],  # the grid's (M, N)
                    OUT_NDIM=len(lead) + 1,
                    **_template_kwargs(cfg, k, _num_sms(device)),
                )
            )
        except NotImplementedError as exc:  # Inductor's way of declining a template config
            _warn_template_failure(f"{cfg}: {exc}")
    if not choices:
        _warn_template_failure("no template choice could be generated")
        return None
    if _max_autotune():
        choices.append(_EXTERN_TRITON.bind(tuple(inputs), layout, out_dtype=torch.float32))
    result = autotune_select_algorithm("fp8inductor_block_gemm", choices, inputs, layout)
    return result[0] if isinstance(result, tuple) else result


def _dense(t) -> bool:
    """t's layout is fixed, row-major contiguous, at storage offset 0, and (a constant) its data
    16-byte aligned: what the op's ``cublas.usable_weight`` checks at run time, known here.

    Inductor lays a constant out at offset 0 whatever its storage offset, and does not copy a
    misaligned one, hence the look at the tensor itself; graph inputs that may be misaligned are
    listed in ``V.graph.unaligned_buffers`` (Inductor copies them when they are)."""
    try:
        layout, name = t.get_layout(), t.get_name()
    except (AttributeError, NotImplementedError):  # an unrealized value has no layout yet
        return False
    if not isinstance(layout, ir.FixedLayout) or _static_int(layout.offset) != 0:
        return False
    if name in getattr(V.graph, "unaligned_buffers", ()):
        return False
    constant = V.graph.constants.get(name)
    if constant is not None and constant.data_ptr() % 16:
        return False
    strides = [_static_int(st) for st in layout.stride]
    return strides == [_static_int(st) for st in ir.FlexibleLayout.contiguous_strides(layout.size)]


def _row_stride(sizes: list[int | None], strides: list[int | None]) -> int | None:
    """The stride of the flattened row index of a [*lead, C] layout (sizes and strides of the lead
    dims): rs where every lead dim of size > 1 steps by rs * (the product of the sizes after it),
    i.e. row r = flat index over lead sits at r * rs. None where the lead dims do not flatten so
    (or a size or stride is symbolic, or there are no rows: any stride would do, none is implied)."""
    if any(v is None for v in (*sizes, *strides)) or 0 in sizes:
        return None
    row_stride, inner = None, 1
    for size, stride in zip(reversed(sizes), reversed(strides)):
        if size != 1:
            if stride % inner:
                return None
            if row_stride is None:
                row_stride = stride // inner
            elif stride != row_stride * inner:
                return None
        inner *= size
    return 1 if row_stride is None else row_stride


def _template_rows(t):
    """t [*lead, C] (fixed layout) as an as_strided view of the same elements whose lead dims step
    by rs * (sizes after them), rs the flattened row stride: the template reads row r at
    r * stride(dim -2), which a size-1 dim -2 of any other stride would break (a decode activation
    [B, 1, K] with column-major scales has strides (1, B*G, B): dim -2's stride is not the row's).
    None where t's lead dims do not flatten into one row stride, or its layout is not fixed."""
    if not _fixed_layout(t):
        return None
    layout = t.get_layout()
    sizes = [_static_int(d) for d in layout.size]
    strides = [_static_int(st) for st in layout.stride]
    offset = _static_int(layout.offset)
    row_stride = _row_stride(sizes[:-1], strides[:-1])
    if row_stride is None or strides[-1] is None or offset is None:
        return None
    canonical, inner = [], row_stride
    for size in reversed(sizes[:-1]):
        canonical.append(inner)
        inner *= size
    canonical = [*reversed(canonical), strides[-1]]
    if canonical == strides:
        return t
    return L.lowerings[aten.as_strided.default](t, sizes, canonical, offset)


def _fixed_layout(t) -> bool:
    """t is a realized buffer (or view of one) with a fixed layout."""
    try:
        return isinstance(t.get_layout(), ir.FixedLayout)
    except (AttributeError, NotImplementedError):
        return False


def _cublas_linear(x, wq, ws, bias, scale_fmt: str, lead: list[int], n: int, k: int):
    """[*lead, N] in x's dtype by cuBLAS blockwise on an Inductor-IR quantization, for a linear the op
    would run on cuBLAS; None where the IR quantization is not available (``quant_ir.available``).

        xq, xs = quant_ir.quantize_1x128(x)      # Inductor kernel, fused into x's producer;
                                                 # xs [M, K/128] written column-major
        y      = aten._scaled_mm(xq, wq.t(), xs, ws.t(), bias, out_dtype=x.dtype)

    The quantization is shared by the linears that read x (one per FX node of x). The GEMM is an
    aten ExternKernel call on views of the weight: no custom-op dispatch per linear, no copy of the
    scales. The layouts are the ones ``cublas.block_gemm`` passes: the sizes and dtypes are checked
    by ``static_choice`` (``cublas.admits``), the weight, its scales and the bias must be row-major
    at offset 0 (``_dense``; frozen constants and module buffers normally are, and a fresh Inductor
    buffer is aligned); else the op runs, which checks the run-time tensors itself.
    """
    from . import quant_ir

    m = math.prod(lead)
    device = x.get_device()
    if not quant_ir.available(device, k, scale_fmt):
        return None
    if not all(_dense(t) for t in (wq, ws, bias) if t is not None):
        return None
    from .kernels import cublas

    # cuBLAS takes M % 4 == 0 only: otherwise the quantization runs over x padded with zero rows (the
    # pad is a masked load inside the quantization kernel) and the product's first M rows are kept
    mp = cublas.padded_rows(m)
    x_rows, form = x, "ir-col-major"
    if mp != m:
        x_rows = L.lowerings[aten.constant_pad_nd.default](
            L.lowerings[aten.view.default](x, [m, k]), [0, 0, 0, mp - m], 0.0
        )
        form = f"ir-col-major-rows{mp}"
    make = functools.partial(quant_ir.quantize_1x128, x_rows, mp, k, scale_fmt, col_major_scales=True)
    xq, xs = _shared_quantization(form, scale_fmt, make)
    if mp == m:
        return _scaled_mm(xq, xs, wq, ws, bias, x.get_dtype(), lead, n)
    y = _scaled_mm(xq, xs, wq, ws, bias, x.get_dtype(), [mp], n)  # [Mp, N]
    y = L.lowerings[aten.slice.Tensor](y, 0, 0, m)
    return L.lowerings[aten.view.default](y, [*lead, n])


def _scaled_mm(xq, xs, wq, ws, bias, out_dtype: torch.dtype, lead: list[int], n: int):
    """``aten._scaled_mm(xq, wq.t(), xs, ws.t(), bias, out_dtype)`` viewed as [*lead, N].
    xq: [M, K] fp8 contiguous, M % 4 == 0; xs: [M, K/128] fp32 with strides (1, M), as cuBLAS reads it."""
    permute = L.lowerings[aten.permute.default]
    scaled_mm = L.fallback_handler(aten._scaled_mm.default, add_to_fallback_set=False)
    y = scaled_mm(xq, permute(wq, [1, 0]), xs, permute(ws, [1, 0]), bias, None, out_dtype, False)
    return L.lowerings[aten.view.default](y, [*lead, n])


def _as_rows(xq, xs, m: int, k: int):
    """The quantized activation xq [*lead, K] (contiguous), xs [*lead, G] as the 2-D [M, K] and
    [M, G] column-major operands of ``_scaled_mm``: views where the layouts allow (rms_norm_quant's
    outputs always do), else copies."""
    g = k // QBLOCK
    xq2 = L.lowerings[aten.view.default](ir.ExternKernel.require_contiguous(xq), [m, k])
    if _fixed_layout(xs):
        layout = xs.get_layout()
        *lead_strides, last = [_static_int(st) for st in layout.stride]
        sizes = [_static_int(d) for d in layout.size[:-1]]
        # [*lead, G] is [M, G] column-major when the last dim steps by M and the flattened row
        # index by 1
        if last == m and _row_stride(sizes, lead_strides) == 1:
            return xq2, L.lowerings[aten.as_strided.default](xs, [m, g], [1, m], _static_int(layout.offset))
    xs2 = L.lowerings[aten.view.default](xs, [m, g])
    # exactly (1, M), what cuBLAS reads: a row slice of column-major scales is ordered column-major
    # too, but steps by the full buffer's M
    return xq2, ir.ExternKernel.require_exact_strides(xs2, [1, m])


# ---------------------------------------------------------------------------------------------
# The lowerings
# ---------------------------------------------------------------------------------------------


@L.register_lowering(ops.quantize_activation, type_promotion_kind=None)
def lower_quantize_activation(x, group_size: int = 128, scale_fmt: str = "float"):
    """x [..., K] -> (q [..., K] fp8, s [..., K/128] fp32): Inductor IR (``quant_ir``) inside an
    fp8block compile where it is available, fused into x's producer; else the op's kernel."""
    from . import quant_ir

    config = _active_config()
    device = x.get_device()
    *lead, k_expr = x.get_size()
    k = _static_int(k_expr)
    if (
        config is None
        or config.gemm_lowering != "template"
        or group_size != QBLOCK
        or not lead
        or not quant_ir.available(device, k, scale_fmt)
        or (device.type == "cuda" and not _fp8_gpu(device))
    ):
        return _op_quantization(x, scale_fmt, group_size)
    try:
        q, s = quant_ir.quantize_1x128(x, math.prod(lead), k, scale_fmt)
    except Exception as exc:  # never fail a compile over the IR: the op's kernel is as correct
        _warn_template_failure(f"quantize_activation IR: {type(exc).__name__}: {exc}")
        return _op_quantization(x, scale_fmt)
    view = L.lowerings[aten.view.default]
    return view(q, [*lead, k]), view(s, [*lead, k // QBLOCK])


@L.register_lowering(ops.realize, type_promotion_kind=None)
def lower_realize(x):
    """x -> x, computed into a buffer of its own (once) instead of inlined into every reader."""
    x.realize()
    return x


def _fallback(*args):
    return L.fallback_handler(ops.block_linear, add_to_fallback_set=False)(*args)


@L.register_lowering(ops.block_linear, type_promotion_kind=None)
def lower_block_linear(x, wq, ws, bias=None, group_size: int = 128, scale_fmt: str = "float"):
    """x [..., K] float, wq [N, K] fp8, ws [ceil(N/128), ceil(K/128)] fp32, bias [N] or None -> [..., N]."""
    args = (x, wq, ws, bias, group_size, scale_fmt)
    config = _active_config()
    device = x.get_device()
    if config is None or config.gemm_lowering != "template" or group_size != QBLOCK or not _fp8_gpu(device):
        return _fallback(*args)
    *lead, k_expr = x.get_size()
    n, k = _static_int(wq.get_size()[0]), _static_int(k_expr)
    lead_ints = [_static_int(d) for d in lead]
    if not lead or n is None or k is None or any(d is None for d in lead_ints):
        return _fallback(*args)  # 1-D x; symbolic M: run-time config choice in the FallbackKernel
    if math.prod(lead_ints) == 0 or n == 0 or k == 0:
        return _fallback(*args)
    try:
        from .kernels.block_gemm import static_choice  # the op's own choice: tuned table, else heuristic

        # static_choice's view of the run-time layout (fresh row-major operands, frozen row-major
        # weights) holds here; if a run-time layout says otherwise the op runs its Triton kernels.
        bias_dtype = None if bias is None else bias.get_dtype()
        picked = static_choice(device, math.prod(lead_ints), n, k, x.get_dtype(), bias_dtype)
        if picked.kind == "cublas":
            y = _cublas_linear(x, wq, ws, bias, scale_fmt, lead_ints, n, k)
            if y is not None:
                return y
        acc = _gemm(functools.partial(_quantized_activation, x, scale_fmt), wq, ws, lead_ints, n, k, picked)
    except Exception as exc:  # never fail a compile over a lowering: the op's kernels are as correct
        _warn_template_failure(f"{type(exc).__name__}: {exc}")
        acc = None
    if acc is None:
        return _fallback(*args)
    return _epilogue(acc, bias, x.get_dtype())


def _op_overlaps_producer(device: torch.device, m: int, picked: GemmConfig) -> bool:
    """Whether the op beats a template for a quantized linear of ``m`` rows: at decode sizes the op
    launches its tiles kernel with PDL (``kernels/pdl.py``), so the GEMM's launch and first weight
    loads overlap the norm kernel in front of it; Inductor launches a template without PDL. (Same
    kernel config either way; at these M no epilogue of a decoder layer fuses into the store.)

    Measured (H100, torch 2.11, triton 3.6, 2026-12-05, ``bench_model.py`` decode, 8 Llama-3-8B
    layers + FP8 lm_head, CUDA graphs): batch 1, 1396 us/step with the 9 tiles GEMMs as templates
    (642.7 us of template kernels) vs 1282 us through the op (the same 9 GEMMs 578.5 us), batch 8
    2112 vs 2096 us, batch 32 (above PDL_MAX_M: no PDL) unchanged. Not applied to ``block_linear``,
    whose template path fuses the activation quant into its producer instead (not measured)."""
    from .kernels import pdl

    return picked.kind == "tiles" and pdl.pdl_enabled(device, m)


def _epilogue(acc, bias, out_dtype: torch.dtype):
    """(acc + bias) in ``out_dtype``. acc is [..., N] fp32 in the caller's shape, so this epilogue and
    the caller's own pointwise ops (residual add, activation) index it as the template stores it and
    fuse into that store."""
    y = acc
    if bias is not None:
        y = L.lowerings[aten.add.Tensor](y, L.to_dtype(bias, torch.float32))
    return L.to_dtype(y, out_dtype)


@L.register_lowering(ops.quantized_block_linear, type_promotion_kind=None)
def lower_quantized_block_linear(xq, xs, wq, ws, bias, out_dtype: torch.dtype, tickets=None):
    """xq [..., K] fp8, xs [..., K/128] fp32 (``rms_norm_quant``'s), wq [N, K] fp8, ws, bias [N] or
    None -> [..., N] ``out_dtype``: ``lower_block_linear`` without the quantization. cuBLAS (the
    column-major scales read in place), a template with the fused epilogue, else the op. With
    tickets (the norm fusion's split-K linears) always the op: its split-K kernel uses them; at
    PDL sizes (M <= 8) a tiles config is the op too (``_op_overlaps_producer``)."""
    args = (xq, xs, wq, ws, bias, out_dtype, tickets)
    config = _active_config()
    device = xq.get_device()

    def fallback():
        return L.fallback_handler(ops.quantized_block_linear, add_to_fallback_set=False)(*args)

    if config is None or config.gemm_lowering != "template" or not _fp8_gpu(device) or tickets is not None:
        return fallback()
    *lead, k_expr = xq.get_size()
    n, k = _static_int(wq.get_size()[0]), _static_int(k_expr)
    lead_ints = [_static_int(d) for d in lead]
    if not lead or n is None or k is None or any(d is None for d in lead_ints) or k % QBLOCK:
        return fallback()
    m = math.prod(lead_ints)
    if m == 0 or n == 0:
        return fallback()
    try:
        from .kernels import cublas
        from .kernels.block_gemm import static_choice

        picked = static_choice(device, m, n, k, out_dtype, None if bias is None else bias.get_dtype())
        if _op_overlaps_producer(device, m, picked):
            return fallback()
        if picked.kind == "cublas" and m % cublas.ROW_ALIGN:
            return fallback()  # the op pads the rows for cuBLAS (kernels/cublas.py: block_gemm)
        if picked.kind == "cublas" and all(_dense(t) for t in (wq, ws, bias) if t is not None):
            return _scaled_mm(*_as_rows(xq, xs, m, k), wq, ws, bias, out_dtype, lead_ints, n)
        acc = _gemm(lambda: (xq, xs), wq, ws, lead_ints, n, k, picked)
    except Exception as exc:  # never fail a compile over a lowering: the op's kernels are as correct
        _warn_template_failure(f"quantized_block_linear: {type(exc).__name__}: {exc}")
        acc = None
    if acc is None:
        return fallback()
    return _epilogue(acc, bias, out_dtype)
