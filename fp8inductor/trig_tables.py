"""Compute a shared sin/cos table once per forward instead of inside every kernel that reads it.

A rotary position embedding (RoPE) computes its tables once per forward, in the model:

    freqs = inv_freq[:, None] @ position_ids[None, :]     # [B, S, D/2] fp32
    emb = cat(freqs, freqs)                                # [B, S, D]
    cos = (emb.cos() * scaling).to(bf16)                   # the same for sin
    # every layer: q * cos[:, None] + rotate_half(q) * sin[:, None], and the same for k

Inductor inlines a pointwise producer into each consumer unless it judges the producer expensive
(``should_realize_on_reuse``: on the GPU a large op count or many reads; ``cos``/``sin`` are not
counted as heavy). So each layer's RoPE kernel evaluates ``cos`` and ``sin`` again for every element
of q and k: [S, H, D] of them, H times the table's size (32 for q at Llama-3-8B, and 32 again for
k where ``repeat_kv`` expands it). Measured on the H100 (2026-12-06, docs/benchmarks.md, Llama-3-8B
prefill 1 x 2048, stock ``torch.compile`` and ``fp8block`` alike): the three RoPE/layout kernels of
a layer take ~69 us, where their bytes would take ~25 us at the copy rate.

This pass marks such a table to be computed into a buffer once: it ends each chain
``cos|sin -> (pointwise ops of the same shape, one reader each)`` with ``fp8inductor::realize``,
whose lowering realizes its input (``lowering.lower_realize``) and whose eager kernel copies it.
The values are the same bits: the table is computed by the same expression, in the same dtype, once.

Left alone: chains whose readers are not larger than the table itself in total (nothing is
recomputed more than once per element), which covers a lone ``torch.sin`` activation, and chains
whose readers together take fewer than ``MIN_RECOMPUTED`` elements where the shapes are static
(decode: one token's table; a buffer of its own would cost a launch and save nothing measurable).
Where a shape is symbolic, a table with two readers or more counts as large.
"""

from __future__ import annotations

import logging
import operator

import torch
from torch import fx

aten = torch.ops.aten
prims = torch.ops.prims
log = logging.getLogger("fp8inductor")

_TRIG = (aten.cos.default, aten.sin.default)
# Pointwise ops that keep the table's shape (one output element per input element): the chain's tail.
_SAME_SHAPE = {
    aten.mul.Tensor,
    aten.mul.Scalar,
    aten.div.Tensor,
    aten.div.Scalar,
    aten.add.Tensor,
    aten.neg.default,
    aten._to_copy.default,
    aten.clone.default,
    prims.convert_element_type.default,
}
# Ops through which a reader sees the table unchanged in elements (its readers count instead).
_VIEWS = {
    aten.view.default,
    aten.reshape.default,
    aten._unsafe_view.default,
    aten.unsqueeze.default,
    aten.squeeze.dim,
    aten.expand.default,
    aten.slice.Tensor,
    aten.select.int,
    aten.permute.default,
    aten.transpose.int,
    aten.alias.default,
    operator.getitem,
}
MIN_RECOMPUTED = 1 << 20  # elements; a static total below this is left inlined (decode)


def _numel(node: fx.Node) -> int | None:
    """The static element count of ``node``'s value; None for a symbolic one or a non-tensor."""
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        return None
    n = val.numel()
    return n if isinstance(n, int) else None


def _tail(node: fx.Node) -> fx.Node:
    """The last node of ``node``'s chain of same-shape pointwise ops with one reader each."""
    while len(node.users) == 1:
        (user,) = node.users
        if user.op != "call_function" or user.target not in _SAME_SHAPE or _numel(user) != _numel(node):
            break
        node = user
    return node


def _readers(node: fx.Node, depth: int = 0) -> list[fx.Node]:
    """The nodes that compute from ``node``'s elements, looking through views of it."""
    found = []
    for user in node.users:
        if user.op == "call_function" and user.target in _VIEWS and depth < 8:
            found += _readers(user, depth + 1)
        else:
            found.append(user)
    return found


def _worth_realizing(table: fx.Node) -> bool:
    readers = _readers(table)
    size, counts = _numel(table), [_numel(r) for r in readers]
    if size is None or None in counts:  # symbolic (dynamic shapes): may be prefill-sized; shared?
        return len(readers) > 1
    recomputed = sum(counts)
    return recomputed > size and recomputed >= MIN_RECOMPUTED


def realize_trig_tables(graph: fx.Graph) -> int:
    """Insert ``fp8inductor::realize`` after each shared sin/cos table; returns how many."""
    realize = torch.ops.fp8inductor.realize.default
    done: set[fx.Node] = set()
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in _TRIG:
            continue
        table = _tail(node)
        if table in done or not isinstance(table.meta.get("val"), torch.Tensor) or not _worth_realizing(table):
            continue
        with graph.inserting_after(table):
            once = graph.call_function(realize, (table,))
        once.meta.update(table.meta)
        table.replace_all_uses_with(once, delete_user_cb=lambda user, once=once: user is not once)
        done.add(table)
    if done:
        torch._dynamo.utils.counters["fp8inductor"]["trig_tables_realized"] += len(done)
        log.info("fp8block: %d sin/cos table(s) computed once instead of in every reader", len(done))
    return len(done)
