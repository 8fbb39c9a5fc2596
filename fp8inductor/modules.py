"""``FP8BlockLinear`` and ``quantize_``: FP8 block-quantized linears as eager modules.

``quantize_(model)`` swaps every eligible ``nn.Linear`` and GPT-2 ``Conv1D`` in place for an
``FP8BlockLinear`` holding ``weight`` (float8_e4m3fn [N, K]) and ``weight_scale_inv`` (float32
[ceil(N/128), ceil(K/128)]) — the tensor names of the FineGrainedFP8 checkpoint format — and
frees the high-precision weight. Its forward calls ``torch.ops.fp8inductor.block_linear``, so it
runs eagerly (CPU reference, CUDA Triton kernels) and under ``backend="fp8block"``, which sees the
op and does not quantize again. Eligibility is the backend's (``fp8inductor.eligibility``).

``convert_transformers_fp8_(model)`` swaps transformers' own FineGrainedFP8 ``FP8Linear`` modules
(what ``from_pretrained`` keeps on an FP8 GPU) for ``FP8BlockLinear``, sharing their tensors.
``release_bf16_weights(model)`` is the memory exit of the backend-only route: it converts the
model with ``quantize_`` and drops every compiled graph, so neither the high-precision weights
nor the graphs' own FP8 copies stay alive.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from . import _compat, ops
from .config import FP8BlockConfig, matching_entry, split_options
from .eligibility import module_classes, skip_reason
from .reference import E8M0_DTYPE, FLOAT_DTYPES, FP8_DTYPE, SCALE_FMTS, check_one_device, check_weight_scale, widen_e8m0

log = logging.getLogger("fp8inductor")

# transformers' FineGrainedFP8 linear is recognised by its class name (``FP8Linear`` in every version
# since 4.50, and in vendored copies of the integration); ``FP8GroupedLinear`` (block-diagonal),
# ``FP8Experts`` and ``FP8Embedding`` are different operations and are left alone. The attribute
# names differ between versions only in ways listed here; the first one present is used.
_TRANSFORMERS_FP8_LINEAR = "FP8Linear"
_SCALE_ATTRS = ("weight_scale_inv", "weight_scales_inv")
_BLOCK_ATTRS = ("block_size", "weight_block_size")
_BLOCK = (128, 128)
# FP8BlockLinear's buffers and the dtypes they may be given (e8m0 scales, as transformers 5 stores ue8m0
# ones, are widened to float32 when loaded or assigned: exact; the module always holds float32).
_FP8_BUFFERS = {
    "weight": (FP8_DTYPE,),
    "weight_scale_inv": tuple(d for d in (torch.float32, E8M0_DTYPE) if d is not None),
}


def _dtype_of(value: Any) -> torch.dtype | None:
    return value.dtype if isinstance(value, torch.Tensor) else None


class FP8BlockLinear(nn.Module):
    """y = block_linear(x, weight, weight_scale_inv, bias); x [..., in_features] -> y [..., out_features]."""

    def __init__(
        self,
        weight: torch.Tensor,
        weight_scale_inv: torch.Tensor,
        bias: torch.Tensor | None = None,
        scale_fmt: str = "float",
        replaces: str | None = None,
    ) -> None:
        """weight: [N, K] float8_e4m3fn; weight_scale_inv: [ceil(N/128), ceil(K/128)] float32; bias: [N].

        replaces: the class name of the module this one replaces ("Linear", "Conv1D", "FP8Linear"), as
        ``quantize_``, ``convert_transformers_fp8_`` and ``load_quantized_`` pass it; None if unknown."""
        super().__init__()
        check_weight_scale(weight, weight_scale_inv, _BLOCK, name="FP8BlockLinear")
        if scale_fmt not in SCALE_FMTS:
            raise ValueError(f"FP8BlockLinear: scale_fmt must be one of {SCALE_FMTS}, got {scale_fmt!r}")
        self.out_features, self.in_features = weight.shape
        if bias is not None and (bias.dtype not in FLOAT_DTYPES or tuple(bias.shape) != (self.out_features,)):
            raise ValueError(
                f"FP8BlockLinear: bias must be a float32/float16/bfloat16 [{self.out_features}] tensor, "
                f"got {bias.dtype} {tuple(bias.shape)}"
            )
        check_one_device("FP8BlockLinear", weight, weight_scale_inv, bias)
        self.scale_fmt = scale_fmt
        # transformers can load an FP8 Conv1D from no checkpoint (``checkpoint.save_pretrained`` checks
        # it). Not saved: the model's own modules tell it again when a checkpoint is loaded.
        self.replaces = replaces
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale_inv", weight_scale_inv)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    @classmethod
    def from_weight(
        cls,
        weight_nk: torch.Tensor,
        bias: torch.Tensor | None = None,
        config: FP8BlockConfig | None = None,
        replaces: str | None = None,
    ) -> FP8BlockLinear:
        """Quantize a high-precision weight [N, K] (SPEC numerics) into a new module."""
        config = config or FP8BlockConfig()
        q, s = ops.quantize_weight(weight_nk.detach(), *config.weight_block_size, config.scale_fmt)
        return cls(q, s, None if bias is None else bias.detach().clone(), config.scale_fmt, replaces)

    @classmethod
    def from_transformers(cls, module: nn.Module, path: str, scale_fmt: str | None = None) -> FP8BlockLinear:
        """A module sharing the tensors of transformers' ``FP8Linear`` ``module`` (no copy).

        ``path`` names the module in errors. ``scale_fmt`` None: "ue8m0" when the scales are stored
        as float8_e8m0fnu, else "float". e8m0 scales are widened to float32 (exact; the one copy,
        [ceil(N/128), ceil(K/128)] floats); the weight and bias are always shared.
        """
        _check_transformers_fp8_linear(module, path)
        weight = module.weight.detach()  # [N, K] float8_e4m3fn, same storage
        scale = _first_attr(module, _SCALE_ATTRS, path).detach()  # [ceil(N/128), ceil(K/128)]
        e8m0 = E8M0_DTYPE is not None and scale.dtype == E8M0_DTYPE
        scale = widen_e8m0(scale)
        check_weight_scale(weight, scale, _BLOCK, name=f"{path}.weight")
        if scale.device != weight.device:
            raise ValueError(f"{path}: weight is on {weight.device} but its weight_scale_inv on {scale.device}")
        bias = None if module.bias is None else module.bias.detach()  # [N]
        if bias is not None and tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(f"{path}.bias: shape {tuple(bias.shape)}, expected ({weight.shape[0]},)")
        return cls(weight, scale, bias, scale_fmt or ("ue8m0" if e8m0 else "float"), type(module).__name__)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.block_linear(x, self.weight, self.weight_scale_inv, self.bias, 128, self.scale_fmt)

    def __setattr__(self, name: str, value: Any) -> None:
        """The weight and its scales keep their dtypes: assigning a high-precision tensor (transformers'
        ``tie_weights`` putting the embedding's bf16 weight on an FP8 ``lm_head``) left the old scales
        beside it and failed at the next forward, deep in the op."""
        want = _FP8_BUFFERS.get(name)
        if want is not None and name in self.__dict__.get("_buffers", {}):
            if _dtype_of(value) not in want:
                raise TypeError(
                    f"FP8BlockLinear.{name} must stay {' or '.join(map(str, want))}, got {_dtype_of(value)}: an "
                    "FP8 linear cannot take a high-precision weight (tied to an embedding? keep this module out "
                    "of the conversion with modules_to_not_convert, or untie)"
                )
            if name == "weight_scale_inv":
                value = widen_e8m0(value)  # the op takes float32 scales (load_state_dict(assign=True) once
                # stored e8m0 ones as they were, and the next forward failed)
        super().__setattr__(name, value)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        """Refuse a state dict whose weight is not FP8 (a high-precision checkpoint: ``copy_`` would cast
        it to e4m3 codes under the old scales, silently wrong, even with strict=False), or that brings
        the weight without its scales or the reverse."""
        errors = []
        for name, want in _FP8_BUFFERS.items():
            t = state_dict.get(prefix + name)
            if t is not None and _dtype_of(t) not in want:
                errors.append(
                    f"{prefix}{name}: FP8BlockLinear holds {' or '.join(map(str, want))}, the state dict has "
                    f"{_dtype_of(t)} (a high-precision checkpoint loads into the unconverted model, then quantize_; "
                    "FP8 checkpoints: fp8inductor.checkpoint.load_quantized_)"
                )
        if (prefix + "weight" in state_dict) != (prefix + "weight_scale_inv" in state_dict):
            errors.append(f"{prefix}weight and {prefix}weight_scale_inv must be loaded together (codes need scales)")
        if errors:
            error_msgs.extend(errors)  # load_state_dict raises on these, strict or not
            return
        scale = state_dict.get(prefix + "weight_scale_inv")
        if scale is not None:  # (load_state_dict passes its own shallow copy of the caller's dict)
            state_dict[prefix + "weight_scale_inv"] = widen_e8m0(scale)  # for assign=True and swap too
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def _apply(self, fn, recurse=True):
        """``model.to(dtype)``, ``.half()``, ``.bfloat16()``, ``.float()`` convert every floating-point
        tensor, float8 included: that would round the fp32 scales and turn the FP8 codes into
        high-precision copies. The weight and scales keep their dtypes (they still move between
        devices); the bias follows the model's dtype like any parameter."""
        fixed = (self.weight, self.weight_scale_inv)

        def keep_dtype(t: torch.Tensor) -> torch.Tensor:
            if any(t is f for f in fixed):
                probe = fn(t[:0])  # where fn sends it, without a full high-precision copy of the codes
                if probe.dtype != t.dtype:
                    return t.to(device=probe.device)  # from the original: nothing was lost
            return fn(t)

        return super()._apply(keep_dtype, recurse)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, scale_fmt={self.scale_fmt}"
        )


def is_transformers_fp8_linear(module: nn.Module) -> bool:
    """True for transformers' FineGrainedFP8 ``FP8Linear`` (any version; matched by class name)."""
    return type(module).__name__ == _TRANSFORMERS_FP8_LINEAR and isinstance(
        getattr(module, "weight", None), torch.Tensor
    )


def _first_attr(module: nn.Module, names: tuple[str, ...], path: str) -> Any:
    for name in names:
        if hasattr(module, name):
            return getattr(module, name)
    raise ValueError(f"{path}: {type(module).__name__} has none of the attributes {names}")


def _check_transformers_fp8_linear(module: nn.Module, path: str) -> None:
    """Clear errors for an ``FP8Linear`` that ``FP8BlockLinear`` cannot run as it is."""
    block = _first_attr(module, _BLOCK_ATTRS, path)
    if block is None:
        raise ValueError(f"{path}: per-tensor FP8 (block_size None) is not supported; only 128x128 blocks")
    if not isinstance(block, (tuple, list)) or tuple(block) != _BLOCK:
        shown = tuple(block) if isinstance(block, (tuple, list)) else block
        raise ValueError(f"{path}: block_size {shown!r} is not supported; only 128x128 blocks")
    scheme = str(getattr(module, "activation_scheme", "dynamic")).lower()
    if scheme != "dynamic":
        raise ValueError(
            f"{path}: activation_scheme {scheme!r} is not supported; only 'dynamic' (per-token 1x128 activation scales)"
        )
    if getattr(module, "activation_scale", None) is not None:
        raise ValueError(f"{path}: a stored (static) activation_scale is not supported; only dynamic activation scales")
    if module.weight.is_meta:
        raise ValueError(f"{path}: the weight is on the meta device (not loaded yet)")


def _declared_scale_fmt(model: nn.Module) -> str | None:
    """``scale_fmt`` of the model's transformers ``quantization_config`` (object or dict), if any."""
    qc = getattr(getattr(model, "config", None), "quantization_config", None)
    fmt = qc.get("scale_fmt") if isinstance(qc, Mapping) else getattr(qc, "scale_fmt", None)
    return fmt if fmt in SCALE_FMTS else None


def _plan_transformers_fp8(
    model: nn.Module, skip: FP8BlockConfig | None, scale_fmt: str | None
) -> tuple[list[tuple[str, FP8BlockLinear]], dict[str, str]]:
    """Build (path, replacement) for every ``FP8Linear`` of ``model`` without changing it.

    A module reachable by several paths gets one replacement used at each path. Modules that
    ``skip.modules_to_not_convert`` matches are left out: {path: reason}.
    """
    if scale_fmt is not None and scale_fmt not in SCALE_FMTS:
        raise ValueError(f"scale_fmt must be one of {SCALE_FMTS} or None, got {scale_fmt!r}")
    scale_fmt = scale_fmt or _declared_scale_fmt(model)
    swaps: list[tuple[str, FP8BlockLinear]] = []
    skipped: dict[str, str] = {}
    found: dict[int, tuple[nn.Module, list[str]]] = {}  # id -> (module, its paths)
    for path, module in model.named_modules(remove_duplicate=False):
        if is_transformers_fp8_linear(module):
            found.setdefault(id(module), (module, []))[1].append(path)
    for module, paths in found.values():
        # one module, one decision at every path (as quantize_ does for nn.Linear): any path that
        # modules_to_not_convert matches, or a swap that would drop its hooks, skips it everywhere
        entry = None if skip is None else next(filter(None, map(skip.skips_module, paths)), None)
        reason = f"modules_to_not_convert entry {entry!r}" if entry else _swap_drops_hooks(module)
        if reason is not None:
            skipped.update(dict.fromkeys(paths, reason))
            continue
        new = FP8BlockLinear.from_transformers(module, paths[0], scale_fmt)
        swaps.extend((path, new) for path in paths)
    return swaps, skipped


def _swap_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, new)


def convert_transformers_fp8_(model: nn.Module, scale_fmt: str | None = None) -> list[str]:
    """Swap transformers' FineGrainedFP8 ``FP8Linear`` modules for ``FP8BlockLinear``; returns their paths.

    transformers keeps ``FP8Linear`` modules when it loads a ``FineGrainedFP8Config`` checkpoint on
    an FP8 GPU; their forward fetches its GEMM kernel from the Hugging Face Hub at run time
    (``kernels``), which fails offline. After this call the model runs on fp8inductor's ops (CPU
    reference, Triton on CUDA), eagerly or under ``torch.compile(backend="fp8block")`` (which sees
    them as FP8 already and quantizes nothing again); nothing is downloaded.

    The new modules share the ``FP8Linear`` tensors (same storage: ``weight`` float8_e4m3fn [N, K],
    ``weight_scale_inv`` float32 [ceil(N/128), ceil(K/128)], ``bias`` [N]); only float8_e8m0fnu
    scales are widened to a new float32 tensor. ``scale_fmt`` None takes the model's
    ``config.quantization_config.scale_fmt``, else "ue8m0" for e8m0 scales, else "float".

    Every module is checked before any is replaced: an unsupported block size (only 128x128), a
    static activation scheme, a weight on the meta device, or wrong dtypes/shapes raise
    ValueError/TypeError naming the module path, and the model is left unchanged.
    ``FP8GroupedLinear``, ``FP8Experts`` and ``FP8Embedding`` are not converted.
    """
    model = unwrap_compiled(model)
    _check_not_a_root_linear(model, "convert_transformers_fp8_")
    swaps, skipped = _plan_transformers_fp8(model, None, scale_fmt)
    for path, reason in skipped.items():
        log.warning("fp8inductor: convert_transformers_fp8_ leaves %s as it is: %s", path, reason)
    for path, new in swaps:
        _swap_module(model, path, new)
    return [path for path, _ in swaps]


def _linear_weight_nk(module: nn.Module) -> torch.Tensor | None:
    """The module's weight as [N, K] (a view for Conv1D, stored [K, N]), or None if not a linear."""
    if isinstance(module, nn.Linear):
        return module.weight
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf") and getattr(module, "weight", None) is not None:
        return module.weight.t()  # transformers' GPT-2 Conv1D stores [K, N]
    return None


def quantize_(model: nn.Module, config: FP8BlockConfig | Mapping[str, Any] | None = None) -> dict[str, str]:
    """Swap eligible linears of ``model`` in place for ``FP8BlockLinear``; returns {path: skip reason}.

    The high-precision weights of converted modules are dropped from the model (their storage is
    freed once nothing else references it; tied weights stay alive through their other user).
    transformers ``FP8Linear`` modules (already FP8) are converted as ``convert_transformers_fp8_``
    does, sharing their tensors and keeping their checkpoint's scale format, unless
    ``modules_to_not_convert`` matches them; ``min_in_features``/``min_out_features`` do not apply
    to them (there is nothing to quantize).

    A module reachable by several paths is converted once and swapped at each (or skipped at each).
    Linears whose owner reads their weight directly instead of calling them (``nn.MultiheadAttention``'s
    ``out_proj``, ``nn.TransformerEncoderLayer``'s ``linear1``/``linear2``) are skipped with that
    reason; so are ``nn.Linear`` subclasses with a forward of their own, modules with forward hooks
    or an instance-level forward (the swap would drop them), and transformers'
    ``_keep_in_fp32_modules``. A model that is itself a linear, or holds meta-device weights, is a
    ValueError. ``config``: an ``FP8BlockConfig`` or a ``torch.compile`` ``options`` dict.
    """
    config = _as_config(config)
    model = unwrap_compiled(model)  # (the wrapper keeps calling the model it holds: swaps there take effect)
    _check_not_a_root_linear(model, "quantize_")
    fp8_swaps, skipped = _plan_transformers_fp8(model, config, None)
    # A module reachable by several paths (shared) is one linear: converted at every path, or skipped
    # at every path (any path that modules_to_not_convert matches skips it). All are collected before
    # any swap, so a meta weight raises with the model unchanged.
    linears: dict[int, tuple[nn.Module, list[str]]] = {}  # id -> (module, its paths)
    for path, module in model.named_modules(remove_duplicate=False):
        w = None if not path or is_transformers_fp8_linear(module) else _linear_weight_nk(module)
        if w is None:
            continue
        if isinstance(w, nn.parameter.UninitializedParameter):
            raise ValueError(f"quantize_: {path}: the weight is not initialized (a lazy module); run a forward first")
        if w.is_meta:
            raise ValueError(f"quantize_: {path}: the weight is on the meta device; load the weights first")
        linears.setdefault(id(module), (module, []))[1].append(path)
    read_directly = _weights_read_directly(model)
    keep_fp32 = _keep_in_fp32_entries(model)
    owners = _weight_owners(model)
    for key in list(linears):  # swapped one by one: a bf16 weight is freed as its FP8 copy lands
        module, paths = linears.pop(key)
        w = _linear_weight_nk(module)
        n, k = w.shape
        # modules_to_not_convert also matches the weight's owner, as in the graph pass (which names a
        # tied weight by its first owner): else a linear whose tied weight belongs to a listed module
        # would convert here while the backend leaves it, and release_bf16_weights would change it.
        owner = owners.get(id(module.weight))
        reason = (
            read_directly.get(key)
            or _swap_loses_behaviour(module)
            or _kept_in_fp32(paths, keep_fp32)
            or skip_reason(config, [owner, *paths], n, k, w.dtype, w, module_classes(model, paths[-1]))
        )
        if reason is not None:
            skipped.update(dict.fromkeys(paths, reason))
            continue
        new = FP8BlockLinear.from_weight(w, module.bias, config, type(module).__name__)
        del module, w
        for path in paths:
            _swap_module(model, path, new)
    for path, new in fp8_swaps:
        _swap_module(model, path, new)
    skipped.update(_unconverted_3d_experts(model))
    return skipped


def _unconverted_3d_experts(model: nn.Module) -> dict[str, str]:
    """{path: reason} for MoE expert modules (named ``experts``) holding their weights as 3-D
    parameters (transformers 5's ``gate_up_proj`` [E, 2I, H], ``down_proj``): no linear to swap, and no
    FP8 grouped GEMM here, so they stay in high precision; listed so the caller sees it."""
    found = {}
    for path, module in model.named_modules():
        if path.rsplit(".", 1)[-1] != "experts" or any(p.dtype == FP8_DTYPE for p in module.parameters()):
            continue  # (transformers' FP8Experts: FP8 already, its 3-D float32 scales are no weights)
        shapes = [
            f"{name} {list(p.shape)}"
            for name, p in module.named_parameters(recurse=False)
            if p.dim() == 3 and p.dtype in FLOAT_DTYPES
        ]
        if shapes:
            found[path] = f"MoE experts as 3-D parameters ({', '.join(shapes)}): not converted, no FP8 grouped GEMM"
    return found


def _weight_owners(model: nn.Module) -> dict[int, str]:
    """id(parameter) -> the module path of its first name in ``model.named_parameters()`` (the name
    Dynamo gives a tied parameter, hence the owner the graph pass checks)."""
    return {id(p): name.rpartition(".")[0] for name, p in model.named_parameters()}


def _swap_loses_behaviour(module: nn.Module) -> str | None:
    """Why replacing ``module`` by an ``FP8BlockLinear`` would change what it computes, or None: an
    ``nn.Linear`` subclass with a forward of its own, a forward replaced on the instance (as
    accelerate's hooks do), or forward hooks / pre-hooks registered on it. The backend's graph pass
    sees the traced matmul instead, so it still converts these."""
    if isinstance(module, nn.Linear) and type(module).forward is not nn.Linear.forward:
        return f"{type(module).__name__} overrides nn.Linear.forward"
    return _swap_drops_hooks(module)


def _swap_drops_hooks(module: nn.Module) -> str | None:
    """Why swapping ``module`` for another module would drop behaviour attached to this instance (a
    forward replaced on it, forward hooks or pre-hooks), or None. Also checked for transformers'
    ``FP8Linear``, whose own forward the swap replaces by design."""
    if "forward" in vars(module):
        return "its forward is replaced on the instance (e.g. an accelerate hook)"
    hooks = [name for name in ("_forward_hooks", "_forward_pre_hooks") if getattr(module, name, None)]
    if hooks:
        return f"it has {' and '.join(h.strip('_').replace('_', ' ') for h in hooks)}, which the swap would drop"
    return None


def _keep_in_fp32_entries(model: nn.Module) -> tuple[str, ...]:
    """transformers' ``_keep_in_fp32_modules`` (and ``_strict``) of the model's pretrained modules:
    modules whose owners cast activations to their weight's dtype (T5's ``wo``), which an FP8 weight
    would turn into a cast to float8."""
    entries: list[str] = []
    for module in model.modules():
        for attr in ("_keep_in_fp32_modules", "_keep_in_fp32_modules_strict"):
            names = getattr(module, attr, None)
            if isinstance(names, (list, tuple, set)):
                entries.extend(n for n in names if isinstance(n, str) and n and n not in entries)
    return tuple(entries)


def _kept_in_fp32(paths: list[str], entries: tuple[str, ...]) -> str | None:
    for path in paths:
        entry = matching_entry(path, entries)
        if entry is not None:
            return f"transformers' _keep_in_fp32_modules entry {entry!r}"
    return None


def _weights_read_directly(model: nn.Module) -> dict[int, str]:
    """{id(linear): why} for linears whose owner reads ``.weight`` / ``.bias`` itself instead of calling
    their forward, and would get the FP8 codes: ``nn.MultiheadAttention``'s ``out_proj``, and
    ``nn.TransformerEncoderLayer``'s ``linear1``/``linear2`` (its inference fast path). The backend
    converts these matmuls in the traced graph; only the eager module swap must leave them."""
    found: dict[int, str] = {}
    for owner in model.modules():
        if isinstance(owner, nn.MultiheadAttention):
            found[id(owner.out_proj)] = "out_proj of nn.MultiheadAttention, which reads its weight directly"
        elif isinstance(owner, nn.TransformerEncoderLayer):
            for name in ("linear1", "linear2"):
                found[id(getattr(owner, name))] = (
                    f"{name} of nn.TransformerEncoderLayer, whose fast path reads its weight directly"
                )
    return found


def unwrap_compiled(model: nn.Module) -> nn.Module:
    """The model inside ``torch.compile``'s wrapper (an ``OptimizedModule``), else ``model`` itself."""
    inner = getattr(model, "_orig_mod", None)
    return inner if isinstance(inner, nn.Module) else model


def _check_not_a_root_linear(model: nn.Module, who: str) -> None:
    """The in-place converters replace submodules; a model that is itself a linear has no parent to
    put the replacement in."""
    if _linear_weight_nk(model) is not None or is_transformers_fp8_linear(model):
        raise ValueError(
            f"{who}: the model itself is a linear ({type(model).__name__}); it cannot be replaced in place. "
            "Wrap it (e.g. nn.Sequential(linear)) or build the module with FP8BlockLinear.from_weight"
        )


def release_bf16_weights(
    model: nn.Module, config: FP8BlockConfig | Mapping[str, Any] | None = None
) -> dict[str, str]:
    """Free the high-precision weights that a ``backend="fp8block"`` compile leaves in ``model``.

    Compiling a bf16 model with the backend quantizes the weights into the compiled graph (Inductor
    freezing) while ``model`` keeps its bf16 parameters: both copies stay alive. This converts
    ``model`` in place with ``quantize_`` (the same ``torch.ops.fp8inductor.quantize_weight``, so
    the FP8 bytes equal the compiled graph's) and then drops every compiled graph of the process
    (``torch.compiler.reset()`` plus Inductor's in-memory module cache, which holds the frozen
    FP8 constants). The next call of the compiled model recompiles against the FP8 modules (same
    output) and quantizes nothing.

    Global: every other ``torch.compile``d function in the process recompiles on its next call.
    ``config``: the ``FP8BlockConfig`` or the ``torch.compile`` ``options`` dict the model was
    compiled with (``modules_to_not_convert``, ``scale_fmt``); Inductor options in it are ignored.
    ``model`` may be the ``torch.compile`` wrapper. Returns ``quantize_``'s {path: skip reason}.
    """
    model = unwrap_compiled(model)
    skipped = quantize_(model, _as_config(config))
    reset()
    return skipped


def _as_config(config: FP8BlockConfig | Mapping[str, Any] | None) -> FP8BlockConfig:
    if config is None or isinstance(config, FP8BlockConfig):
        return config or FP8BlockConfig()
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be an FP8BlockConfig or a dict of its options, got {type(config).__name__}")
    options = {k: v for k, v in config.items() if k != "mode"}
    return split_options(options)[0]


def reset() -> None:
    """Drop every compiled graph of the process and the constants (FP8 weights) they hold: use it
    instead of ``torch.compiler.reset()`` after changing weights in place or converting a compiled
    model (``.to``, ``.half()``), before calling it again.

    ``torch.compiler.reset()`` clears Dynamo's caches, but Inductor's ``PyCodeCache`` (and
    ``sys.modules``) keep each loaded output module, whose globals hold the frozen constants: each
    such cycle would leave one more FP8 copy of the weights alive (measured on torch 2.13, CPU:
    4 MiB more per cycle for 4 MiB of FP8 weights). Global, as ``torch.compiler.reset()``: every
    ``torch.compile``d function of the process recompiles on its next call.
    """
    torch.compiler.reset()
    _compat.forget_inductor_output_modules()
    for _ in range(4):  # compiled graphs sit in reference cycles whose finalizers free further cycles
        if not gc.collect():
            break
