"""Which linears become FP8: one pure predicate shared by the graph pass and ``quantize_``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from .config import FP8BlockConfig
from .reference import FLOAT_DTYPES


def skip_reason(
    config: FP8BlockConfig,
    module_paths: Iterable[str | None],
    out_features: int,
    in_features: int,
    weight_dtype: torch.dtype,
    weight: torch.Tensor | None = None,
    module_classes: Sequence[str] = (),
) -> str | None:
    """Why a linear with weight [out_features, in_features] stays in high precision, or None.

    module_paths: every path the linear is known by (its own module, and for tied or shared
    weights the module whose forward runs the matmul); any match in ``modules_to_not_convert``
    skips it. ``module_classes``: class names of the modules from the root to the one that runs the
    matmul (innermost last; for ``is_moe_router``), the last path of ``module_paths`` being that
    module's. ``weight``, when given, is checked for NaN/Inf (a NaN weight would poison every
    output of its block row; better to leave it alone and say so).
    """
    for path in module_paths:
        if path is not None:
            entry = config.skips_module(path)
            if entry is not None:
                return f"modules_to_not_convert entry {entry!r}"
    running = next((p for p in reversed(list(module_paths)) if p is not None), None)
    if not config.convert_routers and is_moe_router(running, module_classes):
        return "MoE router (kept in high precision, as transformers' FP8 loader does; convert_routers=True converts it)"
    if weight_dtype not in FLOAT_DTYPES:
        return f"weight dtype {weight_dtype} is not float32/float16/bfloat16"
    if in_features < config.min_in_features:
        return f"in_features {in_features} < min_in_features {config.min_in_features}"
    if out_features < config.min_out_features:
        return f"out_features {out_features} < min_out_features {config.min_out_features}"
    if weight is not None:
        from torch._subclasses.fake_tensor import unset_fake_temporarily

        with unset_fake_temporarily():  # the graph pass runs under the compile's fake mode
            finite = bool(torch.isfinite(weight).all())
        if not finite:
            return "weight contains NaN or Inf"
    return None


# Router classes: transformers 5's ``MixtralTopKRouter``, ``DeepseekV3TopkRouter``, ``GptOssTopKRouter``, ...
# (``*Router``), DeepSeek's own ``MoEGate``, granite-moe's ``*TopKGating``.
_ROUTER_CLASS_ENDINGS = ("router", "moegate", "topkgating")


def is_moe_router(path: str | None, module_classes: Sequence[str]) -> bool:
    """Whether the matmul of module ``path`` (class names from the root, innermost last) is a
    Mixture-of-Experts router: a module of a router class or anywhere inside one below the MoE block
    (the ``classifier`` of ``SwitchTransformersTop1Router``, ``ZayaRouter``'s MLP; ``HunYuanMoEV1Gate``'s
    ``wg``: an MoE class ending in "gate"), or a module named ``gate`` or ``router`` directly inside
    an MoE block (a class name containing "moe": transformers 4's ``nn.Linear`` gate of
    ``MixtralSparseMoeBlock``, ``Qwen3MoeSparseMoeBlock``, ...). A non-MoE class named like a router
    (``GraniteDoclingDensityRouter``) counts too: its linears stay in high precision (speed only)."""
    lowered = [c.lower() for c in module_classes]
    for cls in reversed(lowered):  # from the module up to the nearest MoE block
        if cls.endswith(_ROUTER_CLASS_ENDINGS) or ("moe" in cls and cls.endswith("gate")):
            return True
        if "moe" in cls:
            break
    name = path.rsplit(".", 1)[-1] if path else ""
    return name in ("gate", "router") and len(lowered) >= 2 and "moe" in lowered[-2]


def module_classes(model: torch.nn.Module, path: str) -> tuple[str, ...]:
    """Class names of ``model`` and of the modules down to ``path`` within it, outermost first; empty
    where ``path`` does not name a submodule."""
    classes, module = [type(model).__name__], model
    for part in path.split(".") if path else []:
        module = getattr(module, part, None)
        if not isinstance(module, torch.nn.Module):
            return ()
        classes.append(type(module).__name__)
    return tuple(classes)
