"""Run a gated MLP's gate/up GEMM, activation product and down_proj's input quantization in row chunks.

Runs in the fp8block pass after the linears, siblings and norms are rewritten, where
``FP8BlockConfig.mlp_chunk_rows`` is C > 0. At prefill (M rows) a Llama MLP is

    y = quantized_block_linear(xq, xs, W_gate_up)     # [M, 2I] bf16: gate | up (sibling-fused)
    h = silu(y[:, :I]) * y[:, I:]                      # row-local pointwise ops ("the region")
    o = block_linear(h, W_down)                        # quantizes h (fused into the region's kernel)

and y (M x 2I x 2 bytes: 117 MB at Llama-3-8B 1 x 2048) is written by the GEMM and read back by the
quantization from HBM, since it does not fit the H100's 50 MB L2. Chunked, it becomes

    for each chunk i of C rows:
        y_i = quantized_block_linear(xq[i], xs[i], W_gate_up)     # [C, 2I]
        q_i, s_i = quantize_activation(region(y_i))                # read while y_i may be in L2
    o = quantized_block_linear(cat(q_i), cat(s_i), W_down)

each chunk's quantization right after its GEMM (Inductor may order the chunks differently, not a
chunk's quantization away from its GEMM: it reads only that GEMM's output). The codes are
concatenated as [C, K/128, 128] views, the shape of ``quant_ir``'s loops: each chunk's kernel then
writes its codes and scales straight into the concatenated buffers (no copy; tests/test_mlp_chunking.py
checks the generated code). Every row's arithmetic is unchanged: the codes and scales equal the
unchunked graph's on the GPU, where both quantize with ``quant_ir`` (the gate/up GEMM may pick
another cuBLAS algorithm for C rows: its accumulation order can differ).

Matched (anything else is left alone):

* y: a ``quantized_block_linear`` without tickets or a ``block_linear``, with static rows M > C;
* the region: the nodes between y and down_proj's activation, each a pointwise aten/prims op, a
  slice of the last dim or a view of the leading dims, reading only y and each other, read only by
  each other and down_proj, and keeping y's M rows;
* down_proj: a ``block_linear`` (group 128) of the region's last node, whose K is a multiple of 128.
"""

from __future__ import annotations

import math
import operator

import torch
from torch import fx

from .norm_fusion import _live_users
from .passes import _val

aten = torch.ops.aten
fp8_ops = torch.ops.fp8inductor

GROUP = 128
_GEMMS = (fp8_ops.block_linear.default, fp8_ops.quantized_block_linear.default)
_VIEWS = (aten.view.default, aten.reshape.default, aten._unsafe_view.default)


def chunk_gated_mlps(rewriter) -> int:
    """Chunk every matching MLP in ``rewriter.graph`` (module docstring); returns how many."""
    rows = rewriter.config.mlp_chunk_rows
    if not rows:
        return 0
    chunked = 0
    for down in list(rewriter.graph.nodes):
        if down.op != "call_function" or down.target is not fp8_ops.block_linear.default:
            continue
        found = _match(rewriter, down, rows)
        if found is None:
            continue
        gemm, region = found
        _rewrite(rewriter, gemm, region, down, rows)
        chunked += 1
    if chunked:
        torch._dynamo.utils.counters["fp8inductor"]["mlps_chunked"] += chunked
    return chunked


def _static_lead(node: fx.Node) -> list[int] | None:
    val = _val(node)
    if val is None or val.dim() < 2 or not all(isinstance(d, int) for d in val.shape):
        return None
    return list(val.shape[:-1])


def _is_last_dim_slice(node: fx.Node) -> bool:
    if node.target is not aten.slice.Tensor or node.kwargs:
        return False
    src = node.args[0]
    dim = node.args[1] if len(node.args) > 1 else 0
    ndim = _val(src).dim() if isinstance(src, fx.Node) and _val(src) is not None else None
    return ndim is not None and dim in (-1, ndim - 1) and (len(node.args) < 5 or node.args[4] == 1)


def _is_lead_view(node: fx.Node) -> bool:
    """A view that reshapes the leading (row) dims only: [2, 100, N] <-> [200, N]."""
    if node.target not in _VIEWS or not isinstance(node.args[0], fx.Node):
        return False
    src, out = _val(node.args[0]), _val(node)
    return src is not None and out is not None and src.dim() >= 1 and out.dim() >= 1 and src.shape[-1] == out.shape[-1]


def _is_row_local(node: fx.Node) -> bool:
    if node.op != "call_function":
        return False
    if _is_last_dim_slice(node) or _is_lead_view(node):
        return True
    tags = getattr(node.target, "tags", ())
    return torch.Tag.pointwise in tags


def _match(rewriter, down: fx.Node, rows: int) -> tuple[fx.Node, list[fx.Node]] | None:
    """(the gate/up GEMM, the region's nodes in graph order) for down_proj ``down``, or None."""
    h = down.args[0]
    if not isinstance(h, fx.Node) or len(down.args) < 6 or down.args[4] != GROUP or down.kwargs:
        return None
    h_val = _val(h)
    if h_val is None or not isinstance(h_val.shape[-1], int) or h_val.shape[-1] % GROUP:
        return None
    gemm, region, todo = None, set(), [h]
    while todo:
        node = todo.pop()
        if node in region or node is gemm:
            continue
        if node.op == "call_function" and node.target in _GEMMS:
            if gemm is not None:
                return None  # two GEMMs feed the region
            gemm = node
            continue
        if not _is_row_local(node):
            return None
        region.add(node)
        todo.extend(node.all_input_nodes)
    if gemm is None or not region:
        return None
    if gemm.target is fp8_ops.quantized_block_linear.default and (len(gemm.args) > 6 and gemm.args[6] is not None):
        return None  # split-K tickets: decode sizes, never chunked
    lead = _static_lead(gemm)
    if lead is None or math.prod(lead) <= rows:
        return None
    readers = region | {down}
    if any(not set(_live_users(n)) <= readers for n in region) or not set(_live_users(gemm)) <= region:
        return None
    if set(_live_users(h)) != {down}:
        return None
    if any(_static_lead(n) is None or math.prod(_static_lead(n)) != math.prod(lead) for n in region):
        return None  # a region node without y's rows (a broadcast, a reduction)
    activation = gemm.args[:2] if gemm.target is fp8_ops.quantized_block_linear.default else gemm.args[:1]
    if not all(isinstance(a, fx.Node) and _flattens(rewriter, a, math.prod(lead)) for a in activation):
        return None
    order = {n: i for i, n in enumerate(down.graph.nodes)}
    return gemm, sorted(region, key=order.__getitem__)


def _emit(rewriter, target, args, kwargs=None) -> fx.Node:
    args, kwargs = tuple(args), dict(kwargs or {})
    node = rewriter.graph.call_function(target, args, kwargs)
    if target is operator.getitem:  # of a multi-output op, whose value is a tuple
        node.meta["val"] = args[0].meta["val"][args[1]]
    else:
        node.meta["val"] = rewriter._fake(lambda a, kw: target(*a, **kw), args, kwargs)
    return node


def _flattens(rewriter, node: fx.Node, m: int) -> bool:
    """node's [*lead, K] value views as [M, K] (checked before the graph is touched)."""
    try:
        rewriter._fake(lambda t: t.view(m, t.shape[-1]), node)
    except RuntimeError:
        return False
    return True


def _rewrite(rewriter, gemm: fx.Node, region: list[fx.Node], down: fx.Node, rows: int) -> None:
    graph: fx.Graph = rewriter.graph
    lead = _static_lead(gemm)
    m = math.prod(lead)
    h = down.args[0]
    k = _val(h).shape[-1]  # down_proj's K, a multiple of 128 (``_match``)
    _, wq_d, ws_d, bias_d, _, scale_fmt = down.args[:6]
    codes, scales = [], []
    with graph.inserting_before(down):
        if gemm.target is fp8_ops.quantized_block_linear.default:
            activation, rest = gemm.args[:2], gemm.args[2:]
        else:
            activation, rest = gemm.args[:1], gemm.args[1:]
        sources = [_emit(rewriter, aten.view.default, (a, [m, _val(a).shape[-1]])) for a in activation]
        for start in range(0, m, rows):
            end = min(start + rows, m)
            parts = [_emit(rewriter, aten.slice.Tensor, (src, 0, start, end)) for src in sources]
            env = {gemm: _emit(rewriter, gemm.target, (*parts, *rest), gemm.kwargs)}
            for node in region:
                if _is_lead_view(node):  # every chunk value is [C, N]: nothing to reshape
                    env[node] = env[node.args[0]]
                    continue
                args = list(fx.node.map_arg(node.args, env.__getitem__))
                if node.target is aten.slice.Tensor:
                    args[1] = -1  # the last dim, whatever the rank was
                env[node] = _emit(rewriter, node.target, args, fx.node.map_arg(node.kwargs, env.__getitem__))
            quantized = _emit(rewriter, fp8_ops.quantize_activation.default, (env[h], GROUP, scale_fmt))
            q_i = _emit(rewriter, operator.getitem, (quantized, 0))
            # [C, K] -> [C, K/128, 128]: the concatenation then realizes the codes over the ranges of
            # the quantization's own loops (quant_ir), which keeps its amax reduction fused with them
            codes.append(_emit(rewriter, aten.view.default, (q_i, [end - start, k // GROUP, GROUP])))
            scales.append(_emit(rewriter, operator.getitem, (quantized, 1)))
        q = _emit(rewriter, aten.view.default, (_emit(rewriter, aten.cat.default, (codes, 0)), [m, k]))
        s = _emit(rewriter, aten.cat.default, (scales, 0))
        y = _emit(rewriter, fp8_ops.quantized_block_linear.default, (q, s, wq_d, ws_d, bias_d, _val(h).dtype, None))
        y = _emit(rewriter, aten.view.default, (y, [*lead, _val(down).shape[-1]]))
    y.meta.update({key: v for key, v in down.meta.items() if key not in ("val", "tensor_meta")})
    down.replace_all_uses_with(y)
    graph.erase_node(down)
    for node in [*reversed(region), gemm]:
        for dead_view in list(node.users):  # only dead views are left (``_match``)
            graph.erase_node(dead_view)
        graph.erase_node(node)
