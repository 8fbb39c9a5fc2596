"""The ``fp8block`` torch.compile backend.

``torch.compile(model, backend="fp8block", mode=..., options={...})`` finds this function through
the ``torch_dynamo_backends`` entry point. It runs Inductor (``compile_fx``) with freezing on and
``FP8BlockPass`` as the joint-graph pre-pass, so matmuls against parameters become
``fp8inductor::block_linear`` with weights quantized once at compile time.

Importing this module turns Inductor freezing on globally (``torch._inductor.config.freezing``).
Dynamo decides at *trace* time, before any backend runs, whether parameters become frozen graph
constants guarded by identity; only the global flag does that. (``prepare_freezing`` alone omits
the identity guards, and two same-class modules compiled one after the other then silently share
the first one's FP8 weights.) Side effect: ``backend="inductor"`` under ``no_grad`` in the same
process freezes parameters too, as it would with ``freezing=True``.
"""

from __future__ import annotations

import functools
import itertools
import logging
import sys
import warnings
import weakref
from collections import deque
from typing import Any

import torch
import torch._inductor.config as inductor_config

from . import _compat, lowering  # noqa: F401  (registers the block_linear lowering)
from .config import split_options
from .eligibility import module_classes
from .passes import FP8BlockPass, compile_scope, ends_with_path
from .report import RewriteReport

log = logging.getLogger("fp8inductor")

inductor_config.freezing = True

_REPORTS: deque[RewriteReport] = deque(maxlen=64)
_graph_ids = itertools.count()


def reports() -> list[RewriteReport]:
    """Rewrite reports of the most recent fp8block compilations (oldest first, at most 64)."""
    return list(_REPORTS)


def last_report() -> RewriteReport | None:
    """The rewrite report of the most recent fp8block compilation, or None."""
    return _REPORTS[-1] if _REPORTS else None


def _warn_grad_enabled() -> None:
    """Every grad-enabled compile warns (not once per process: each is another model left in high
    precision); the warnings filters still fold repeats from one call site."""
    warnings.warn(
        "fp8block: compiled with gradients enabled, so weights cannot be frozen and quantized; the "
        "model runs as plain Inductor (its linears in high precision; modules already FP8, from quantize_, "
        "stay FP8 with straight-through gradients). Call it under torch.inference_mode() or "
        "torch.no_grad() to get FP8.",
        stacklevel=3,
    )


@functools.cache
def _warn_reference_path(reason: str) -> None:
    warnings.warn(
        f"fp8block: {reason}; FP8 linears run through the reference implementation (correct, slow)", stacklevel=3
    )


def _param_names(gm: torch.fx.GraphModule) -> tuple[list[str], str, tuple[str, ...]]:
    """FQNs of gm's parameters then buffers, in AOTAutograd's placeholder order, the path of the
    traced frame's module within the model (``""`` for the model itself), and the class names of the
    modules from the model down to that one (Dynamo's module stacks start below it; empty where the
    model is not known).

    Dynamo names them relative to the frame it traces. After a graph break inside a layer, that
    frame is the layer's ``forward``: its weights read ``down.weight``, and ``modules_to_not_convert``
    entries written as model paths (``model.layers.1.mlp.down_proj``, the default ``lm_head``) would
    match nothing. So the names are taken from the model being called (``_names_in_calling_model``:
    found on the Python call stack, holding every one of gm's tensors by identity). Where none holds them
    all (modules passed to a compiled function as arguments), Dynamo's names stay; names that two
    arguments share (both ``0.weight``) get the argument's name in front (``dec.0.weight``).
    """
    to_fqn = gm.meta.get("dynamo_flat_name_to_original_fqn", {})
    named = list(gm.named_parameters(remove_duplicate=False)) + list(gm.named_buffers(remove_duplicate=False))
    relative = [to_fqn.get(flat, flat) for flat, _ in named]
    found = _names_in_calling_model([t for _, t in named], relative)
    if found is not None:
        root_names, model = found
        # the frame module's path: "layers.1." from "layers.1.down.weight" and "down.weight" (a tied
        # weight named after its other owner tells nothing; frames of several modules have no one path)
        pairs = zip(root_names, relative)
        prefixes = {full[: len(full) - len(rel)] for full, rel in pairs if ends_with_path(full, rel)}
        prefix = (prefixes.pop() if len(prefixes) == 1 else "").rstrip(".")
        return root_names, prefix, module_classes(model, prefix)
    if len(set(relative)) < len(relative):
        relative = [_with_argument_name(flat, rel) for (flat, _), rel in zip(named, relative)]
    return relative, "", ()


def _names_in_calling_model(
    tensors: list[torch.Tensor], relative: list[str]
) -> tuple[list[str], torch.nn.Module] | None:
    """The tensors' FQNs in the model being called, and that model: the module the innermost
    ``torch.compile`` wrapper on the call stack wraps, where it holds all of them, else the outermost
    ``nn.Module`` found as ``self`` on the stack that does (``model.compile()`` leaves no wrapper).
    None where there is none.

    A tensor registered under several names (a weight shared by two linears) gets the one that ends
    with its Dynamo name ``relative[i]`` (``2.weight``), else its first.
    """
    if not tensors:
        return None
    modules: list[torch.nn.Module] = []
    compiled: list[torch.nn.Module] = []
    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, torch.nn.Module):
            if isinstance(getattr(owner, "_orig_mod", None), torch.nn.Module):  # OptimizedModule
                owner = owner._orig_mod
                compiled.append(owner)
            if not any(owner is m for m in modules):
                modules.append(owner)
        frame = frame.f_back
    for module in compiled[:1] + modules[::-1]:  # the compiled model, else outermost first
        fqns: dict[int, list[str]] = {}
        named = [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]
        for name, t in named:
            fqns.setdefault(id(t), []).append(name)
        if all(id(t) in fqns for t in tensors):
            names = [
                next((n for n in fqns[id(t)] if ends_with_path(n, rel)), fqns[id(t)][0])
                for t, rel in zip(tensors, relative)
            ]
            return names, module
    return None


def _with_argument_name(flat: str, relative: str) -> str:
    """``L__dec___0_weight``, ``0.weight`` -> ``dec.0.weight`` (Dynamo's flat name of a module that
    is a function argument starts with ``L__<argument>___``); other names as they are."""
    if flat.startswith("L__") and "___" in flat[3:]:
        return f"{flat[3:flat.index('___', 3)]}.{relative}"
    return relative


def _check_devices(gm: torch.fx.GraphModule) -> None:
    # Buffers too: a buffer used as a weight converts like a parameter (a meta one failed deep inside).
    devices = {p.device for p in gm.parameters()} | {b.device for b in gm.buffers()}
    if any(d.type == "meta" for d in devices):  # nothing to quantize (a deep "Cannot cast" error before)
        raise ValueError(
            "fp8block: the model has weights on the meta device (not loaded yet); load the weights before compiling"
        )
    if any(d.type == "cpu" for d in devices):
        _warn_reference_path("the model's weights are on the CPU")
    for d in devices:
        if d.type == "cuda" and torch.cuda.get_device_capability(d) < (8, 9):
            _warn_reference_path(f"GPU {d} has compute capability < 8.9")


def fp8block(
    gm: torch.fx.GraphModule,
    example_inputs: list[Any],
    mode: str | None = None,
    options: dict[str, Any] | None = None,
):
    """Dynamo backend: Inductor with FP8 block-scaled linears. See the module docstring."""
    options = dict(options or {})
    # torch.compile refuses mode= together with options=, so options may carry the mode too.
    mode = options.pop("mode", None) if mode is None else mode
    config, inductor_patches = split_options(options)
    patches: dict[str, Any] = {**(torch._inductor.list_mode_options(mode) if mode else {}), **inductor_patches}
    if torch.is_grad_enabled():
        _warn_grad_enabled()
        # a report of its own: last_report() must not show an earlier graph's conversions for this one
        _publish(RewriteReport(note="compiled with gradients enabled: nothing converted (high precision)"))
        return _compat.compile_fx(gm, example_inputs, patches)
    _check_devices(gm)
    patches.update(freezing=True, joint_custom_pre_pass=FP8BlockPass(config))
    # Under coordinate-descent tuning (max-autotune) keep one-row matmuls as mm, or decode skips FP8.
    keep_mm = bool(patches.get("coordinate_descent_tuning", inductor_config.coordinate_descent_tuning))
    with compile_scope(config, *_param_names(gm)) as scope:
        compiled = _compat.compile_fx(gm, example_inputs, patches, keep_one_row_mm=keep_mm)
    _publish(scope.report)
    return _refusing_changed_weights(compiled, gm)


def _refusing_changed_weights(compiled, gm: torch.fx.GraphModule):
    """``compiled``, made to raise if the model's parameters changed dtype or device since compiling.

    Freezing bakes the parameters into the graph as constants, and Dynamo guards them by identity.
    ``model.to(dtype)``, ``.half()``, ``.float()`` and ``.to(device)`` swap ``param.data`` in place
    and keep the Parameter objects, so Dynamo would go on running the old graph: the old weights in
    the old dtype, silently. Each call checks one parameter of each (dtype, device) group of the
    compile, which catches such whole-model conversions at the cost of a few attribute reads.
    Converting only part of a model, or changing weight values in place, is not caught
    (docs/checkpoints.md).
    """
    probes: dict[tuple[torch.dtype, torch.device], torch.nn.Parameter] = {}
    for param in gm.parameters():
        probes.setdefault((param.dtype, param.device), param)
    checks = [(weakref.ref(param), dtype, device) for (dtype, device), param in probes.items()]
    if not checks:
        return compiled

    @functools.wraps(compiled)  # keeps attributes such as ``_boxed_call`` that Dynamo reads
    def run(*args, **kwargs):
        for ref, dtype, device in checks:
            param = ref()
            if param is not None and (param.dtype != dtype or param.device != device):
                raise RuntimeError(
                    f"fp8block: the model's parameters changed from {dtype} on {device} to {param.dtype} on "
                    f"{param.device} after it was compiled (model.to, .half(), .float(), .cuda() ...), and the "
                    "compiled graph holds the old weights as constants. Call fp8inductor.reset() "
                    "(torch.compiler.reset() leaves the old FP8 constants alive) and call the compiled model "
                    "again, or compile after converting."
                )
        return compiled(*args, **kwargs)

    return run


def _publish(report: RewriteReport) -> None:
    report.graph_id = next(_graph_ids)
    _REPORTS.append(report)
    log.info("%s", report)
