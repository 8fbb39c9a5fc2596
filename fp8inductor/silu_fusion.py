"""Fuse SiLU(gate) * up with the quantization of the product for the linear that reads it.

Runs in the fp8block pass after the linears are rewritten (and after ``norm_fusion``). Where every
reader of ``silu(gate) * up`` (a Llama-style MLP's activation) is a ``block_linear`` (down_proj),
the graph

    y = mul(silu(gate), up)                  # silu as aten.silu or its decomposition (below)
    out = block_linear(y, wq, ws, bias)

becomes

    q, s = silu_mul_quant(gate, up, fmt)     # one kernel: SiLU * up, its 1x128 quantization
    out = quantized_block_linear(q, s, wq, ws, bias, y.dtype)

Without it, Inductor fuses the product into the IR quantization (``quant_ir``): one persistent
reduction kernel, 64.6 us per layer at Llama-3-8B prefill 1 x 2048 on the H100 where bf16's SiLU *
up alone takes 53.5 (docs/benchmarks.md, 2026-12-05). ``kernels/silu_quant.py`` tiles the work so
it streams at the copy rate (benchmarks/lab/silu_quant_lab.py measured both).

SiLU reaches the pass decomposed, as transformers' ``ACT2FN["silu"]`` traces:

    c = convert_element_type(gate, float32)  # absent for a float32 gate
    a = div(c, add(exp(neg(c)), 1))
    a = convert_element_type(a, gate.dtype)  # absent for a float32 gate
    y = mul(a, up)                           # either operand order

Numerics: the op keeps SiLU * up in fp32, as Inductor's fused chain (and the IR quantization) does;
eager rounds SiLU and the product to bf16 (docs/numerics.md).

Left alone: a product with another reader; gate or up of another dtype or shape; a linear that
runs split-K at its static M (decode batch sizes: its tile tickets are cleared by the quantization
kernel it has; the IR path keeps that).
"""

from __future__ import annotations

import operator

import torch
from torch import fx

from .norm_fusion import _erase_dead, _linear_args, _linear_readers, _splitk_tickets, _val

aten = torch.ops.aten
prims = torch.ops.prims
fp8_ops = torch.ops.fp8inductor

GROUP = 128


def _call(node, target) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target is target


def _convert_source(node, dtype: torch.dtype):
    """x where node is ``convert_element_type(x, dtype)``, else None."""
    if _call(node, prims.convert_element_type.default) and node.args[1] == dtype and not node.kwargs:
        return node.args[0]
    return None


def _silu_input(a: fx.Node, dtype: torch.dtype) -> fx.Node | None:
    """gate where a is SiLU(gate) in ``dtype`` (``aten.silu`` or its decomposition), else None."""
    if _call(a, aten.silu.default) and not a.kwargs:
        return a.args[0]
    if dtype != torch.float32:
        a = _convert_source(a, dtype)
    if not _call(a, aten.div.Tensor) or a.kwargs or len(a.args) != 2:
        return None
    c, denom = a.args
    if not _call(denom, aten.add.Tensor) or denom.kwargs or denom.args[1] != 1:
        return None
    e = denom.args[0]
    if not _call(e, aten.exp.default) or not _call(e.args[0], aten.neg.default) or e.args[0].args[0] is not c:
        return None
    gate = c if dtype == torch.float32 else _convert_source(c, torch.float32)
    gate_val = _val(gate)
    if gate_val is None or gate_val.dtype != dtype:
        return None
    return gate


def _match_silu_mul(y: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    """(gate, up) where y = SiLU(gate) * up with gate, up and y of one float dtype and shape."""
    if not _call(y, aten.mul.Tensor) or y.kwargs or len(y.args) != 2:
        return None
    y_val = _val(y)
    if y_val is None or y_val.dtype not in (torch.bfloat16, torch.float16, torch.float32) or y_val.dim() < 1:
        return None
    for a, up in (y.args, y.args[::-1]):
        gate = _silu_input(a, y_val.dtype) if isinstance(a, fx.Node) else None
        if gate is None or not isinstance(up, fx.Node):
            continue
        vals = (_val(gate), _val(up))
        if all(v is not None and v.dtype == y_val.dtype and tuple(v.shape) == tuple(y_val.shape) for v in vals):
            return gate, up
    return None


def fuse_silu_mul(rewriter) -> int:
    """Rewrite every fusable SiLU(gate) * up -> FP8 linear in ``rewriter.graph``; returns how many."""
    graph: fx.Graph = rewriter.graph
    fused = 0
    for y in list(graph.nodes):
        if not _call(y, aten.mul.Tensor):
            continue
        found = _linear_readers(y)
        if found is None:
            continue
        readers, aliases = found
        reader_args = [_linear_args(u) for u in readers]
        scale_fmt = reader_args[0][5]
        if any(args[0] not in (y, *aliases) or args[4] != GROUP or args[5] != scale_fmt for args in reader_args):
            continue
        if any(_splitk_tickets(u) for u in readers):
            continue
        operands = _match_silu_mul(y)
        if operands is None:
            continue
        with graph.inserting_after(y):
            sq = rewriter._call(fp8_ops.silu_mul_quant.default, (*operands, scale_fmt))
        with graph.inserting_after(sq):
            xs = rewriter._call(operator.getitem, (sq, 1), sq.meta["val"][1])
        with graph.inserting_after(sq):
            xq = rewriter._call(operator.getitem, (sq, 0), sq.meta["val"][0])
        for linear in readers:
            _, wq, ws, bias, _, _ = _linear_args(linear)
            args = (xq, xs, wq, ws, bias, _val(y).dtype, None)
            with graph.inserting_before(linear):
                out = rewriter._call(fp8_ops.quantized_block_linear.default, args)
            out.meta.update({k: v for k, v in linear.meta.items() if k not in ("val", "tensor_meta")})
            linear.replace_all_uses_with(out)
            graph.erase_node(linear)
        for alias in aliases:
            _erase_dead(graph, alias, stop=y)
        _erase_dead(graph, y, stop=None)
        fused += 1
    if fused:
        torch._dynamo.utils.counters["fp8inductor"]["silu_mul_fused"] += fused
    return fused
