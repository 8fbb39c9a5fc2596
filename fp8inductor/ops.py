"""The ``torch.ops.fp8inductor`` custom ops: the only place ops are registered.

| op | inputs -> outputs |
|---|---|
| ``quantize_activation(x, group_size, scale_fmt)`` | x [..., K] -> (q [..., K] fp8, s [..., ceil(K/g)] fp32) |
| ``quantize_weight(w, block_n, block_k, scale_fmt)`` | w [N, K] -> (q [N, K] fp8, s [ceil(N/bn), ceil(K/bk)] fp32) |
| ``block_linear(x, wq, ws, bias, group_size, scale_fmt)`` | x [..., K] -> y [..., N] in x.dtype |
| ``block_gemm(xq, xs, wq, ws, out_dtype)`` | quantized xq [..., K], xs -> y [..., N] (Triton) |
| ``rms_norm_quant(x, residual, weight, eps, scale_fmt, tickets)`` | x [..., K] -> (x + residual, q [..., K] fp8, s [..., K/128], t [tickets] int32 zeros) |
| ``quantized_block_linear(xq, xs, wq, ws, bias, out_dtype, tickets)`` | quantized xq [..., K], xs -> y [..., N] + bias |
| ``realize(x)`` | x -> the same values, computed once into a buffer (``trig_tables``) |
| ``gqa_decode_attention(q, k, v, mask, scale)`` | q [B, H_q, 1, D], k/v [B, H_kv, S, D] -> [B, H_q, 1, D] (``gqa_heads``) |

Each op has a fake (meta) implementation, a CPU implementation (``fp8inductor.reference``) and a
CUDA implementation (the Triton kernels in ``fp8inductor.kernels``; on GPUs without FP8 support,
compute capability < 8.9, the reference runs on the GPU after one warning). All are functional and
accept any input strides (pass-inserted ops get no stride constraints from Inductor).

The ops are opaque to Inductor (``custom_op``, not ``triton_op``): freezing's constant folding must
be able to evaluate ``quantize_weight`` on the frozen weights at compile time, and the CPU CI has no
Triton driver for Inductor's own Triton codegen.
"""

from __future__ import annotations

import functools
import logging
import math

import torch

from . import reference as ref
from . import weight_memo

log = logging.getLogger("fp8inductor")

_NS = "fp8inductor"
FP8_MIN_CAPABILITY = (8, 9)


# ---------------------------------------------------------------------------------------------
# Validation shared by every implementation (fake included, so bad shapes fail at trace time).
# ---------------------------------------------------------------------------------------------


def _check_float(t: torch.Tensor, what: str) -> None:
    if t.dtype not in ref.FLOAT_DTYPES:
        raise TypeError(f"fp8inductor: {what} must be float32, float16 or bfloat16, got {t.dtype}")


def _check_block_linear_args(
    x: torch.Tensor, wq: torch.Tensor, ws: torch.Tensor, bias: torch.Tensor | None, group_size: int, scale_fmt: str
) -> None:
    _check_float(x, "x")
    ref._check_scale_fmt(scale_fmt)
    if x.dim() < 1:
        raise ValueError("fp8inductor.block_linear: x must have at least one dimension [..., K]")
    ref.check_block_size(group_size, "fp8inductor.block_linear: group_size")
    ref.check_weight_scale(wq, ws, (128, group_size), name="block_linear weight")
    if x.shape[-1] != wq.shape[1]:
        raise ValueError(
            f"fp8inductor.block_linear: x has K={x.shape[-1]} but the weight is [N, K] = {tuple(wq.shape)}"
        )
    if bias is not None:
        _check_float(bias, "bias")
        if tuple(bias.shape) != (wq.shape[0],):
            raise ValueError(f"fp8inductor.block_linear: bias must be [N] = [{wq.shape[0]}], got {tuple(bias.shape)}")
    ref.check_one_device("fp8inductor.block_linear", x, wq, ws, bias)


# ---------------------------------------------------------------------------------------------
# Device dispatch helpers.
# ---------------------------------------------------------------------------------------------


@functools.cache
def _cuda_has_fp8(index: int) -> bool:
    return torch.cuda.get_device_capability(index) >= FP8_MIN_CAPABILITY


@functools.cache
def _warn_no_fp8(index: int) -> None:
    cap = torch.cuda.get_device_capability(index)
    log.warning(
        "fp8inductor: GPU %d has compute capability %d.%d < 8.9 (no FP8 tensor cores); "
        "running the reference path on it (correct, slow)",
        index,
        *cap,
    )


# The run-time ops' CUDA kernels are registered on the dispatcher directly (a Library fragment) rather
# than through ``custom_op(...).register_kernel``, whose wrapper adds Python layers to every call (the
# aliasing check, a Dynamo-disable frame): host time that a prefill graph of FallbackKernels pays per
# linear (docs/benchmarks.md, "Reading the GEMM results" and "Prefill"). custom_op still defines the schema, the fake and the CPU
# implementation; the dispatcher prefers a CUDA-key kernel to custom_op's default for CUDA tensors.
_CUDA_LIB = torch.library.Library(_NS, "FRAGMENT")


def _on_its_device(fn):
    """``fn(first, ...)`` run with ``first``'s CUDA device current. Triton launches on the current device;
    ATen's CUDA kernels get a device guard from their generated wrappers, but a Python kernel gets none,
    so a layer on cuda:1 with cuda:0 current (``device_map="auto"``) launched its kernels on the wrong GPU
    (pointer errors or wrong reads). The guard is entered only when the device differs: the common
    call pays one device query, not a context manager (as PyTorch's own Python bmm override does)."""

    @functools.wraps(fn)
    def guarded(first: torch.Tensor, *args, **kwargs):
        index = first.device.index
        if index is None or index == torch.cuda.current_device():
            return fn(first, *args, **kwargs)
        with torch.cuda.device(index):
            return fn(first, *args, **kwargs)

    return guarded


def _cuda_kernel(op_name: str):
    """Decorator: register ``fn`` (run on its first tensor's device) as the CUDA kernel of
    ``fp8inductor::op_name``."""

    def register(fn):
        _CUDA_LIB.impl(op_name, _on_its_device(fn), "CUDA")
        return fn

    return register


def _use_triton(t: torch.Tensor) -> bool:
    index = t.device.index if t.device.index is not None else torch.cuda.current_device()
    if _cuda_has_fp8(index):
        return True
    _warn_no_fp8(index)
    return False


# ---------------------------------------------------------------------------------------------
# quantize_activation
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op(f"{_NS}::quantize_activation", mutates_args=())
def quantize_activation_op(
    x: torch.Tensor, group_size: int = 128, scale_fmt: str = "float"
) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., K] -> (q [..., K] fp8 contiguous, s [..., ceil(K/group_size)] fp32 contiguous)."""
    _check_float(x, "x")
    return ref.quantize_activation_ref(x, group_size, scale_fmt)


@_cuda_kernel("quantize_activation")
def _(x: torch.Tensor, group_size: int = 128, scale_fmt: str = "float") -> tuple[torch.Tensor, torch.Tensor]:
    _check_float(x, "x")
    if group_size != 128 or not _use_triton(x) or x.dim() == 0:
        return ref.quantize_activation_ref(x, group_size, scale_fmt)
    from .kernels.act_quant import act_quant_1x128

    *lead, k = x.shape
    q, s = act_quant_1x128(x.reshape(math.prod(lead), k), scale_fmt)
    return q.reshape(*lead, k), s.reshape(*lead, s.shape[-1])


@quantize_activation_op.register_fake
def _(x: torch.Tensor, group_size: int = 128, scale_fmt: str = "float") -> tuple[torch.Tensor, torch.Tensor]:
    _check_float(x, "x")
    ref.check_block_size(group_size, "fp8inductor.quantize_activation: group_size")
    ref._check_scale_fmt(scale_fmt)
    if x.dim() < 1:
        raise ValueError("fp8inductor.quantize_activation: x must have at least one dimension [..., K]")
    *lead, k = x.shape
    q = x.new_empty(x.shape, dtype=ref.FP8_DTYPE)
    s = x.new_empty((*lead, ref.ceil_div(k, group_size)), dtype=torch.float32)
    return q, s


# ---------------------------------------------------------------------------------------------
# quantize_weight
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op(f"{_NS}::quantize_weight", mutates_args=())
def quantize_weight_op(
    w: torch.Tensor, block_n: int = 128, block_k: int = 128, scale_fmt: str = "float"
) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] -> (q [N, K] fp8 contiguous, s [ceil(N/block_n), ceil(K/block_k)] fp32 contiguous).

    Inside an fp8block compile (freezing's constant folding) the result is shared between graphs
    for the same weight bits (``fp8inductor.weight_memo``); everywhere else it is a fresh tensor.
    """
    return weight_memo.memoized(
        w, block_n, block_k, scale_fmt, lambda: ref.quantize_weight_ref(w, (block_n, block_k), scale_fmt)
    )


@quantize_weight_op.register_kernel("cuda")
@_on_its_device
def _(
    w: torch.Tensor, block_n: int = 128, block_k: int = 128, scale_fmt: str = "float"
) -> tuple[torch.Tensor, torch.Tensor]:
    if (block_n, block_k) != (128, 128) or w.dim() != 2 or not _use_triton(w):
        return weight_memo.memoized(
            w, block_n, block_k, scale_fmt, lambda: ref.quantize_weight_ref(w, (block_n, block_k), scale_fmt)
        )
    _check_float(w, "weight")
    from .kernels.weight_quant import weight_quant_128x128

    return weight_memo.memoized(w, block_n, block_k, scale_fmt, lambda: weight_quant_128x128(w, scale_fmt))


@quantize_weight_op.register_fake
def _(
    w: torch.Tensor, block_n: int = 128, block_k: int = 128, scale_fmt: str = "float"
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_float(w, "weight")
    ref.check_weight_block((block_n, block_k))
    ref._check_scale_fmt(scale_fmt)
    if w.dim() != 2:
        raise ValueError(f"fp8inductor.quantize_weight: weight must be 2-D [N, K], got shape {tuple(w.shape)}")
    n, k = w.shape
    q = w.new_empty((n, k), dtype=ref.FP8_DTYPE)
    s = w.new_empty((ref.ceil_div(n, block_n), ref.ceil_div(k, block_k)), dtype=torch.float32)
    return q, s


# ---------------------------------------------------------------------------------------------
# block_linear: quantize x per 1x128 group, 128x128 block-scaled GEMM, + bias; y in x.dtype.
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op(f"{_NS}::block_linear", mutates_args=())
def block_linear_op(
    x: torch.Tensor,
    wq: torch.Tensor,
    ws: torch.Tensor,
    bias: torch.Tensor | None = None,
    group_size: int = 128,
    scale_fmt: str = "float",
) -> torch.Tensor:
    """x [..., K] (any float dtype/strides), wq [N, K] fp8, ws [ceil(N/128), ceil(K/128)] fp32,
    bias [N] or None -> y [..., N] in x.dtype, contiguous."""
    _check_block_linear_args(x, wq, ws, bias, group_size, scale_fmt)
    return ref.block_fp8_linear_ref(x, wq, ws, bias, group_size, scale_fmt)


@_cuda_kernel("block_linear")
def _(
    x: torch.Tensor,
    wq: torch.Tensor,
    ws: torch.Tensor,
    bias: torch.Tensor | None = None,
    group_size: int = 128,
    scale_fmt: str = "float",
) -> torch.Tensor:
    _check_block_linear_args(x, wq, ws, bias, group_size, scale_fmt)
    if group_size != 128 or not _use_triton(x):  # the kernels quantize x in groups of 128 only
        return ref.block_fp8_linear_ref(x, wq, ws, bias, group_size, scale_fmt)
    from .kernels.block_gemm import fp8_block_linear

    *lead, k = x.shape
    y = fp8_block_linear(x.reshape(math.prod(lead), k), wq, ws, bias, scale_fmt)
    return y.reshape(*lead, wq.shape[0])


@block_linear_op.register_fake
def _(
    x: torch.Tensor,
    wq: torch.Tensor,
    ws: torch.Tensor,
    bias: torch.Tensor | None = None,
    group_size: int = 128,
    scale_fmt: str = "float",
) -> torch.Tensor:
    _check_block_linear_args(x, wq, ws, bias, group_size, scale_fmt)
    return x.new_empty((*x.shape[:-1], wq.shape[0]))


def _block_linear_setup_context(ctx, inputs, output) -> None:
    _x, wq, ws, bias, group_size, _scale_fmt = inputs
    ctx.save_for_backward(wq, ws)
    ctx.group_size = group_size  # the weight blocks are (128, group_size), as in the forward
    ctx.bias_dtype = None if bias is None else bias.dtype


def _block_linear_backward(ctx, grad_y: torch.Tensor):
    """Straight-through gradients: the activation quantization counts as the identity, so
    dx = dy @ dequant(W) (in dy's dtype) and dbias = sum of dy over the rows; the FP8 weight and its
    scales get none (they are constants). Without a formula, backward raised, and a model with FP8
    modules (``quantize_``) compiled with gradients enabled failed to compile: AOTAutograd traces the
    backward of every op whose input requires grad."""
    wq, ws = ctx.saved_tensors
    grad_x = grad_bias = None
    if ctx.needs_input_grad[0]:
        w = ref.dequantize_weight_ref(wq, ws, (128, ctx.group_size), grad_y.dtype)  # [N, K]
        grad_x = grad_y @ w
    if ctx.bias_dtype is not None and ctx.needs_input_grad[3]:
        grad_bias = grad_y.reshape(-1, grad_y.shape[-1]).float().sum(0).to(ctx.bias_dtype)
    return grad_x, None, None, grad_bias, None, None


block_linear_op.register_autograd(_block_linear_backward, setup_context=_block_linear_setup_context)


# ---------------------------------------------------------------------------------------------
# block_gemm: the GEMM alone, on already-quantized activations. Inserted by the Inductor lowering
# (fp8inductor.lowering) as an autotuning choice next to the Triton templates.
# ---------------------------------------------------------------------------------------------


def _check_block_gemm_args(
    xq: torch.Tensor, xs: torch.Tensor, wq: torch.Tensor, ws: torch.Tensor, out_dtype: torch.dtype
) -> None:
    if xq.dtype != ref.FP8_DTYPE or xq.dim() < 1:
        raise TypeError(
            f"fp8inductor.block_gemm: xq must be [..., K] {ref.FP8_DTYPE}, got {xq.dtype} {tuple(xq.shape)}"
        )
    ref.check_weight_scale(wq, ws, (128, 128), name="block_gemm weight")
    *lead, k = xq.shape
    if wq.shape[1] != k:
        raise ValueError(f"fp8inductor.block_gemm: xq is {tuple(xq.shape)} but wq is [N, K] = {tuple(wq.shape)}")
    want = (*lead, ref.ceil_div(k, 128))
    if xs.dtype != torch.float32 or tuple(xs.shape) != want:
        raise ValueError(f"fp8inductor.block_gemm: xs must be float32 {want}, got {xs.dtype} {tuple(xs.shape)}")
    if out_dtype not in ref.FLOAT_DTYPES:
        raise TypeError(f"fp8inductor.block_gemm: out_dtype must be float32, float16 or bfloat16, got {out_dtype}")
    ref.check_one_device("fp8inductor.block_gemm", xq, xs, wq, ws)


@torch.library.custom_op(f"{_NS}::block_gemm", mutates_args=())
def block_gemm_op(
    xq: torch.Tensor, xs: torch.Tensor, wq: torch.Tensor, ws: torch.Tensor, out_dtype: torch.dtype
) -> torch.Tensor:
    """xq [..., K] fp8, xs [..., ceil(K/128)] fp32, wq [N, K] fp8, ws [ceil(N/128), ceil(K/128)] fp32
    -> y [..., N] ``out_dtype``, contiguous (no bias: the lowering adds it in the fused epilogue)."""
    _check_block_gemm_args(xq, xs, wq, ws, out_dtype)
    return _on_2d(ref.block_gemm_ref, xq, xs, wq, ws, None, out_dtype)


@_cuda_kernel("block_gemm")
def _(xq: torch.Tensor, xs: torch.Tensor, wq: torch.Tensor, ws: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    _check_block_gemm_args(xq, xs, wq, ws, out_dtype)
    if not _use_triton(xq):
        return _on_2d(ref.block_gemm_ref, xq, xs, wq, ws, None, out_dtype)
    from .kernels.block_gemm import fp8_block_gemm

    return _on_2d(fp8_block_gemm, xq, xs, wq, ws, None, out_dtype)


@block_gemm_op.register_fake
def _(xq: torch.Tensor, xs: torch.Tensor, wq: torch.Tensor, ws: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    _check_block_gemm_args(xq, xs, wq, ws, out_dtype)
    return xq.new_empty((*xq.shape[:-1], wq.shape[0]), dtype=out_dtype)


# ---------------------------------------------------------------------------------------------
# rms_norm_quant: (residual add +) RMSNorm + activation quantization, one kernel. Inserted by the
# fp8block pass (fp8inductor.norm_fusion) in front of the linears that read a norm's output.
# ---------------------------------------------------------------------------------------------


def _check_tickets_count(tickets: int) -> None:
    if not isinstance(tickets, int) or tickets < 0:
        raise ValueError(f"fp8inductor.rms_norm_quant: tickets must be an int >= 0, got {tickets!r}")


@torch.library.custom_op(f"{_NS}::rms_norm_quant", mutates_args=())
def rms_norm_quant_op(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float,
    scale_fmt: str = "float",
    tickets: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [..., K], residual [..., K] or None, weight [K] (all one float dtype) -> (h [..., K] = x +
    residual, contiguous ([0] without residual), q [..., K] fp8 contiguous, s [..., ceil(K/128)] fp32
    column-major over the flattened rows, t [tickets] int32 zeros). See ``reference.rms_norm_quant_ref``.

    t: the zeroed tile tickets of the split-K GEMM that reads q and s (``quantized_block_linear``'s
    ``tickets``), cleared by the norm kernel itself, so that the GEMM needs no launch to clear them.
    """
    _check_tickets_count(tickets)
    return (*ref.rms_norm_quant_ref(x, residual, weight, eps, scale_fmt), _zero_tickets(x, tickets))


def _zero_tickets(x: torch.Tensor, tickets: int) -> torch.Tensor:
    return torch.zeros((tickets,), dtype=torch.int32, device=x.device)


@_cuda_kernel("rms_norm_quant")
def _(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float,
    scale_fmt: str = "float",
    tickets: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    ref.check_rms_norm_args(x, residual, weight)
    _check_tickets_count(tickets)
    if not _use_triton(x):
        return (*ref.rms_norm_quant_ref(x, residual, weight, eps, scale_fmt), _zero_tickets(x, tickets))
    from .kernels.norm_quant import rms_norm_quant

    t = torch.empty((tickets,), dtype=torch.int32, device=x.device)
    return (*rms_norm_quant(x, residual, weight, eps, scale_fmt, zero=t if tickets else None), t)


@rms_norm_quant_op.register_fake
def _(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float,
    scale_fmt: str = "float",
    tickets: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    ref.check_rms_norm_args(x, residual, weight)
    ref._check_scale_fmt(scale_fmt)
    _check_tickets_count(tickets)
    *lead, k = x.shape
    h = torch.empty_like(x, memory_format=torch.contiguous_format) if residual is not None else x.new_empty(0)
    q = x.new_empty(x.shape, dtype=ref.FP8_DTYPE)
    s = ref.scales_column_major(x.new_empty((*lead, ref.ceil_div(k, 128)), dtype=torch.float32))
    return h, q, s, x.new_empty((tickets,), dtype=torch.int32)


# ---------------------------------------------------------------------------------------------
# quantized_block_linear: block_linear on an activation quantized beforehand (rms_norm_quant's q, s).
# ---------------------------------------------------------------------------------------------


def _check_quantized_linear_args(xq, xs, wq, ws, bias, out_dtype, tickets) -> None:
    _check_block_gemm_args(xq, xs, wq, ws, out_dtype)
    if bias is not None:
        _check_float(bias, "bias")
        if tuple(bias.shape) != (wq.shape[0],):
            raise ValueError(
                f"fp8inductor.quantized_block_linear: bias must be [N] = [{wq.shape[0]}], got {tuple(bias.shape)}"
            )
    ref.check_one_device("fp8inductor.quantized_block_linear", xq, bias)
    if tickets is not None and (
        tickets.dtype != torch.int32 or tickets.dim() != 1 or not tickets.is_contiguous() or tickets.device != xq.device
    ):
        raise ValueError(
            "fp8inductor.quantized_block_linear: tickets must be a contiguous 1-D int32 tensor on xq's device, got "
            f"{tickets.dtype} {tuple(tickets.shape)} on {tickets.device}"
        )


@torch.library.custom_op(f"{_NS}::quantized_block_linear", mutates_args=())
def quantized_block_linear_op(
    xq: torch.Tensor,
    xs: torch.Tensor,
    wq: torch.Tensor,
    ws: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    tickets: torch.Tensor | None = None,
) -> torch.Tensor:
    """xq [..., K] fp8, xs [..., ceil(K/128)] fp32 (any strides), wq [N, K] fp8, ws [ceil(N/128),
    ceil(K/128)] fp32, bias [N] or None -> y [..., N] ``out_dtype``, contiguous: ``block_linear``
    after its quantization.

    tickets: [T] int32, all zero (``rms_norm_quant``'s t), or None. A split-K launch uses it as its
    tile tickets when T covers its tiles, and leaves it all zero again (the last split of each tile
    puts its ticket back); else, and for other kernels, it is not touched. The value is the same
    before and after, hence not declared mutated; it must not be read or written elsewhere while
    this op runs.
    """
    _check_quantized_linear_args(xq, xs, wq, ws, bias, out_dtype, tickets)
    return _on_2d(ref.block_gemm_ref, xq, xs, wq, ws, bias, out_dtype)


@_cuda_kernel("quantized_block_linear")
def _(
    xq: torch.Tensor,
    xs: torch.Tensor,
    wq: torch.Tensor,
    ws: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    tickets: torch.Tensor | None = None,
) -> torch.Tensor:
    _check_quantized_linear_args(xq, xs, wq, ws, bias, out_dtype, tickets)
    if not _use_triton(xq):
        return _on_2d(ref.block_gemm_ref, xq, xs, wq, ws, bias, out_dtype)
    from .kernels.block_gemm import fp8_block_gemm

    return _on_2d(functools.partial(fp8_block_gemm, tickets=tickets), xq, xs, wq, ws, bias, out_dtype)


@quantized_block_linear_op.register_fake
def _(
    xq: torch.Tensor,
    xs: torch.Tensor,
    wq: torch.Tensor,
    ws: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    tickets: torch.Tensor | None = None,
) -> torch.Tensor:
    _check_quantized_linear_args(xq, xs, wq, ws, bias, out_dtype, tickets)
    return xq.new_empty((*xq.shape[:-1], wq.shape[0]), dtype=out_dtype)


def _on_2d(gemm, xq, xs, wq, ws, bias, out_dtype):
    """Run a 2-D ``gemm(xq [M, K], xs [M, kb], wq, ws, bias, out_dtype)`` on xq [..., K]: y [..., N]."""
    *lead, k = xq.shape
    m = math.prod(lead)  # not -1: ambiguous when K = 0
    y = gemm(xq.reshape(m, k), xs.reshape(m, xs.shape[-1]), wq, ws, bias, out_dtype)
    return y.reshape(*lead, wq.shape[0])


# ---------------------------------------------------------------------------------------------
# realize: a value Inductor must compute into a buffer once rather than inline into its readers
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op(f"{_NS}::realize", mutates_args=())
def realize_op(x: torch.Tensor) -> torch.Tensor:
    """x (any shape, dtype, strides) -> a copy with the same values and strides.

    Inductor lowers it to no kernel of its own: it realizes x into a buffer, which its readers then
    load (``lowering.lower_realize``; inserted by ``trig_tables``). Eager (a custom op may not
    return its input) and constant folding run this copy.
    """
    return x.clone()


@realize_op.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


# ---------------------------------------------------------------------------------------------
# gqa_decode_attention: one query position over grouped KV heads (kernels/gqa_decode.py)
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op(f"{_NS}::gqa_decode_attention", mutates_args=())
def gqa_decode_attention_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float | None
) -> torch.Tensor:
    """q [B, H_q, 1, D] bf16/fp16, k/v [B, H_kv, S, D] (H_q % H_kv == 0), mask [B or 1, 1, 1, S] bool
    (True = attend) or additive, or None -> [B, H_q, 1, D] contiguous in q's dtype: SDPA of query head
    h over KV head h // (H_q / H_kv), without copying the KV heads. CPU: the fp32 reference."""
    return _gqa_decode_attention_by_reference(q, k, v, mask, scale)


def _gqa_decode_attention_by_reference(q, k, v, mask, scale):
    from .kernels.gqa_decode import check_gqa_decode_args

    check_gqa_decode_args(q, k, v, mask)
    return ref.gqa_decode_attention_ref(q, k, v, mask, scale).to(q.dtype)


@_cuda_kernel("gqa_decode_attention")
def _(q, k, v, mask, scale):
    from .kernels.gqa_decode import gqa_decode_attention

    if torch.cuda.get_device_capability(q.device) < (8, 0):  # no bf16 tl.dot before Ampere
        return _gqa_decode_attention_by_reference(q, k, v, mask, scale)
    return gqa_decode_attention(q, k, v, mask, scale)


@gqa_decode_attention_op.register_fake
def _(q, k, v, mask, scale):
    return q.new_empty(q.shape)


quantize_activation = torch.ops.fp8inductor.quantize_activation.default
quantize_weight = torch.ops.fp8inductor.quantize_weight.default
block_linear = torch.ops.fp8inductor.block_linear.default
block_gemm = torch.ops.fp8inductor.block_gemm.default
rms_norm_quant = torch.ops.fp8inductor.rms_norm_quant.default
quantized_block_linear = torch.ops.fp8inductor.quantized_block_linear.default
realize = torch.ops.fp8inductor.realize.default
gqa_decode_attention = torch.ops.fp8inductor.gqa_decode_attention.default
