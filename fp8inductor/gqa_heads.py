"""Grouped-query attention at decode without copying the KV cache once per query head.

transformers' SDPA attention with an attention mask (every decode step against a static cache)
expands the keys and values of its ``H_kv`` KV heads to the ``H_q`` query heads first (``repeat_kv``):

    k_rep = k[:, :, None].expand(B, H_kv, n_rep, S, D).reshape(B, H_q, S, D)   # a copy, n_rep times k
    out = sdpa(q, k_rep, v_rep, attn_mask)                                      # q [B, H_q, 1, D]

(without a mask it passes ``enable_gqa=True`` instead, whose kernels read the KV heads as they are;
with one, only the copy gets it to a fused kernel). Query head ``h`` reads KV head ``h // n_rep``, so
the ``n_rep`` query heads of a group can as well be ``n_rep`` query *rows* of one head:

    out = sdpa(q.view(B, H_kv, n_rep, D), k, v, mask_g).view(B, H_q, 1, D)

where ``mask_g`` [B, 1 or H_kv, n_rep, S] gives each row its head's mask row. Every (head, query) row
attends over the same keys with the same mask as before: the same attention, without writing
``n_rep`` copies of the cache (Llama-3-8B, 1024-position cache: 2 x 8 MB per sequence written and
read again per layer and step, where the attention itself reads 2 x 2 MB).

This pass does that on the Inductor graph, for the fused SDPA ops (cuDNN, memory-efficient, flash,
CPU flash) when the query has one position (decode), there is no dropout and no causal flag (a causal
mask depends on the row index, which the fold changes), only the attention output is used (inference:
no log-sum-exp for a backward), and keys and values are ``repeat_kv`` expansions of the same factor.
By default (``gqa_decode_kernel``) such an attention becomes one call of our split-KV kernel
(``fp8inductor::gqa_decode_attention``, ``kernels/gqa_decode.py``) that reads the KV heads as stored;
where the kernel does not take the inputs (another head dim, a per-head mask), the fold above runs
on SDPA's own op instead. Left alone: prefill (more than one query position: the fold would copy the
query and the mask instead), and, for the fold, a batch that is statically 1.

Measured (H100, torch 2.11 + cuDNN's SDPA, 2026-12-07, Llama-3-8B shapes, ``bench_model.py`` decode;
docs/benchmarks.md "Decode: grouped-query attention without the repeat_kv copies"). 8 layers, µs a
step at batch 1 / 8 / 32: unchanged graph 1421 / 2243 / 4697; folded (cuDNN) 1462 / 1575 / 1925;
the kernel 1288 / 1465 / 1831. The copies grow with the batch (0.5 GB a layer at 32). At batch 1
cuDNN runs the folded call (8 heads x 4 rows) in a kernel without a split over the keys, 24 us a
layer, slower than its split-KV kernel on the copies (7.8 + 2.0 us, beside 8.3 us of copies): hence
the fold's batch-1 exception. 32 layers, batch 1: 3998 us a step with the kernel against 4740 without
(bf16 ``torch.compile``: 7214).
"""

from __future__ import annotations

import logging
import operator

import torch
from torch import fx

from .passes import _val

aten = torch.ops.aten
log = logging.getLogger("fp8inductor")

# The fused SDPA ops as the AOT graph holds them; the mask argument's name where the op takes one.
_SDPA_MASK_ARG = {
    aten._scaled_dot_product_cudnn_attention.default: "attn_bias",
    aten._scaled_dot_product_efficient_attention.default: "attn_bias",
    aten._scaled_dot_product_flash_attention_for_cpu.default: "attn_mask",
    aten._scaled_dot_product_flash_attention.default: None,
}
_VIEWS = (aten.view.default, aten._unsafe_view.default, aten.reshape.default)
# Head dims given to the split-KV kernel: 128 is measured (Llama-3-8B), 16-64 have the same tiles with
# less data; 256 compiles for sm_90 (141 KB shared, one program per SM) but is not measured, so such
# models keep the fold.
_KERNEL_HEAD_DIMS = (16, 32, 64, 128)


def _arg(node: fx.Node, name: str):
    """``node``'s argument ``name`` (positional or keyword, else the schema's default) and its position
    among the positional arguments (None where it is keyword-only or not given positionally)."""
    for i, a in enumerate(node.target._schema.arguments):
        if a.name == name:
            if i < len(node.args) and not a.kwarg_only:
                return node.args[i], i
            if name in node.kwargs:
                return node.kwargs[name], None
            return (a.default_value if a.has_default_value() else None), None
    raise KeyError(name)


def _repeat_kv_source(node) -> tuple[fx.Node, int] | None:
    """(kv [B, H_kv, S, D], n_rep) when ``node`` is ``view(clone?(expand(unsqueeze(kv, 2), [B, H_kv,
    n_rep, S, D])), [B, H_kv * n_rep, S, D])``, transformers' ``repeat_kv``; else None."""
    if not isinstance(node, fx.Node) or node.op != "call_function" or node.target not in _VIEWS:
        return None
    inner = node.args[0]
    if isinstance(inner, fx.Node) and inner.target == aten.clone.default:
        inner = inner.args[0]
    if not isinstance(inner, fx.Node) or inner.target != aten.expand.default:
        return None
    unsq = inner.args[0]
    if not isinstance(unsq, fx.Node) or unsq.target != aten.unsqueeze.default or unsq.args[1] != 2:
        return None
    kv, expanded, out = _val(unsq.args[0]), _val(inner), _val(node)
    if not all(isinstance(t, torch.Tensor) for t in (kv, expanded, out)) or kv.dim() != 4 or expanded.dim() != 5:
        return None
    b, h_kv, n_rep, s, d = expanded.shape
    if not isinstance(n_rep, int) or n_rep < 2:
        return None
    if not _same_shape(out.shape, (b, h_kv * n_rep, s, d)) or not _same_shape(kv.shape, (b, h_kv, s, d)):
        return None
    return unsq.args[0], n_rep


def _is(size, n: int) -> bool:
    """``size`` is the static int ``n`` (a symbolic size is not: comparing it would add a guard)."""
    return isinstance(size, int) and size == n


def _same_shape(shape, want) -> bool:
    """Sizes equal where they are known to be (symbolic sizes: provably, without adding a guard)."""
    from torch.fx.experimental.symbolic_shapes import statically_known_true

    return len(shape) == len(want) and all(a is b or statically_known_true(a == b) for a, b in zip(shape, want))


def _viewable(val: torch.Tensor, fake_mode, shape: list) -> bool:
    """``val`` (a fake tensor) can be viewed as ``shape`` without a copy."""
    with fake_mode:
        try:
            val.view(shape)
        except (RuntimeError, ValueError):  # fake tensors raise ValueError
            return False
    return True


class _Emitter:
    """Inserts nodes before ``anchor`` with their fake values (``meta["val"]``) set at once."""

    def __init__(self, graph: fx.Graph, anchor: fx.Node, fake_mode) -> None:
        self.graph, self.anchor, self.fake_mode = graph, anchor, fake_mode

    def __call__(self, target, args: tuple, kwargs: dict | None = None) -> fx.Node:
        kwargs = kwargs or {}
        with self.graph.inserting_before(self.anchor):
            node = self.graph.call_function(target, args, kwargs)

        def val(a):
            return a.meta["val"] if isinstance(a, fx.Node) else a

        with self.fake_mode:
            node.meta["val"] = target(*fx.node.map_aggregate(args, val), **fx.node.map_aggregate(kwargs, val))
        return node


def _folded_mask(emit: _Emitter, mask: fx.Node, h_q: int, h_kv: int, n_rep: int) -> fx.Node | None:
    """The mask for the folded call: [B', 1, n_rep, S] rows from a [B', 1, 1, S] mask (each query row
    of a head group reads the one row), or [B', H_kv, n_rep, S] from a per-head [B', H_q, 1, S] one
    (static B' and S only); None where the mask has another form (the call is then left alone)."""
    val = _val(mask)
    if not isinstance(val, torch.Tensor) or val.dim() != 4 or not _is(val.shape[2], 1):
        return None
    if _is(val.shape[1], 1):
        return emit(aten.cat.default, ([mask] * n_rep, 2))
    if _is(val.shape[1], h_q) and isinstance(val.shape[0], int) and isinstance(val.shape[3], int):
        contiguous = emit(aten.clone.default, (mask,), {"memory_format": torch.contiguous_format})
        return emit(aten.view.default, (contiguous, [val.shape[0], h_kv, n_rep, val.shape[3]]))
    return None


def _decode_kernel_call(emit: _Emitter, node: fx.Node, q, k, v, qv, n_rep: int) -> bool:
    """Replace ``node`` (and its output getitems) by ``gqa_decode_attention(q, k, v, mask, scale)``
    where the kernel takes the inputs; False (graph untouched) where it does not."""
    from . import ops

    d = qv.shape[3]
    if qv.dtype not in (torch.bfloat16, torch.float16) or d not in _KERNEL_HEAD_DIMS or n_rep > 16:
        return False
    if not _is(qv.stride(3), 1):  # the kernel reads rows of D contiguous elements (k, v: checked by the caller)
        return False
    mask_name = _SDPA_MASK_ARG[node.target]
    mask = _arg(node, mask_name)[0] if mask_name else None
    if mask is not None:
        kv = _val(k)
        mask = _kernel_mask(mask, kv.shape[0], kv.shape[2])
        if mask is False:
            return False
    scale = node.kwargs.get("scale")
    out = emit(ops.gqa_decode_attention, (q, k, v, mask, scale))
    _replace_attention(emit.graph, node, out)
    return True


def _replace_attention(graph: fx.Graph, node: fx.Node, out: fx.Node) -> None:
    """Erase the SDPA ``node`` and its output getitems; readers of its output read ``out`` instead."""
    for user in list(node.users):
        user.replace_all_uses_with(out)
        graph.erase_node(user)
    graph.erase_node(node)


def _erase_if_dead(graph: fx.Graph, node) -> None:
    """Erase ``node`` and then its inputs, as long as nothing reads them (a ``repeat_kv`` chain)."""
    todo = [node]
    while todo:
        n = todo.pop()
        if isinstance(n, fx.Node) and n.op == "call_function" and not n.users and not n.is_impure():
            inputs = n.all_input_nodes
            graph.erase_node(n)
            todo += inputs


def _kernel_mask(mask, b, s):
    """The mask as ``gqa_decode_attention`` takes it ([b or 1, 1, 1, s], bool or floating), looking
    through an expand over the heads; False where it has another form (a mask that broadcasts over
    the keys, say)."""
    val = _val(mask)
    expand_over_heads = isinstance(val, torch.Tensor) and val.dim() == 4 and not _is(val.shape[1], 1)
    if isinstance(mask, fx.Node) and mask.target == aten.expand.default and expand_over_heads:
        mask, val = mask.args[0], _val(mask.args[0])
    if not isinstance(val, torch.Tensor) or val.dim() != 4 or not (_is(val.shape[1], 1) and _is(val.shape[2], 1)):
        return False
    if not _same_shape(val.shape[3:], (s,)) or not (_is(val.shape[0], 1) or _same_shape(val.shape[:1], (b,))):
        return False
    if val.dtype != torch.bool and not val.is_floating_point():
        return False
    return mask


def fold_gqa_heads(graph: fx.Graph, decode_kernel: bool = False) -> int:
    """Rewrite each decode-time ``sdpa(q, repeat_kv(k), repeat_kv(v), mask)`` as above; returns how many.

    ``decode_kernel`` (the backend passes ``FP8BlockConfig.gqa_decode_kernel``, on by default): call
    ``fp8inductor::gqa_decode_attention`` (``kernels/gqa_decode.py``, split-KV over the KV heads as
    stored) at every batch, 1 included, where it takes the inputs (bf16/fp16, head dim in
    ``_KERNEL_HEAD_DIMS``, at most 16 query heads per KV head, a mask [B or 1, 1, 1, S]); fold the
    others (batch > 1). Off: fold only."""
    from torch._guards import detect_fake_mode

    done = kernels = 0
    folded_masks: dict[tuple[fx.Node, int], fx.Node] = {}  # one folded mask per (mask, n_rep): layers share it
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in _SDPA_MASK_ARG:
            continue
        (q, q_pos), (k, k_pos), (v, v_pos) = _arg(node, "query"), _arg(node, "key"), _arg(node, "value")
        if None in (q_pos, k_pos, v_pos):
            continue
        k_src, v_src, qv = _repeat_kv_source(k), _repeat_kv_source(v), _val(q)
        if k_src is None or v_src is None or k_src[1] != v_src[1] or not isinstance(qv, torch.Tensor):
            continue
        users = list(node.users)
        if not users or any(u.target is not operator.getitem or (u.args[1] != 0 and u.users) for u in users):
            continue  # another output (log-sum-exp: a backward) is read
        if _arg(node, "dropout_p")[0] or _arg(node, "is_causal")[0]:
            continue
        n_rep = k_src[1]
        if (
            qv.dim() != 4
            or not _is(qv.shape[2], 1)
            or not isinstance(qv.shape[1], int)
            or not isinstance(qv.shape[3], int)
        ):
            continue  # prefill (more than one query position) or a symbolic head count
        kv, vv = _val(k_src[0]), _val(v_src[0])
        if not (_same_shape(kv.shape, vv.shape) and _same_shape(kv.shape[3:], qv.shape[3:])):
            continue  # a value head dim other than the query's (the fused ops allow it): left alone
        if not (_is(kv.stride(3), 1) and _is(vv.stride(3), 1)):
            continue  # the copies made D contiguous; the KV heads as stored must be so too
        emit = _Emitter(graph, node, detect_fake_mode([qv]))
        if decode_kernel and _decode_kernel_call(emit, node, q, k_src[0], v_src[0], qv, n_rep):
            _erase_if_dead(graph, k)
            _erase_if_dead(graph, v)
            done += 1
            kernels += 1
            continue
        if _is(qv.shape[0], 1):
            continue  # batch 1, no kernel: the copies are small, and cuDNN's folded kernel is slower (docstring)
        b, h_q, _, d = qv.shape
        h_kv = h_q // n_rep
        b = b if isinstance(b, int) else -1  # a symbolic batch: the view infers it
        mask_name = _SDPA_MASK_ARG[node.target]
        mask, mask_pos = _arg(node, mask_name) if mask_name else (None, None)
        mask_g = None
        if mask is not None:
            key = (mask, n_rep)
            if key not in folded_masks:  # emitted right after the mask, before every attention that reads it
                anchor = (
                    mask.next if mask.op != "placeholder" else next(n for n in graph.nodes if n.op != "placeholder")
                )
                folded = _folded_mask(_Emitter(graph, anchor, emit.fake_mode), mask, h_q, h_kv, n_rep)
                if folded is None:
                    continue
                folded_masks[key] = folded
            mask_g = folded_masks[key]
        q_c = emit(aten.clone.default, (q,), {"memory_format": torch.contiguous_format})
        q_g = emit(aten.view.default, (q_c, [b, h_kv, n_rep, d]))  # [B, H_kv, n_rep, D]: a head group's rows
        args, kwargs = list(node.args), dict(node.kwargs)
        args[q_pos], args[k_pos], args[v_pos] = q_g, k_src[0], v_src[0]  # k, v [B, H_kv, S, D]
        if mask_g is not None:
            if mask_pos is None:
                kwargs[mask_name] = mask_g
            else:
                args[mask_pos] = mask_g
        sdpa = emit(node.target, tuple(args), kwargs)
        attn = emit(operator.getitem, (sdpa, 0))  # [B, H_kv, n_rep, D]
        if not _viewable(attn.meta["val"], emit.fake_mode, [b, h_q, 1, d]):  # e.g. the memory-efficient op's
            attn = emit(aten.clone.default, (attn,), {"memory_format": torch.contiguous_format})  # [B, S, H, D] strides
        out = emit(aten.view.default, (attn, [b, h_q, 1, d]))  # [B, H_q, 1, D]
        _replace_attention(graph, node, out)
        _erase_if_dead(graph, k)
        _erase_if_dead(graph, v)
        done += 1
    if done:
        torch._dynamo.utils.counters["fp8inductor"]["gqa_heads_folded"] += done
        if kernels:
            torch._dynamo.utils.counters["fp8inductor"]["gqa_decode_kernels"] += kernels
        log.info(
            "fp8block: %d grouped-query attention(s) read the KV heads as they are (no repeat_kv copy), %d of them"
            " through the split-KV decode kernel",
            done,
            kernels,
        )
    return done
