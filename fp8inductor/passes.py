"""The fp8block graph pass: rewrite matmuls against frozen weights into FP8 block linears.

Runs as Inductor's ``joint_custom_pre_pass`` on the inference (forward) graph, functional ATen,
where the weights are the first ``len(TracingContext.params_flat)`` placeholders (the backend
turns Inductor freezing on, so they are frozen afterwards). Inductor also runs it on the subgraphs of
higher-order ops (torch.cond branches); there nothing is a parameter, nothing converts, and the
Linear modules' matmuls are reported as skipped (``_is_forward_graph``). For each match of a pattern in
``fp8inductor.patterns`` it checks eligibility, then replaces

    mm(x, permute(W, [1, 0]))           ->  block_linear(x, *quantize_weight(W), None)
    addmm(b, x, permute(W, [1, 0]))     ->  block_linear(x, *quantize_weight(W), b)
    mm(x, W_kn) / addmm(b, x, W_kn)     ->  block_linear(x, *quantize_weight(permute(W_kn)), b)

``quantize_weight`` depends only on the frozen weight, so freezing's constant folding evaluates it
once at compile time and stores the FP8 weight and scales as constants; the high-precision weight
is then unused by the compiled graph. One ``quantize_weight`` per weight, however many users.

Invariants: the pass never mutates tensors, adds no aliasing, and leaves ineligible matmuls as they
are, recording a reason for each one that involves a parameter.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import hashlib
import operator
import os
import re
from collections.abc import Iterator

import torch
import torch.fx as fx
from torch._inductor.custom_graph_pass import CustomGraphPass

from . import ops  # noqa: F401  (registers torch.ops.fp8inductor)
from .config import FP8BlockConfig
from .eligibility import skip_reason
from .patterns import ALL_PATTERNS, LinearMatch
from .report import LinearDecision, RewriteReport

aten = torch.ops.aten
fp8_ops = torch.ops.fp8inductor

# Ops between a parameter and a matmul that still make it "a matmul on that parameter" (first argument
# = the tensor passed on); used only to report unmatched forms: views, casts, copies, parts of it
# (slices, W.chunk(2)[1] = getitem(split(W)), a row, rows picked by index: a MoE's W_experts[expert_ids]),
# and einsum's unsqueeze/squeeze.
_TRACE_DEPTH = 12  # ops followed back from an unmatched matmul's operand to a parameter (_trace_to_param)

_PASS_THROUGH = {
    aten.permute.default,
    aten.t.default,
    aten.view.default,
    aten.reshape.default,
    aten._unsafe_view.default,
    aten.expand.default,
    aten.clone.default,
    aten.alias.default,
    aten._to_copy.default,
    torch.ops.prims.convert_element_type.default,
    aten.slice.Tensor,
    aten.select.int,
    aten.index.Tensor,
    aten.narrow.default,
    aten.split.Tensor,
    aten.split_with_sizes.default,
    aten.unbind.int,
    operator.getitem,
    aten.unsqueeze.default,
    aten.squeeze.default,
    aten.squeeze.dim,
    aten.squeeze.dims,
}
# (W @ vector never reaches the pass as a matmul: Inductor decomposes aten.mv into mul + sum first.)
# aten._grouped_mm: transformers' MoE experts (``grouped_mm`` experts implementation, 3-D weights [E, N, K]).
_MATMULS = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default, aten._grouped_mm.default}


def _is_foreign_matmul(target: object) -> bool:
    """A matmul custom op of another library (an "mm" word in its name), reported as unmatched (never
    converted) where it takes a parameter: transformers 5 runs non-bf16 MoE experts under torch.compile
    through its own ``transformers::grouped_mm_fallback`` instead of ``aten._grouped_mm``, and the
    experts of an fp16 or fp32 MoE were missing from the report until 2026-12-08."""
    if not isinstance(target, torch._ops.OpOverload) or target.namespace in ("aten", "prims", "fp8inductor"):
        return False
    return "mm" in target._opname.split("_")


# Sibling linears (``FP8BlockConfig.fuse_siblings``) are fused for a static M up to this many rows:
# there a linear costs mostly its launch and ramp (H100 profile, docs/benchmarks.md), and one GEMM on
# the concatenated weight saves it. Above it, only where the fused GEMM runs on cuBLAS (``_fuses_gemm``):
# a Triton template GEMM is compute-bound there, and the caller's pointwise op on two slices
# (SiLU(gate) * up) could no longer fuse into one template's store: it would be an extra pass over the
# whole [M, 2 * intermediate] output; cuBLAS has no such epilogue to lose. A symbolic M (one graph for
# prefill and decode) is not fused.
SIBLING_FUSION_MAX_M = 128


@dataclasses.dataclass
class CompileScope:
    """Per-compile facts the backend knows and the pass needs.

    param_names: fully qualified names of the parameters/buffers, in the order AOTAutograd lifts
        them as the first placeholders (``named_parameters`` then ``named_buffers``).
    module_prefix: path of the traced frame's module within the model (``layers.1`` when Dynamo
        traces a layer's forward after a graph break), put in front of Dynamo's module paths.
    module_classes: class names of the modules from the model down to the frame's module, put in
        front of the classes on Dynamo's module stacks (which start below the frame's module).
    """

    config: FP8BlockConfig
    param_names: list[str]
    report: RewriteReport
    module_prefix: str = ""
    module_classes: tuple[str, ...] = ()


_ACTIVE_SCOPE: contextvars.ContextVar[CompileScope | None] = contextvars.ContextVar("fp8block_scope", default=None)


@contextlib.contextmanager
def compile_scope(
    config: FP8BlockConfig, param_names: list[str], module_prefix: str = "", module_classes: tuple[str, ...] = ()
) -> Iterator[CompileScope]:
    scope = CompileScope(config, param_names, RewriteReport(), module_prefix, module_classes)
    token = _ACTIVE_SCOPE.set(scope)
    try:
        yield scope
    finally:
        _ACTIVE_SCOPE.reset(token)


def source_files(roots: list[str] | None = None) -> tuple[str, ...]:
    """Every file that shapes a compiled graph: the pass, patterns, ops, lowering, Triton kernels and
    template, and the tuned-config tables (all ``.py`` and ``.json`` under fp8inductor and patterns).

    Inductor's FX-graph cache keys on the pass ``uuid`` but knows nothing of lowerings or template
    sources, so all of them go into the uuid: editing any one must not reuse a stale graph.
    """
    if roots is None:
        import fp8inductor.patterns as patterns_pkg

        roots = [os.path.dirname(__file__), os.path.dirname(patterns_pkg.__file__)]
    return tuple(
        sorted(
            os.path.join(dirpath, f)
            for root in roots
            for dirpath, _, names in os.walk(root)
            for f in names
            if f.endswith((".py", ".json"))
        )
    )


def hash_files(files: tuple[str, ...]) -> bytes:
    """sha256 over the base names and contents of ``files`` (not cached: tests edit files)."""
    h = hashlib.sha256()
    for path in files:
        h.update(os.path.basename(path).encode())
        with open(path, "rb") as f:
            h.update(f.read())
    return h.digest()


@functools.cache
def _source_hash() -> bytes:
    """Hash of ``source_files()``, once per process."""
    return hash_files(source_files())


class FP8BlockPass(CustomGraphPass):
    """``joint_custom_pre_pass`` object; ``uuid()`` keys Inductor's FX graph cache."""

    def __init__(self, config: FP8BlockConfig) -> None:
        self.config = config

    def __call__(self, graph: fx.Graph) -> None:
        scope = _ACTIVE_SCOPE.get()
        if scope is None:  # used outside the backend (e.g. set by hand in inductor config)
            scope = CompileScope(self.config, [], RewriteReport())
        _Rewriter(graph, self.config, scope).run()
        if self.config.trig_tables_once:
            from .trig_tables import realize_trig_tables

            realize_trig_tables(graph)
        if self.config.fold_gqa_heads:
            from .gqa_heads import fold_gqa_heads

            fold_gqa_heads(graph, decode_kernel=self.config.gqa_decode_kernel)

    def uuid(self) -> bytes:
        # FP8INDUCTOR_CUBLAS(_PAD_ROWS), FP8INDUCTOR_QUANT_IR and FP8INDUCTOR_PDL change the
        # lowering's choices: part of the key too.
        from . import quant_ir
        from .kernels import cublas, pdl

        switches = (
            (b"|cublas" if cublas.enabled() else b"|no-cublas")
            + (b"|cublas-pad-rows" if cublas.pad_rows_enabled() else b"|no-cublas-pad-rows")
            + (b"|quant-ir" if quant_ir.enabled() else b"|no-quant-ir")
            + (b"|pdl" if pdl.env_enabled() else b"|no-pdl")
        )
        return _source_hash() + repr(self.config).encode() + switches


# ---------------------------------------------------------------------------------------------


def _unflattened_activation(x: fx.Node) -> tuple[fx.Node, bool]:
    """(x_nd, True) when the mm's activation is ``view(x_nd, [prod(lead), K])`` of an N-D x_nd, else (x, False).

    ``block_linear`` then takes x_nd [..., K] and returns [..., N], so the linear's output keeps
    the caller's shape: the Inductor lowering builds its epilogue in that shape and the caller's
    pointwise ops (residual add, activation) fuse into the GEMM's store. The graph's own view back
    to [..., N] becomes a pair of pointless views that Inductor removes.
    """
    if x.op != "call_function" or x.target not in (aten.view.default, aten.reshape.default):
        return x, False
    src = x.args[0]
    if not isinstance(src, fx.Node):
        return x, False
    src_val, x_val = _val(src), _val(x)
    if src_val is None or x_val is None or src_val.dim() < 3 or x_val.dim() != 2:
        return x, False
    if src_val.shape[-1] != x_val.shape[-1]:  # not a flatten of the leading dims
        return x, False
    return src, True


_VIEWS = {aten.view.default, aten.reshape.default, aten._unsafe_view.default}


def _reaches_output(node: fx.Node) -> bool:
    """Whether ``node``'s value leaves the graph, directly or through views of it."""
    todo, seen = [node], set()
    while todo:
        n = todo.pop()
        for user in n.users:
            if user.op == "output":
                return True
            if user.op == "call_function" and user.target in _VIEWS and user not in seen:
                seen.add(user)
                todo.append(user)
    return False


def module_path_from_stack(node: fx.Node, prefix: str = "") -> str | None:
    """Innermost module path of ``node`` from Dynamo's ``nn_module_stack``, as a dotted FQN, with
    ``prefix`` (the traced frame's module path, ``CompileScope.module_prefix``) in front."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    return _join_path(prefix, normalize_module_path(list(stack.values())[-1][0]))


def module_classes_from_stack(node: fx.Node) -> list[str]:
    """Class names of the modules on ``node``'s ``nn_module_stack``, outermost first (Dynamo stores the
    class itself or its qualified name, by version)."""
    stack = node.meta.get("nn_module_stack") or {}
    return [getattr(t, "__name__", str(t).rsplit(".", 1)[-1]) for _, t in stack.values()]


def _running_module(stack_path: str | None, owner: str) -> str:
    """The module that runs a matmul: its path from the module stack, or the weight's owner where the
    stack has none or names the same module less fully (``0`` for ``dec.0``: a module passed to a
    compiled function, whose stack paths lack the argument's name)."""
    if not stack_path or ends_with_path(owner, stack_path):
        return owner or (stack_path or "")
    return stack_path


def ends_with_path(full: str, tail: str) -> bool:
    """``layers.1.down.weight`` ends with the path ``down.weight``; ``layers.1.mlp_down.weight`` does not."""
    return full == tail or full.endswith("." + tail)


def _join_path(prefix: str, path: str) -> str:
    return ".".join(p for p in (prefix, path) if p)


def normalize_module_path(path: str) -> str:
    """Dynamo source path -> dotted module FQN.

    ``L['self'].model.layers[0].q_proj``, ``L['args'][0].model.layers[0].q_proj`` (a decorated
    ``forward``, transformers >= 5.2x) and ``L['self']._modules['lm_head']`` become
    ``model.layers.0.q_proj`` and ``lm_head``: the root object (``L[...]`` with its subscripts) is
    dropped, ``_modules['x']`` and ``['x']`` become ``.x``, ``[0]`` becomes ``.0``.
    """
    path = re.sub(r"^L(\[[^\]]*\])+", "", path)
    path = re.sub(r"_modules\['([^']*)'\]", r".\1", path)
    path = re.sub(r"\[(\d+)\]", r".\1", path)
    path = re.sub(r"\['([^']*)'\]", r".\1", path)
    return ".".join(part for part in path.split(".") if part)


def _val(node) -> torch.Tensor | None:
    """The node's fake tensor; None for a non-node, no value, or a non-tensor value (a SymInt)."""
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return val if isinstance(val, torch.Tensor) else None


def _is_forward_graph(placeholders: list[fx.Node], params_flat: list[torch.Tensor], ctx) -> bool:
    """Whether a graph given to the pass is the compiled forward itself, whose first
    ``len(params_flat)`` placeholders are the parameters, rather than a higher-order op's subgraph.

    Inductor's ``_recursive_joint_graph_passes`` calls the pass on each subgraph (first) and then on
    the forward, with no flag saying which is which. The forward has one placeholder per
    AOTAutograd input (``fw_metadata.input_info``), and its leading placeholders carry the
    parameters' shapes, dtypes, strides and devices. A subgraph that passes both checks takes all
    the forward's inputs, with parameters of identical metadata in the parameters' positions; it then
    gets those parameters' names in the report, and its matmuls still quantize their operands at run
    time (a subgraph is not constant-folded), so the numbers are right.
    """
    meta = getattr(ctx, "fw_metadata", None) if ctx is not None else None
    if meta is not None and len(placeholders) != len(meta.input_info):
        return False
    if len(placeholders) < len(params_flat):
        return False
    for node, param in zip(placeholders, params_flat):
        v = _val(node)
        if v is None or (tuple(v.shape), v.dtype, v.device) != (tuple(param.shape), param.dtype, param.device):
            return False
        if tuple(v.stride()) != tuple(param.stride()):
            return False
    return True


class _Rewriter:
    def __init__(self, graph: fx.Graph, config: FP8BlockConfig, scope: CompileScope) -> None:
        from torch._guards import TracingContext

        self.graph = graph
        self.config = config
        self.scope = scope
        ctx = TracingContext.try_get()
        self.params_flat = list(ctx.params_flat) if ctx is not None and ctx.params_flat is not None else []
        self.fake_mode = ctx.fake_mode if ctx is not None else None
        self.placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        # Inductor runs the pass on the subgraphs of higher-order ops (torch.cond branches ...) too.
        # Their placeholders are the op's operands, not the forward's inputs: none is a parameter.
        self.is_subgraph = not _is_forward_graph(self.placeholders, self.params_flat, ctx)
        if self.is_subgraph:
            self.params_flat = []
        self.placeholder_index = {n: i for i, n in enumerate(self.placeholders)}
        self.quantized: dict[tuple[fx.Node, str], tuple[fx.Node, fx.Node]] = {}
        self.seen_anchors: set[fx.Node] = set()
        self.replaced: dict[fx.Node, fx.Node] = {}  # rewritten (erased) anchor -> its replacement
        self._trace_memo: dict[tuple[fx.Node, int], tuple[fx.Node | None, list[str]]] = {}

    # -- weight identity ------------------------------------------------------------------------

    def _param_index(self, node: fx.Node) -> int | None:
        if node.op != "placeholder":
            return None
        i = self.placeholder_index[node]
        return i if i < len(self.params_flat) else None

    def _weight_name(self, node: fx.Node) -> str:
        i = self._param_index(node)
        if i is not None and i < len(self.scope.param_names):
            return self.scope.param_names[i]
        return str(node.target)

    def _real_weight(self, node: fx.Node) -> torch.Tensor | None:
        i = self._param_index(node)
        if i is not None:
            return self.params_flat[i]
        if node.op == "get_attr":
            return getattr(self.graph.owning_module, node.target, None)
        return None

    def _is_frozen_weight(self, node: fx.Node) -> bool:
        return self._param_index(node) is not None or node.op == "get_attr"

    # -- main loop ------------------------------------------------------------------------------

    def run(self) -> None:
        eligible: list[LinearMatch] = []
        for node in list(self.graph.nodes):
            if node.op != "call_function" or node.target not in (aten.mm.default, aten.addmm.default):
                continue
            match = self._match(node)
            if match is not None:
                self.seen_anchors.add(node)
                if self._handle(match):
                    eligible.append(match)
        groups = self._sibling_groups(eligible) if self.config.fuse_siblings else []
        fused = set()
        row_views: list[fx.Node] = []
        for group in groups:
            # One quantization of the concatenated weight, whether or not this graph fuses the GEMM:
            # every graph (static decode, large or symbolic M) then holds the same FP8 constant.
            q_cat, s_cat = self._quantize_concatenated(group)
            # Each member's rows also serve its weight's other matmuls (another activation): one FP8 copy.
            row_views += self._share_rows(group, q_cat, s_cat)
            if self._fuses_gemm(group):
                self._rewrite_siblings(group, q_cat, s_cat)
                fused.update(id(m) for m in group)
        for match in eligible:
            if id(match) not in fused:
                self._rewrite(match)
        for view in reversed(row_views):  # the row views no matmul took (fused members')
            if not view.users:
                self.graph.erase_node(view)
        self._report_unmatched()
        if self.config.fuse_norms:
            from .norm_fusion import fuse_norms

            fuse_norms(self)
        self.graph.lint()

    def _match(self, node: fx.Node) -> LinearMatch | None:
        for pattern in ALL_PATTERNS:
            m = pattern.expr.match(node)
            if not m:
                continue
            w = m.kwargs["w"]
            if not isinstance(w, fx.Node) or not self._is_frozen_weight(w):
                continue  # activation @ activation, or a weight in a form we do not handle
            if self._is_constant(m.kwargs["x"]):
                continue  # weight @ weight (a LoRA product B @ A): freezing folds it in high precision
            return LinearMatch(pattern, node, m.kwargs["x"], w, m.kwargs.get("bias"))
        return None

    def _is_constant(self, node, budget: int = 32) -> bool:
        """node is computed from frozen weights (and literals) alone, within ``budget`` nodes."""
        todo, seen = [node], set()
        while todo:
            cur = todo.pop()
            if not isinstance(cur, fx.Node) or cur in seen:
                continue
            seen.add(cur)
            if len(seen) > budget or cur.op not in ("placeholder", "get_attr", "call_function"):
                return False
            if cur.op == "placeholder" and not self._is_frozen_weight(cur):
                return False
            todo.extend(cur.all_input_nodes)
        return True

    def _handle(self, match: LinearMatch) -> bool:
        """Record the decision for this match; True if it converts (rewritten later by ``run``)."""
        w_val = _val(match.weight)
        n, k = self._weight_nk(match)
        weight_name = self._weight_name(match.weight)
        module = weight_name.rsplit(".", 1)[0] if "." in weight_name else ""
        reason = self._ineligible(match, module, n, k)
        elem = w_val.element_size() if w_val is not None else 0
        numel = n * k
        scale_bytes = 4 * -(-n // 128) * -(-k // 128)
        self.scope.report.decisions.append(
            LinearDecision(
                # The module running the matmul (lm_head for a tied weight), else the weight's owner.
                module=_running_module(module_path_from_stack(match.anchor, self.scope.module_prefix), module),
                weight=weight_name,
                pattern=match.pattern.name,
                out_features=n,
                in_features=k,
                has_bias=match.bias is not None,
                converted=reason is None,
                reason=reason,
                bytes_before=numel * elem,
                bytes_after=numel + scale_bytes if reason is None else numel * elem,
                weight_layout=match.pattern.weight_layout,
            )
        )
        if reason is None:
            torch._dynamo.utils.counters["fp8inductor"]["linears_converted"] += 1
        else:
            torch._dynamo.utils.counters["fp8inductor"]["linears_skipped"] += 1
        return reason is None

    def _ineligible(self, match: LinearMatch, module: str, n: int, k: int) -> str | None:
        """Why this match must stay as it is, or None if it converts. A TypeError for a matmul that
        eager PyTorch rejects (an activation or bias dtype unlike the weight's)."""
        w_val, x_val = _val(match.weight), _val(match.x)
        if w_val is None or x_val is None:
            return "no shape information on the graph nodes"
        if w_val.dim() != 2:
            return f"weight is {w_val.dim()}-D, not 2-D"
        if x_val.dtype != w_val.dtype:  # eager rejects such a matmul; Inductor's freezing may crash on it
            raise TypeError(
                f"fp8block: a matmul in {module or 'the model'} multiplies a {x_val.dtype} activation by a "
                f"{w_val.dtype} weight; PyTorch rejects mixed dtypes here in eager mode too (cast one of them)"
            )
        if match.bias is not None:
            if len(match.anchor.args) > 3 or match.anchor.kwargs:
                return "addmm with beta/alpha"
            b_val = _val(match.bias)
            if b_val is None or tuple(b_val.shape) != (n,):
                return f"bias of shape {None if b_val is None else tuple(b_val.shape)} is not [N]"
            if b_val.dtype != w_val.dtype:  # addmm / F.linear: eager rejects it; Inductor's freezing may crash on it
                raise TypeError(
                    f"fp8block: a linear in {module or 'the model'} adds a {b_val.dtype} bias to a {w_val.dtype} "
                    "matmul; PyTorch rejects mixed dtypes here in eager mode too (cast the bias)"
                )
        paths = (module, module_path_from_stack(match.anchor, self.scope.module_prefix))
        classes = [*self.scope.module_classes, *module_classes_from_stack(match.anchor)]
        return skip_reason(self.config, paths, n, k, w_val.dtype, self._real_weight(match.weight), classes)

    # -- rewriting ------------------------------------------------------------------------------

    def _fake(self, fn, *args):
        vals = fx.node.map_arg(args, _val)  # nodes -> their fake values, also inside lists
        ctx = self.fake_mode if self.fake_mode is not None else contextlib.nullcontext()
        with ctx:
            return fn(*vals)

    def _call(self, fn, args: tuple, val=None) -> fx.Node:
        node = self.graph.call_function(fn, args)
        node.meta["val"] = self._fake(fn, *args) if val is None else val
        return node

    def _quantized_weight(self, match: LinearMatch) -> tuple[fx.Node, fx.Node]:
        """(q [N, K] fp8, s [ceil(N/128), ceil(K/128)] fp32) nodes for the match's weight, made once."""
        key = (match.weight, match.pattern.weight_layout)
        if key in self.quantized:
            return self.quantized[key]
        cfg = self.config
        # Insert right after the weight so that later matches of the same weight can reuse it.
        with self.graph.inserting_after(self._last_placeholder_or(match.weight)):
            w_nk = match.weight
            if match.pattern.weight_layout == "KN":
                w_nk = self._call(aten.permute.default, (match.weight, [1, 0]))
            with self.graph.inserting_after(w_nk):
                qs = self._call(fp8_ops.quantize_weight.default, (w_nk, *cfg.weight_block_size, cfg.scale_fmt))
            with self.graph.inserting_after(qs):
                q = self._call(operator.getitem, (qs, 0), val=qs.meta["val"][0])
            with self.graph.inserting_after(q):
                s = self._call(operator.getitem, (qs, 1), val=qs.meta["val"][1])
        self.quantized[key] = (q, s)
        return q, s

    def _sibling_groups(self, eligible: list[LinearMatch]) -> list[list[LinearMatch]]:
        """Converting linears that read the same activation, with placeholder weights (and biases)
        of one dtype, out_features % 128 == 0 (no weight block straddles two of them), all with a
        bias or none, each weight once: two or more per group, in graph order. A weight (in one
        layout) joins one group only, the first in graph order: its other matmuls read that group's
        rows (``_share_rows``), so no weight is quantized twice."""
        by_key: dict[tuple, list[LinearMatch]] = {}
        for m in eligible:
            w_val = _val(m.weight)
            if self._weight_nk(m)[0] % self.config.weight_block_size[0] or self._param_index(m.weight) is None:
                continue
            if m.bias is not None and (self._param_index(m.bias) is None or _val(m.bias).dtype != w_val.dtype):
                continue
            key = (_unflattened_activation(m.x), w_val.dtype, m.bias is None)  # one x, each mm its own view
            group = by_key.setdefault(key, [])
            if all((g.weight, g.pattern.weight_layout) != (m.weight, m.pattern.weight_layout) for g in group):
                group.append(m)
        groups: list[list[LinearMatch]] = []
        claimed: set[tuple[fx.Node, str]] = set()
        for candidates in by_key.values():
            group = [m for m in candidates if (m.weight, m.pattern.weight_layout) not in claimed]
            if len(group) > 1:
                groups.append(group)
                claimed.update((m.weight, m.pattern.weight_layout) for m in group)
        return groups

    @staticmethod
    def _weight_nk(m: LinearMatch) -> tuple[int, int]:
        """(out_features N, in_features K) of the match's weight in either layout; (0, 0) if not 2-D."""
        w_val = _val(m.weight)
        if w_val is None or w_val.dim() != 2:
            return 0, 0
        n, k = w_val.shape if m.pattern.weight_layout == "NK" else w_val.shape[::-1]
        return int(n), int(k)

    def _fuses_gemm(self, group: list[LinearMatch]) -> bool:
        """One GEMM for the group: a static M of at most ``SIBLING_FUSION_MAX_M`` rows, or any static
        M where the fused GEMM runs on cuBLAS (``_runs_on_cublas``); and no member's output leaves
        the graph (it would be a strided slice of the fused output)."""
        rows = _val(group[0].x).shape[0]
        if not isinstance(rows, int):
            return False
        if rows > SIBLING_FUSION_MAX_M and not self._runs_on_cublas(group, rows):
            return False
        return not any(_reaches_output(m.anchor) for m in group)

    def _runs_on_cublas(self, group: list[LinearMatch], rows: int) -> bool:
        """The group's fused GEMM [rows, sum N_i] would run on cuBLAS (``block_gemm.static_choice``).
        The fused GEMM then has no template epilogue to lose, and one GEMM saves the group's repeated
        activation quantizations and launches: at Llama-3-8B prefill (H100, M = 2048) q/k/v and
        gate/up quantized the same activation five times per layer, 7 ops per layer instead of 4
        (bench_model --profile-prefill, 2026-11-25). A member that would on its own have been a
        template (narrow N at mid M, e.g. 1024 x 4096 at M = 512 in the H100 table) loses its fused
        epilogue; the measured prefill gain (docs/benchmarks.md, "Prefill") includes that."""
        from .kernels.block_gemm import static_choice

        x = _val(group[0].x)
        n = sum(self._weight_nk(m)[0] for m in group)
        k = self._weight_nk(group[0])[1]
        bias_dtype = None if group[0].bias is None else _val(group[0].bias).dtype
        return static_choice(x.device, rows, n, k, x.dtype, bias_dtype).kind == "cublas"

    def _quantize_concatenated(self, group: list[LinearMatch]) -> tuple[fx.Node, fx.Node]:
        """(q [sum N_i, K] fp8, s [sum N_i / 128, ceil(K/128)] fp32) of ``cat(W_i)``, made after the placeholders."""
        cfg = self.config
        cursor = self.placeholders[-1]  # the weights and biases are placeholders: all defined by here

        def emit(fn, args, val=None) -> fx.Node:
            nonlocal cursor
            with self.graph.inserting_after(cursor):
                cursor = self._call(fn, args, val)
            return cursor

        parts = [
            emit(aten.permute.default, (m.weight, [1, 0])) if m.pattern.weight_layout == "KN" else m.weight
            for m in group
        ]
        w_cat = emit(aten.cat.default, (parts, 0))
        qs = emit(fp8_ops.quantize_weight.default, (w_cat, *cfg.weight_block_size, cfg.scale_fmt))
        return emit(operator.getitem, (qs, 0), qs.meta["val"][0]), emit(operator.getitem, (qs, 1), qs.meta["val"][1])

    def _share_rows(self, group: list[LinearMatch], q_cat: fx.Node, s_cat: fx.Node) -> list[fx.Node]:
        """Each member weight's (q, s) is its row range of the concatenated quantization, for every
        matmul of that weight the group's GEMM does not cover: all of them when the group is not fused,
        else those on another activation (row slices of a row-major constant: views, no copy; the same
        bytes as quantizing W_i alone, since every N_i is a multiple of the 128-row block). Returns
        the slice nodes made."""
        block_n = self.config.weight_block_size[0]
        start = 0
        made: list[fx.Node] = []
        for m in group:
            n = self._weight_nk(m)[0]
            with self.graph.inserting_after(s_cat):
                s_i = self._call(aten.slice.Tensor, (s_cat, 0, start // block_n, (start + n) // block_n))
            with self.graph.inserting_after(s_cat):
                q_i = self._call(aten.slice.Tensor, (q_cat, 0, start, start + n))
            self.quantized.setdefault((m.weight, m.pattern.weight_layout), (q_i, s_i))
            made += [q_i, s_i]
            start += n
        return made

    def _rewrite_siblings(self, group: list[LinearMatch], q: fx.Node, s: fx.Node) -> None:
        """``y = block_linear(x, q_cat, s_cat, cat(b_i))``; each linear reads its slice of y."""
        cfg = self.config
        bias = None
        if group[0].bias is not None:
            with self.graph.inserting_after(s):
                bias = self._call(aten.cat.default, ([m.bias for m in group], 0))
        first = min((m.anchor for m in group), key=self._order().__getitem__)
        x, flattened = _unflattened_activation(self._resolve(group[0].x))
        with self.graph.inserting_before(first):
            y = self._call(fp8_ops.block_linear.default, (x, q, s, bias, cfg.group_size, cfg.scale_fmt))
            y.meta.update({k: v for k, v in first.meta.items() if k not in ("val", "tensor_meta")})
            start = 0
            outs = []
            for m in group:
                n = _val(m.anchor).shape[1]
                y_i = self._call(aten.slice.Tensor, (y, -1, start, start + n))
                start += n
                # [..., n] -> the mm's [M, n] (the slice's leading dims stay mergeable)
                outs.append(self._as_mm_output(y_i, m.anchor) if flattened else y_i)
        for m, y_i in zip(group, outs):
            self._replace_anchor(m.anchor, y_i)
        torch._dynamo.utils.counters["fp8inductor"]["linears_fused"] += len(group)
        torch._dynamo.utils.counters["fp8inductor"]["sibling_groups"] += 1

    def _order(self) -> dict[fx.Node, int]:
        return {n: i for i, n in enumerate(self.graph.nodes)}

    def _resolve(self, node: fx.Node) -> fx.Node:
        """A match's activation as the graph has it now: an anchor rewritten earlier (``o(q(x))``)
        is erased, and its replacement stands in for it."""
        return self.replaced.get(node, node)

    def _replace_anchor(self, anchor: fx.Node, new: fx.Node) -> None:
        anchor.replace_all_uses_with(new)
        self.replaced[anchor] = new
        operands = list(anchor.all_input_nodes)
        self.graph.erase_node(anchor)
        for op in operands:  # the permute of W, if nothing else uses it
            if op.op == "call_function" and op.target is aten.permute.default and not op.users:
                self.graph.erase_node(op)

    def _last_placeholder_or(self, node: fx.Node) -> fx.Node:
        return self.placeholders[-1] if node.op == "placeholder" and self.placeholders else node

    def _rewrite(self, match: LinearMatch) -> None:
        q, s = self._quantized_weight(match)
        anchor = match.anchor
        x, flattened = _unflattened_activation(self._resolve(match.x))
        with self.graph.inserting_before(anchor):
            y = self._call(
                fp8_ops.block_linear.default, (x, q, s, match.bias, self.config.group_size, self.config.scale_fmt)
            )
            y.meta.update({k: v for k, v in anchor.meta.items() if k not in ("val", "tensor_meta")})
            if flattened:  # y is [..., N]; the graph's users expect the mm's [M, N] (and usually view back)
                y = self._as_mm_output(y, anchor)
        self._replace_anchor(anchor, y)

    def _as_mm_output(self, y: fx.Node, anchor: fx.Node) -> fx.Node:
        """``view(y [..., N], [M, N])``: the 2-D shape of the mm ``anchor`` that y replaces. A symbolic
        M goes in as -1 (no raw SymInt in node args); a static M (0 included) as is."""
        m, n = _val(anchor).shape
        return self._call(aten.view.default, (y, [m if isinstance(m, int) else -1, n]))

    # -- report matmuls on parameters that no pattern covers --------------------------------------

    def _report_unmatched(self) -> None:
        if self.is_subgraph:
            self._report_subgraph_linears()
            return
        for node in self.graph.nodes:
            if node.op != "call_function" or node in self.seen_anchors:
                continue
            if node.target not in _MATMULS and not _is_foreign_matmul(node.target):
                continue
            for operand in node.all_input_nodes:
                param, chain = self._trace_to_param(operand)
                v = _val(param)
                if v is None or v.dim() < 2:  # a 1-D parameter or buffer (a rotary's inv_freq) is no linear weight
                    continue
                name = self._weight_name(param)
                owner = name.rsplit(".", 1)[0] if "." in name else None
                module = owner or module_path_from_stack(node, self.scope.module_prefix)
                reason = f"unsupported form: {node.target}({' <- '.join(chain) or 'param'})"
                nbytes = v.numel() * v.element_size()
                shape = tuple(d if isinstance(d, int) else -1 for d in v.shape)  # -1: a symbolic size
                self._record_skipped(module or "", name, "unmatched", 0, 0, False, reason, nbytes, shape)

    def _report_subgraph_linears(self) -> None:
        """In a higher-order op's subgraph (a torch.cond branch ...) the weights are operands, not
        frozen parameters: nothing converts. Each matmul run by a Linear or Conv1D module is reported
        as skipped, so the report does not pass over it in silence."""
        for node in self.graph.nodes:
            if node.op != "call_function" or node.target not in (aten.mm.default, aten.addmm.default):
                continue
            classes = module_classes_from_stack(node)
            if not classes or not classes[-1].endswith(("Linear", "Conv1D")):
                continue
            out, x = _val(node), _val(node.args[-2])
            if out is None or x is None or out.dim() != 2:
                continue
            n, k = int(out.shape[-1]), int(x.shape[-1])
            module = module_path_from_stack(node, self.scope.module_prefix)
            reason = (
                "inside a higher-order op's subgraph (e.g. a torch.cond branch), where the weight is an "
                "operand, not a frozen parameter: left in high precision"
            )
            has_bias, nbytes = node.target == aten.addmm.default, n * k * out.element_size()
            self._record_skipped(module, f"{module}.weight", "subgraph", n, k, has_bias, reason, nbytes)

    def _record_skipped(
        self,
        module: str,
        weight: str,
        pattern: str,
        n: int,
        k: int,
        has_bias: bool,
        reason: str,
        nbytes: int,
        weight_shape: tuple[int, ...] = (),
    ) -> None:
        """A matmul left in high precision that no pattern's match decided on (``_handle`` records those)."""
        self.scope.report.decisions.append(
            LinearDecision(
                module=module,
                weight=weight,
                pattern=pattern,
                out_features=n,
                in_features=k,
                has_bias=has_bias,
                converted=False,
                reason=reason,
                bytes_before=nbytes,
                bytes_after=nbytes,
                weight_shape=weight_shape,
            )
        )
        torch._dynamo.utils.counters["fp8inductor"]["linears_skipped"] += 1

    def _trace_to_param(self, node: fx.Node, depth: int = 0) -> tuple[fx.Node | None, list[str]]:
        """The parameter an unmatched matmul operand is computed from, and the ops in between.

        Followed: views and copies (``_PASS_THROUGH``: their first argument), and any op whose tensor
        inputs all come from one parameter (``W * 0.5``, ``W / W.norm()``), so a weight computed from
        a parameter is reported rather than passed over in silence. An op that also reads another
        tensor (an activation, a second parameter) ends the chain: no parameter. Chains longer than
        ``_TRACE_DEPTH`` ops are not followed (an activation's history would be the whole graph).
        """
        if self._param_index(node) is not None:
            return node, []
        if node.op != "call_function" or not node.args or depth >= _TRACE_DEPTH:
            return None, []
        key = (node, depth)
        if key in self._trace_memo:
            return self._trace_memo[key]
        self._trace_memo[key] = result = self._trace_op_to_param(node, depth)
        return result

    def _trace_op_to_param(self, node: fx.Node, depth: int) -> tuple[fx.Node | None, list[str]]:
        name = str(node.target)
        op = name.split(".")[-2] if "." in name else getattr(node.target, "__name__", name)
        if node.target in _PASS_THROUGH:
            inputs = [node.args[0]] if isinstance(node.args[0], fx.Node) else []
        else:
            inputs = node.all_input_nodes
        traced = [self._trace_to_param(i, depth + 1) for i in inputs]
        params = {param for param, _ in traced}
        if len(params) != 1 or None in params:
            return None, [op]
        return traced[0][0], [op, *traced[0][1]]
