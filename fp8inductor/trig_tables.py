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
Values: the table is stored in its own dtype (bf16 for RoPE), rounded as eager rounds it, where the
inlined readers kept it in fp32 (Inductor skips intermediate roundings), so results move by bf16
roundings and the realized ones are the nearer to eager (tests/test_trig_tables.py).

Left alone: tables that no reader broadcasts (readers of the table's own size, as a ``torch.sin``
activation has: a buffer would add a write and a read of the table, where inlined readers only read
its input), and, where the shapes are static, tables whose readers together take fewer than
``MIN_RECOMPUTED`` elements (decode: one token's table; a buffer of its own would cost a launch and
save nothing measurable). Where a shape is symbolic, a reader whose element count is the table's
times a number > 1 or a product of sizes counts as a broadcast, and the readers as many.
"""

from __future__ import annotations

import logging
import operator

import sympy
import torch
from torch import fx

from .passes import _val

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
    aten.split.Tensor,  # these three give a list, whose getitems read the table
    aten.split_with_sizes.default,
    aten.unbind.int,
    operator.getitem,
}
MIN_RECOMPUTED = 1 << 20  # elements; a static total below this is left inlined (decode)


def _numel_expr(node: fx.Node):
    """``node``'s element count: an int, a sympy expression where symbolic, None for a non-tensor."""
    val = _val(node)
    if val is None:
        return None
    n = val.numel()
    return n if isinstance(n, int) else n.node.expr


def _tail(node: fx.Node) -> fx.Node:
    """The last node of ``node``'s chain of same-shape pointwise ops with one reader each."""
    while len(node.users) == 1:
        (user,) = node.users
        size = _numel_expr(node)
        if user.op != "call_function" or user.target not in _SAME_SHAPE or size is None or _numel_expr(user) != size:
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
    """A reader computes over more elements than the table has (it broadcasts the table: each table
    element is evaluated again per broadcast copy), and the readers' elements are many (static) or
    may be (symbolic). Readers of the table's own size gain nothing: a buffer of the table adds a
    write and a read of it, where the inlined readers only read the table's input."""
    readers = _readers(table)
    size, counts = _numel_expr(table), [_numel_expr(r) for r in readers]
    if size is None or not counts or None in counts:
        return False
    if isinstance(size, int) and all(isinstance(c, int) for c in counts):
        return max(counts) > size and sum(counts) >= MIN_RECOMPUTED
    # symbolic (dynamic shapes): a reader whose element count is the table's times a factor that is
    # a number > 1 or a product of sizes (the RoPE readers: B x H x S x D of an S x D table; may be
    # prefill-sized). A reader of fewer elements (a slice: a factor 1/S) or as many does not count.
    return any(_broadcast_factor(sympy.simplify(sympy.sympify(c) / size)) for c in counts)


def _broadcast_factor(ratio) -> bool:
    """``ratio`` (a reader's elements / the table's) is a number > 1, or grows with sizes (size
    symbols in its numerator only: ``s0 / 2`` for a reader of half the table's width over s0 heads)."""
    if ratio.is_number:
        return bool(ratio > 1)
    return sympy.fraction(ratio)[1].is_number


def realize_trig_tables(graph: fx.Graph) -> int:
    """Insert ``fp8inductor::realize`` after each shared sin/cos table; returns how many."""
    realize = torch.ops.fp8inductor.realize.default
    done: set[fx.Node] = set()
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in _TRIG:
            continue
        table = _tail(node)
        if table in done or not _worth_realizing(table):  # (no tensor value: size None, not worth it)
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
