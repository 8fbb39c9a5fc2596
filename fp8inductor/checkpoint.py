"""FineGrainedFP8 checkpoints (SPEC section 3): save and load without requantizing.

Per converted linear ``P``: ``P.weight`` float8_e4m3fn [N, K], ``P.weight_scale_inv`` float32
[ceil(N/128), ceil(K/128)] (a multiplier), ``P.bias`` unchanged; ``config.json`` carries
``quantization_config = {"quant_method": "fp8", "activation_scheme": "dynamic",
"weight_block_size": [128, 128], "modules_to_not_convert": [...]}`` (+ ``"scale_fmt": "ue8m0"``).
Files are safetensors only.

* ``save_pretrained(model, path)``: a transformers model whose linears ``fp8inductor.quantize_``
  converted; writes the format above through ``model.save_pretrained`` (transformers itself loads it).
* ``load_quantized_(model, path)``: loads such a checkpoint (ours, transformers', DeepSeek's) into a
  model built from its config: every ``P`` with a ``P.weight_scale_inv`` becomes an ``FP8BlockLinear``
  holding the stored bytes as they are; everything else loads into the model. Malformed files are a
  clear error naming the tensor.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .config import FP8BlockConfig
from .modules import FP8BlockLinear, _linear_weight_nk
from .reference import FP8_DTYPE, check_weight_scale

SCALE_SUFFIX = ".weight_scale_inv"


def quantization_config(model: nn.Module, config: FP8BlockConfig | None = None) -> dict:
    """The ``quantization_config`` of ``model`` as converted by ``quantize_`` (SPEC section 3)."""
    config = config or FP8BlockConfig()
    kept = [path for path, mod in model.named_modules() if _linear_weight_nk(mod) is not None and path]
    qc = {
        "quant_method": "fp8",
        "activation_scheme": "dynamic",
        "weight_block_size": list(config.weight_block_size),
        "modules_to_not_convert": sorted(set(kept) | {"lm_head"}),
    }
    if config.scale_fmt == "ue8m0":
        qc["scale_fmt"] = "ue8m0"
    return qc


def save_pretrained(model: nn.Module, path: str | Path, config: FP8BlockConfig | None = None) -> None:
    """Write a transformers model with ``FP8BlockLinear`` modules in the FineGrainedFP8 format."""
    fp8 = [m for m in model.modules() if isinstance(m, FP8BlockLinear)]
    if not fp8:
        raise ValueError("save_pretrained: the model has no FP8BlockLinear modules; call fp8inductor.quantize_ first")
    if not hasattr(model, "save_pretrained") or not hasattr(model, "config"):
        raise TypeError("save_pretrained: expected a transformers PreTrainedModel")
    fmts = {m.scale_fmt for m in fp8}
    if len(fmts) > 1:
        raise ValueError(f"save_pretrained: mixed scale formats {sorted(fmts)}")
    model.config.quantization_config = quantization_config(model, FP8BlockConfig(scale_fmt=fmts.pop()))
    model.save_pretrained(str(path), safe_serialization=True)


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not files:
        if path.is_dir() and (any(path.glob("*.bin")) or any(path.glob("*.pt"))):
            raise ValueError(f"{path}: only safetensors checkpoints are read (no pickle)")
        raise FileNotFoundError(f"{path}: no .safetensors files")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        with safe_open(str(f), "pt") as reader:
            for key in reader.keys():
                if key in tensors:
                    raise ValueError(f"{f}: tensor {key!r} appears in two files")
                tensors[key] = reader.get_tensor(key)
    return tensors


def _scale_fmt(path: Path) -> str:
    cfg_file = path / "config.json" if path.is_dir() else None
    if cfg_file is None or not cfg_file.exists():
        return "float"
    qc = json.loads(cfg_file.read_text()).get("quantization_config") or {}
    fmt = qc.get("scale_fmt", "float")
    if qc.get("weight_block_size", [128, 128]) != [128, 128]:
        raise ValueError(f"{cfg_file}: weight_block_size {qc['weight_block_size']} is not supported (only [128, 128])")
    return fmt


def load_quantized_(model: nn.Module, path: str | Path) -> list[str]:
    """Load a FineGrainedFP8 checkpoint into ``model`` in place; returns the converted module paths.

    ``model`` is built from the checkpoint's config (high-precision modules). The FP8 bytes and
    scales are used as stored (never requantized); ue8m0 scales stored as float8_e8m0fnu are
    widened to float32 exactly.
    """
    path = Path(path)
    tensors = _normalize_names(_read_tensors(path))
    scale_fmt = _scale_fmt(path)
    converted: list[str] = []
    for key in sorted(k for k in tensors if k.endswith(SCALE_SUFFIX)):
        prefix = key[: -len(SCALE_SUFFIX)]
        wkey = f"{prefix}.weight"
        if wkey not in tensors:
            raise ValueError(f"checkpoint: {key} has no {wkey}")
        weight, scale = tensors.pop(wkey), tensors.pop(key)
        if scale.dtype == getattr(torch, "float8_e8m0fnu", None):
            scale = scale.float()  # powers of two: exact
        check_weight_scale(weight, scale, (128, 128), name=wkey)
        try:
            module = model.get_submodule(prefix)
        except AttributeError as e:
            raise ValueError(f"checkpoint: {wkey} has no module {prefix!r} in the model") from e
        w_nk = _linear_weight_nk(module)
        if w_nk is None:
            raise ValueError(f"checkpoint: {wkey} is FP8 but {prefix!r} is a {type(module).__name__}, not a linear")
        if tuple(w_nk.shape) != tuple(weight.shape):
            raise ValueError(f"checkpoint: {wkey} has shape {tuple(weight.shape)}, the model expects {tuple(w_nk.shape)}")
        bias = tensors.pop(f"{prefix}.bias", None)
        if (bias is None) != (module.bias is None):
            raise ValueError(f"checkpoint: {prefix}.bias is {'missing' if bias is None else 'unexpected'}")
        new = FP8BlockLinear(weight, scale, None if bias is None else bias.to(module.bias.dtype), scale_fmt)
        parent, _, name = prefix.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, name, new)
        converted.append(prefix)
    stray = [k for k, t in tensors.items() if t.dtype == FP8_DTYPE]
    if stray:
        raise ValueError(f"checkpoint: FP8 tensor {stray[0]} has no weight_scale_inv")
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if not k.endswith(SCALE_SUFFIX) and not _is_fp8_weight(model, k)]
    tied = _tied_names(model)
    missing = [k for k in missing if k not in tied]
    if unexpected:
        raise ValueError(f"checkpoint: unexpected tensor {unexpected[0]}")
    if missing:
        raise ValueError(f"checkpoint: missing tensor {missing[0]}")
    return converted


def _normalize_names(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DeepSeek's converted checkpoints (and DeepSeek-V4-Flash) name the block scale ``P.scale``."""
    for key in [k for k in tensors if k.endswith(".scale")]:
        prefix = key[: -len(".scale")]
        w = tensors.get(f"{prefix}.weight")
        if w is not None and w.dtype == FP8_DTYPE and f"{prefix}{SCALE_SUFFIX}" not in tensors:
            tensors[f"{prefix}{SCALE_SUFFIX}"] = tensors.pop(key)
    return tensors


def _is_fp8_weight(model: nn.Module, key: str) -> bool:
    prefix, _, attr = key.rpartition(".")
    try:
        return isinstance(model.get_submodule(prefix), FP8BlockLinear) and attr in ("weight", "bias")
    except AttributeError:
        return False


def _tied_names(model: nn.Module) -> set[str]:
    """Names of parameters that share storage with another (tied embeddings are saved once)."""
    seen: dict[int, str] = {}
    tied: set[str] = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            tied.add(name)
        seen.setdefault(id(p), name)
    return tied
