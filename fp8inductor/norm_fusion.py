"""Fuse an RMSNorm (and the residual add in front of it) with the quantization of its output.

Runs in the fp8block pass after the linears are rewritten. Where every reader of an RMSNorm's
output (``patterns/rms_norm.py``) is a ``block_linear`` (after sibling fusion: the q/k/v GEMM after
``input_layernorm``, the gate/up GEMM after ``post_attention_layernorm``), the graph

    h = add(a, b)                                     # the residual add, when there is one
    n = <RMSNorm of h with weight w, eps>
    y_i = block_linear(n, wq_i, ws_i, bias_i)

becomes

    h', xq, xs = rms_norm_quant(a, b, w, eps)         # one kernel: h' = a + b, n, its quantization
    y_i = quantized_block_linear(xq, xs, wq_i, ws_i, bias_i, n.dtype)

and h's other readers (the next residual add) read h'. Without a residual add in front (the first
layer's norm reads the embedding) it is ``rms_norm_quant(h, None, w, eps)``. A linear may read n
through an ``aten.alias`` of it: the final norm in front of an FP8 ``lm_head``, whose
``hidden_states[:, slice(-0, None), :]`` (``logits_to_keep=0``) traces to one.

Where a linear runs split-K at its static M (decode batch sizes: the q/k/v GEMM), its GEMM needs
zeroed tile tickets, which the op's activation quantization used to clear. Here the norm kernel
clears them: ``h', xq, xs, t = rms_norm_quant(a, b, w, eps, fmt, T)`` with T the tickets the
launch needs (``block_gemm.splitk_tickets``), and ``quantized_block_linear(..., tickets=t)``. The
norm kernel is then launched with PDL at small M, as the quantization was (kernels/pdl.py), so the
GEMM still launches early and prefetches its weights. At a symbolic M the op clears its own
tickets (a memset) when its run-time choice is split-K.

Inductor otherwise runs the norm in two kernels (it cannot put the row's statistics and the
128-groups' amax in one): at Llama-3-8B prefill 1 x 2048 on the H100, ~30 us per norm against
bf16's ~24 (docs/benchmarks.md, 2026-11-25).

Left alone:

* a norm whose output has another reader (returned, a bf16 matmul, a slice for the last token);
* a norm whose eps is not a constant: ``torch.compile(dynamic=True)`` makes it a graph input;
* a norm over more than ``NORM_QUANT_MAX_K`` (32768) features: the kernel holds a row in registers;
* the residual add, where one operand is the output of a linear whose GEMM lowers to a Triton
  template (mid-size static M): Inductor fuses the add into that GEMM's store, which saves more
  than fusing it here would. The norm is still fused, reading h.
"""

from __future__ import annotations

import operator

import torch
from torch import fx

from .kernels.config import NORM_QUANT_MAX_K
from .passes import _val
from .patterns import RMS_NORM_PATTERNS

aten = torch.ops.aten
fp8_ops = torch.ops.fp8inductor

_VIEWS = (aten.view.default, aten.reshape.default, aten._unsafe_view.default)
_LINEARS = (fp8_ops.block_linear.default, fp8_ops.quantized_block_linear.default)
GROUP = 128


def _live_users(node: fx.Node) -> list[fx.Node]:
    """node's users, less the dead views the joint graph keeps (a view nobody reads)."""
    return [u for u in node.users if not (u.op == "call_function" and u.target in _VIEWS and not u.users)]


def _linear_readers(n: fx.Node) -> tuple[list[fx.Node], list[fx.Node]] | None:
    """(the ``block_linear`` nodes reading n, the ``aten.alias`` nodes between), or None when anything
    else reads n. An alias is n itself under another name: transformers' ``hidden_states[:,
    slice(-0, None), :]`` in front of ``lm_head`` (``logits_to_keep=0``) traces to one, so the final
    norm reaches an FP8 ``lm_head`` through it."""
    readers, aliases = [], []
    for u in _live_users(n):
        if u.op == "call_function" and u.target is aten.alias.default:
            aliases.append(u)
            readers.extend(_live_users(u))
        else:
            readers.append(u)
    if not readers or any(u.op != "call_function" or u.target is not fp8_ops.block_linear.default for u in readers):
        return None
    return readers, aliases


def _linear_args(linear: fx.Node) -> tuple:
    """(x, wq, ws, bias, group_size, scale_fmt) of a ``block_linear`` node, defaults filled in (the
    module path, ``quantize_``, leaves them out)."""
    schema = fp8_ops.block_linear.default._schema
    values = [a.default_value if a.has_default_value() else None for a in schema.arguments]
    values[: len(linear.args)] = linear.args
    for i, arg in enumerate(schema.arguments):
        if arg.name in linear.kwargs:
            values[i] = linear.kwargs[arg.name]
    return tuple(values)


def _static_rows(t: torch.Tensor) -> int | None:
    rows = 1
    for d in t.shape[:-1]:
        if not isinstance(d, int):
            return None
        rows *= d
    return rows


def _static_gemm(linear: fx.Node) -> tuple | None:
    """(device, M, N, K, out_dtype, bias_dtype) of a ``block_linear`` / ``quantized_block_linear``
    node at its static M, or None for a symbolic M, an empty one or a CPU graph."""
    if linear.target is fp8_ops.block_linear.default:
        x_node, wq_node, _, bias_node, _, _ = _linear_args(linear)
        out_dtype = None
    else:
        x_node, _, wq_node, _, bias_node, out_dtype = linear.args[:6]
    x, wq, bias = _val(x_node), _val(wq_node), _val(bias_node)
    if x is None or wq is None or x.device.type != "cuda":
        return None
    m = _static_rows(x)
    if m is None or m == 0:
        return None
    return x.device, m, int(wq.shape[0]), int(wq.shape[1]), out_dtype or x.dtype, None if bias is None else bias.dtype


def _gemm_kind(rewriter, linear: fx.Node) -> str | None:
    """The kind of GEMM config a linear node runs with at its static M (``static_choice``:
    "cublas", "tma", "tiles", "splitk"), or None for a symbolic M or a CPU graph."""
    gemm = _static_gemm(linear)
    if gemm is None:
        return None
    from .kernels.block_gemm import static_choice

    return static_choice(*gemm).kind


def _splitk_tickets(linear: fx.Node) -> int:
    """The tile tickets a linear node's split-K launch needs at its static M (0: not split-K, or M
    not static: the op then clears its own)."""
    gemm = _static_gemm(linear)
    if gemm is None:
        return 0
    from .kernels.block_gemm import splitk_tickets

    return splitk_tickets(*gemm)


def _producer_linear(node: fx.Node) -> fx.Node | None:
    """The FP8 linear whose output ``node`` is, through views; else None."""
    while isinstance(node, fx.Node) and node.op == "call_function" and node.target in _VIEWS:
        node = node.args[0]
    if isinstance(node, fx.Node) and node.op == "call_function" and node.target in _LINEARS:
        return node
    return None


def _match_norm(rewriter, n: fx.Node) -> dict | None:
    """The keyword args of an RMSNorm pattern that produces n, checked: h [..., K] float of n's dtype,
    a frozen [K] weight of that dtype, mean over the last dim, a float eps."""
    for pattern in RMS_NORM_PATTERNS:
        match = pattern.match(n)
        if not match:
            continue
        kw = match.kwargs
        h, w = kw["h"], kw["weight"]
        h_val, w_val, n_val = _val(h), _val(w), _val(n)
        if h_val is None or w_val is None or n_val is None or h_val.dim() < 1:
            continue
        if not isinstance(w, fx.Node) or not rewriter._is_frozen_weight(w):
            continue
        if kw.get("out_dtype", h_val.dtype) != h_val.dtype or n_val.dtype != h_val.dtype:
            continue
        if w_val.dtype != h_val.dtype or tuple(w_val.shape) != (h_val.shape[-1],):
            continue
        dims = kw["dim"]  # aten.mean.dim takes int[1]?: None (every dim) is a whole-tensor mean, not a norm's
        if not isinstance(dims, (list, tuple)) or list(dims) not in ([-1], [h_val.dim() - 1]):
            continue
        if not isinstance(kw["eps"], float):
            continue
        if tuple(n_val.shape) != tuple(h_val.shape):
            continue
        if not isinstance(h_val.shape[-1], int) or h_val.shape[-1] > NORM_QUANT_MAX_K:
            continue  # the kernel holds a row in registers
        return kw
    return None


def _residual_operands(rewriter, h: fx.Node, n: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    """(a, b) when h = a + b may be computed by the fused kernel: a plain add of two tensors of h's
    shape and dtype, neither the output of a template-lowered linear (whose store fuses the add),
    and every reader of h other than the norm after n in the graph."""
    if h.op != "call_function" or h.target is not aten.add.Tensor or h.kwargs or len(h.args) != 2:
        return None
    a, b = h.args
    h_val = _val(h)
    for t in (a, b):
        t_val = _val(t)
        if t_val is None or t_val.dtype != h_val.dtype or tuple(t_val.shape) != tuple(h_val.shape):
            return None
        producer = _producer_linear(t)
        if producer is not None and _gemm_kind(rewriter, producer) in ("tma", "tiles"):
            return None
    order = {node: i for i, node in enumerate(h.graph.nodes)}
    chain = _norm_chain(n, h)
    if any(u not in chain and order[u] < order[n] for u in h.users):
        return None
    return a, b


def _norm_chain(n: fx.Node, h: fx.Node) -> set[fx.Node]:
    """The nodes between h (exclusive) and n (inclusive)."""
    chain, todo = set(), [n]
    while todo:
        node = todo.pop()
        if node in chain or node is h:
            continue
        chain.add(node)
        todo.extend(x for x in node.all_input_nodes if x is not h and x.op == "call_function")
    return chain


def fuse_norms(rewriter) -> int:
    """Rewrite every fusable RMSNorm -> FP8 linears in ``rewriter.graph``; returns how many."""
    graph: fx.Graph = rewriter.graph
    fused = 0
    for n in list(graph.nodes):
        if n.op != "call_function" or n.target is not aten.mul.Tensor:
            continue
        found = _linear_readers(n)
        if found is None:
            continue
        readers, aliases = found
        reader_args = [_linear_args(u) for u in readers]
        scale_fmt = reader_args[0][5]  # the linears' own (a quantize_ module's may differ from the config's)
        if any(args[0] not in (n, *aliases) or args[4] != GROUP or args[5] != scale_fmt for args in reader_args):
            continue
        kw = _match_norm(rewriter, n)
        if kw is None:
            continue
        # Split-K readers run one after another on the stream and each leaves its tickets zero, so
        # one zeroed buffer of the largest count (cleared by the norm kernel) serves them all.
        tickets = {u: _splitk_tickets(u) for u in readers}
        n_tickets = max(tickets.values())
        h, w, eps = kw["h"], kw["weight"], kw["eps"]
        residual = _residual_operands(rewriter, h, n)
        x, r = residual if residual is not None else (h, None)
        with graph.inserting_after(n):
            nq = rewriter._call(fp8_ops.rms_norm_quant.default, (x, r, w, eps, scale_fmt, n_tickets))
        with graph.inserting_after(nq):
            t = rewriter._call(operator.getitem, (nq, 3), nq.meta["val"][3]) if n_tickets else None
        with graph.inserting_after(nq):
            xs = rewriter._call(operator.getitem, (nq, 2), nq.meta["val"][2])
        with graph.inserting_after(nq):
            xq = rewriter._call(operator.getitem, (nq, 1), nq.meta["val"][1])
        with graph.inserting_after(nq):
            h_new = rewriter._call(operator.getitem, (nq, 0), nq.meta["val"][0]) if r is not None else None
        for linear in readers:
            _, wq, ws, bias, _, _ = _linear_args(linear)
            args = (xq, xs, wq, ws, bias, _val(n).dtype, t if tickets[linear] else None)
            with graph.inserting_before(linear):
                y = rewriter._call(fp8_ops.quantized_block_linear.default, args)
            y.meta.update({k: v for k, v in linear.meta.items() if k not in ("val", "tensor_meta")})
            linear.replace_all_uses_with(y)
            graph.erase_node(linear)
        for alias in aliases:
            _erase_dead(graph, alias, stop=n)
        _erase_dead(graph, n, stop=h)
        if h_new is not None:
            h.replace_all_uses_with(h_new)
            graph.erase_node(h)
        fused += 1
    if fused:
        torch._dynamo.utils.counters["fp8inductor"]["norms_fused"] += fused
    return fused


def _erase_dead(graph: fx.Graph, node: fx.Node, stop: fx.Node) -> None:
    """Erase node and, backwards, every producer left without users (not past ``stop``)."""
    todo, erased = [node], set()
    while todo:
        cur = todo.pop()
        if cur in erased or cur is stop or cur.op != "call_function" or _live_users(cur):
            continue
        erased.add(cur)
        inputs = cur.all_input_nodes
        for dead_view in list(cur.users):
            graph.erase_node(dead_view)
        graph.erase_node(cur)
        todo.extend(inputs)
