"""FineGrainedFP8 checkpoints (SPEC section 3): save and load without requantizing.

Per converted linear ``P``: ``P.weight`` float8_e4m3fn [N, K], ``P.weight_scale_inv`` float32
[ceil(N/128), ceil(K/128)] (a multiplier), ``P.bias`` unchanged; ``config.json`` carries
``quantization_config = {"quant_method": "fp8", "activation_scheme": "dynamic",
"weight_block_size": [128, 128], "modules_to_not_convert": [...]}`` (+ ``"scale_fmt": "ue8m0"``).
Files are safetensors only.

* ``save_pretrained(model, path)``: a transformers model whose linears ``fp8inductor.quantize_``
  converted; writes the format above through ``model.save_pretrained`` (transformers itself loads it;
  FP8 GPT-2 ``Conv1D`` layers it cannot, so those need ``transformers_loadable=False``).
* ``load_quantized_(model, path)``: loads such a checkpoint (ours, transformers', DeepSeek's) into a
  model built from its config: every ``P`` with a ``P.weight_scale_inv`` becomes an ``FP8BlockLinear``
  holding the stored bytes as they are; everything else loads into the model.

Errors: every malformed checkpoint raises ``CheckpointError`` (a ``ValueError``) whose message names
the file and, where one is at fault, the tensor; a wrong dtype raises ``CheckpointDtypeError``, a
``CheckpointError`` that is also a ``TypeError``. A missing path raises ``FileNotFoundError``. The
whole checkpoint is checked before the model is touched: after an error the model is unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from .config import FP8BlockConfig
from .modules import FP8BlockLinear, _linear_weight_nk, _swap_module, is_transformers_fp8_linear, unwrap_compiled
from .reference import E8M0_DTYPE, FLOAT_DTYPES, FP8_DTYPE, SCALE_FMTS, ceil_div, widen_e8m0

SCALE_SUFFIX = ".weight_scale_inv"
_HIGH_PRECISION = (*FLOAT_DTYPES, torch.float64)  # what a non-FP8 floating tensor may be stored as


class CheckpointError(ValueError):
    """A malformed FineGrainedFP8 checkpoint; the message names the file and the tensor."""


class CheckpointDtypeError(CheckpointError, TypeError):
    """A checkpoint tensor of the wrong dtype; also a ``TypeError``, like every dtype error of the package."""


def quantization_config(model: nn.Module, config: FP8BlockConfig | None = None) -> dict:
    """The ``quantization_config`` of ``model`` (or of the model in its ``torch.compile`` wrapper) as
    converted by ``quantize_`` (SPEC section 3)."""
    config = config or FP8BlockConfig()
    modules = list(unwrap_compiled(model).named_modules(remove_duplicate=False))
    kept = {
        path
        for path, mod in modules
        if path and _linear_weight_nk(mod) is not None and not is_transformers_fp8_linear(mod)
    }
    fp8 = {path for path, mod in modules if isinstance(mod, FP8BlockLinear) or is_transformers_fp8_linear(mod)}
    # transformers' own default skip: listed unless the file holds an FP8 lm_head (a loader that
    # skips it would then run the e4m3 codes as bf16 weights, without their scales)
    default_skip = set() if "lm_head" in fp8 else {"lm_head"}
    qc = {
        "quant_method": "fp8",
        "activation_scheme": "dynamic",
        "weight_block_size": list(config.weight_block_size),
        "modules_to_not_convert": sorted(kept | _high_precision_experts(modules, fp8) | default_skip),
    }
    if config.scale_fmt == "ue8m0":
        qc["scale_fmt"] = "ue8m0"
    return qc


def _high_precision_experts(modules: list[tuple[str, nn.Module]], fp8: set[str]) -> set[str]:
    """MoE expert modules (``*.experts``: transformers 5's 3-D ``gate_up_proj`` / ``down_proj``), which
    ``quantize_`` leaves in high precision. transformers' FineGrainedFP8 loader turns every module so named
    into its ``FP8Experts`` unless ``modules_to_not_convert`` lists it: on an FP8 GPU it would read the
    bf16 expert weights as e4m3 codes beside uninitialized scales (wrong output; only a load report).
    Not listed where one of their submodules is FP8 (listing would load those codes unscaled)."""
    return {
        path
        for path, mod in modules
        if path.rsplit(".", 1)[-1] == "experts"
        and type(mod).__name__ != "FP8Experts"
        and not any(p == path or p.startswith(path + ".") for p in fp8)
    }


def save_pretrained(
    model: nn.Module, path: str | Path, config: FP8BlockConfig | None = None, *, transformers_loadable: bool = True
) -> None:
    """Write a transformers model with ``FP8BlockLinear`` modules in the FineGrainedFP8 format.

    transformers' FineGrainedFP8 loader converts ``nn.Linear`` modules only. A model whose FP8 modules
    replaced GPT-2 ``Conv1D`` layers (``quantize_`` converts them) writes a checkpoint transformers
    cannot load: those shapes mismatch, and a square one would be read transposed and without its
    scales, with no error. That is a ``ValueError`` naming them, unless ``transformers_loadable`` is
    False: then the file is written for ``load_quantized_``, which reads it exactly.

    FP8 layers whose N or K is not a multiple of 128 (a partial last block, as DeepSeek-V3's
    576-row ``kv_a_proj_with_mqa``) are written in the same format, and transformers' FP8-GPU loader
    and ``load_quantized_`` read them exactly; transformers' dequantizing CPU loader (5.x) infers the
    block size from the scale grid and reads them wrong or refuses them: a warning names them.

    A model with a tied output embedding whose ``lm_head`` became FP8 is no longer tied (the FP8
    ``lm_head`` has weights of its own): the saved config says ``tie_word_embeddings: false``, else
    transformers would tie the bf16 embedding to the FP8 codes on loading.
    ``model`` may be the ``torch.compile`` wrapper.
    """
    model = unwrap_compiled(model)
    fp8 = {path: m for path, m in model.named_modules() if isinstance(m, FP8BlockLinear)}
    if not fp8:
        raise ValueError("save_pretrained: the model has no FP8BlockLinear modules; call fp8inductor.quantize_ first")
    if not hasattr(model, "save_pretrained") or not hasattr(model, "config"):
        raise TypeError("save_pretrained: expected a transformers PreTrainedModel")
    conv1d = [path for path, m in fp8.items() if m.replaces == "Conv1D"]
    if conv1d and transformers_loadable:
        raise ValueError(
            f"save_pretrained: {_some(conv1d)} replaced GPT-2 Conv1D layers, which transformers' FineGrainedFP8 "
            "loader does not convert (it would fail on their shapes, or read a square one transposed and unscaled "
            "without an error). Pass transformers_loadable=False to write a checkpoint for "
            "fp8inductor.checkpoint.load_quantized_ (read exactly), or quantize_ with these modules in "
            "modules_to_not_convert."
        )
    fmts = {m.scale_fmt for m in fp8.values()}
    if len(fmts) > 1:
        raise ValueError(f"save_pretrained: mixed scale formats {sorted(fmts)}")
    ragged = [path for path, m in fp8.items() if m.out_features % 128 or m.in_features % 128]
    if ragged and transformers_loadable:
        warnings.warn(
            f"save_pretrained: {_some(ragged)} have N or K not a multiple of 128 (a partial last weight block). "
            "transformers' FP8-GPU loader and fp8inductor.checkpoint.load_quantized_ read them exactly; "
            "transformers' dequantizing CPU loader infers the block size from the scale grid and reads "
            "them wrong or refuses the file.",
            stacklevel=2,
        )
    model.config.quantization_config = quantization_config(model, FP8BlockConfig(scale_fmt=fmts.pop()))
    untied = _tie_configs(model.config) if _output_embedding_is_fp8(model) else []
    for c in untied:
        c.tie_word_embeddings = False
    try:
        model.save_pretrained(str(path), safe_serialization=True)
    finally:
        for c in untied:
            c.tie_word_embeddings = True


def _some(paths: list[str]) -> str:
    """The first four paths, then how many more."""
    return ", ".join(paths[:4]) + (f" and {len(paths) - 4} more" if len(paths) > 4 else "")


def _tie_configs(config) -> list:
    """The configs (the model's, its text config) that ask for tied input and output embeddings."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return [c for c in {id(config): config, id(text): text}.values() if getattr(c, "tie_word_embeddings", False)]


def _output_embedding_is_fp8(model: nn.Module) -> bool:
    get = getattr(model, "get_output_embeddings", None)
    return isinstance(get() if callable(get) else None, FP8BlockLinear)


# ---------------------------------------------------------------------------------------------
# Reading: files -> tensors, each remembered with the file it came from.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Checkpoint:
    """The tensors of a checkpoint, the file each came from, and its scale format."""

    path: Path
    tensors: dict[str, torch.Tensor]
    files: dict[str, Path]
    scale_fmt: str

    def where(self, key: str) -> str:
        """``file: key`` for error messages."""
        return f"{self.files.get(key, self.path)}: {key}"


def _safetensors_files(path: Path) -> list[Path]:
    """The checkpoint's files, in transformers' order (4.57 and 5.x ``from_pretrained``) in a directory:
    ``model.safetensors``, else the files the shard index (``model.safetensors.index.json``) names,
    else every ``*.safetensors`` (other files beside a checkpoint, stale shards or an adapter, are not
    read). A directory with both a ``model.safetensors`` and an index gets a warning: transformers reads
    the single file too, and one of the two is stale (transformers' ``save_pretrained`` leaves an old
    index beside a new single file, and an old single file beside new shards)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint file or directory")
    files = _indexed_files(path) if path.is_dir() else [path]
    if files:
        return files
    if any(path.glob("*.bin")) or any(path.glob("*.pt")):
        raise CheckpointError(f"{path}: only safetensors checkpoints are read (no pickle)")
    raise FileNotFoundError(f"{path}: no .safetensors files")


def _indexed_files(directory: Path) -> list[Path]:
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if single.is_file():
        if index.is_file():
            warnings.warn(
                f"{directory} holds both model.safetensors and model.safetensors.index.json: reading "
                "model.safetensors, as transformers does, and ignoring the index and its shards (one of the "
                "two is left over from an earlier save; remove it)",
                stacklevel=5,  # load_quantized_'s caller
            )
        return [single]
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            names = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index}: not a safetensors shard index ({type(e).__name__}: {e})") from e
        missing = [n for n in names if not isinstance(n, str) or not (directory / n).is_file()]
        if missing:
            raise CheckpointError(f"{index}: names shard files that are not there: {missing[:4]}")
        return [directory / n for n in names]
    return sorted(directory.glob("*.safetensors"))


def _read_file(file: Path) -> dict[str, torch.Tensor]:
    """Every tensor of one safetensors file; anything the library rejects is a ``CheckpointError``."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), "pt") as reader:
            return {key: reader.get_tensor(key) for key in reader.keys()}
    except OSError:
        raise  # unreadable (permissions, vanished): not a format problem; the message names the file
    except Exception as e:  # the library's SafetensorError and whatever its bindings raise on bad headers
        raise CheckpointError(f"{file}: not a valid safetensors file ({type(e).__name__}: {e})") from e


def _read_scale_fmt(path: Path) -> str | None:
    """The ``scale_fmt`` declared by the ``quantization_config`` of the ``config.json`` in the
    directory ``path``, or next to the file ``path`` (where ``save_pretrained`` and transformers put
    it); None without one (then the scale dtypes decide: ``_scale_fmt_from_dtypes``). Beside a lone
    file a config.json may be anything's: only one with a ``quantization_config`` object counts."""
    in_dir = path.is_dir()
    cfg_file = path / "config.json" if in_dir else path.parent / "config.json"
    if not cfg_file.exists():
        return None
    try:
        cfg = json.loads(cfg_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        if not in_dir:
            return None
        raise CheckpointError(f"{cfg_file}: not valid JSON ({e})") from e
    qc = cfg.get("quantization_config") if isinstance(cfg, dict) else None
    if not in_dir and not isinstance(qc, dict):
        return None
    if not isinstance(cfg, dict) or not isinstance(qc, (dict, type(None))):
        raise CheckpointError(f"{cfg_file}: expected a JSON object with an object 'quantization_config'")
    return _check_quantization_config(qc or {}, cfg_file)


def _check_quantization_config(qc: dict, cfg_file: Path) -> str | None:
    """Validate a FineGrainedFP8 ``quantization_config``; returns the scale format it declares, or None
    where it declares none (transformers' own configs, DeepSeek's with ``scale_fmt`` outside it):
    then the scale dtypes decide, as for a lone file, so a directory and its file read alike."""
    if qc.get("quant_method", "fp8") != "fp8":
        raise CheckpointError(f"{cfg_file}: quant_method {qc['quant_method']!r} is not 'fp8' (FineGrainedFP8)")
    block = qc.get("weight_block_size", [128, 128])
    if not isinstance(block, (list, tuple)) or list(block) != [128, 128]:
        raise CheckpointError(f"{cfg_file}: weight_block_size {block!r} is not supported (only [128, 128])")
    scheme = qc.get("activation_scheme", "dynamic")
    if not isinstance(scheme, str) or scheme.lower() != "dynamic":
        raise CheckpointError(f"{cfg_file}: activation_scheme {scheme!r} is not supported (only 'dynamic')")
    fmt = qc.get("scale_fmt")
    if fmt in (None, ""):  # not declared (null or empty, as some converters write it)
        return None
    if fmt not in SCALE_FMTS:
        raise CheckpointError(f"{cfg_file}: scale_fmt {fmt!r} is not one of {SCALE_FMTS}")
    return fmt


def _read_checkpoint(path: Path) -> _Checkpoint:
    tensors: dict[str, torch.Tensor] = {}
    files: dict[str, Path] = {}
    for file in _safetensors_files(path):
        for key, tensor in _read_file(file).items():
            if key in tensors:
                raise CheckpointError(f"{file}: tensor {key!r} also appears in {files[key]}")
            tensors[key], files[key] = tensor, file
    ckpt = _Checkpoint(path, tensors, files, "float")
    _normalize_names(ckpt)
    ckpt.scale_fmt = _read_scale_fmt(path) or _scale_fmt_from_dtypes(ckpt)
    return ckpt


def _scale_fmt_from_dtypes(ckpt: _Checkpoint) -> str:
    """Where no config.json declares it: "ue8m0" when every block scale is stored as float8_e8m0fnu
    (only power-of-two scales fit it: DeepSeek-V3.1's format), else "float"."""
    dtypes = {t.dtype for k, t in ckpt.tensors.items() if k.endswith(SCALE_SUFFIX)}
    return "ue8m0" if dtypes and dtypes == {E8M0_DTYPE} else "float"


def _normalize_names(ckpt: _Checkpoint) -> None:
    """DeepSeek's converted checkpoints (and DeepSeek-V4-Flash) name the block scale ``P.scale``."""
    for key in [k for k in ckpt.tensors if k.endswith(".scale")]:
        prefix = key[: -len(".scale")]
        w = ckpt.tensors.get(f"{prefix}.weight")
        new = f"{prefix}{SCALE_SUFFIX}"
        if w is not None and w.dtype == FP8_DTYPE and new not in ckpt.tensors:
            ckpt.tensors[new] = ckpt.tensors.pop(key)
            ckpt.files[new] = ckpt.files.pop(key)


# ---------------------------------------------------------------------------------------------
# Planning: check everything against the model, build the FP8 modules, change nothing yet.
# ---------------------------------------------------------------------------------------------


def _checked_scale(ckpt: _Checkpoint, key: str) -> torch.Tensor:
    """The block scale ``key`` as float32 [ceil(N/128), ceil(K/128)]; finite and >= 0.

    float8_e8m0fnu scales widen exactly. uint8 scales are e8m0 bytes (biased exponents, as MXFP8
    checkpoints store them and transformers reads them) where the checkpoint declares
    ``scale_fmt: "ue8m0"``; elsewhere a uint8 scale is ambiguous and refused."""
    scale = ckpt.tensors[key]
    if scale.dtype == torch.uint8 and ckpt.scale_fmt == "ue8m0" and E8M0_DTYPE is not None:
        scale = scale.view(E8M0_DTYPE)  # the same bytes: 2**(b - 127), 0xFF NaN (refused below)
    scale = widen_e8m0(scale)
    if scale.dtype != torch.float32:
        hint = " (uint8 e8m0 bytes need scale_fmt \"ue8m0\" in config.json)" if scale.dtype == torch.uint8 else ""
        raise CheckpointDtypeError(
            f"{ckpt.where(key)} has dtype {scale.dtype}, expected float32 (or float8_e8m0fnu){hint}"
        )
    if not bool((torch.isfinite(scale) & (scale >= 0)).all()):
        raise CheckpointError(f"{ckpt.where(key)}: block scales must be finite and >= 0 (found NaN, Inf or < 0)")
    return scale


def _checked_weight(ckpt: _Checkpoint, key: str) -> torch.Tensor:
    """The FP8 weight ``key``: float8_e4m3fn [N, K]."""
    weight = ckpt.tensors[key]
    if weight.dtype != FP8_DTYPE:
        raise CheckpointDtypeError(f"{ckpt.where(key)} has dtype {weight.dtype}, expected {FP8_DTYPE}")
    if weight.dim() != 2:
        raise CheckpointError(f"{ckpt.where(key)} has shape {tuple(weight.shape)}, expected 2-D [N, K]")
    return weight


def _check_grid(ckpt: _Checkpoint, key: str, scale: torch.Tensor, wkey: str, weight: torch.Tensor) -> None:
    """The block scale ``key`` must be the [ceil(N/128), ceil(K/128)] grid of ``weight`` [N, K]."""
    n, k = weight.shape
    want = (ceil_div(n, 128), ceil_div(k, 128))
    if tuple(scale.shape) != want:
        raise CheckpointError(
            f"{ckpt.where(key)} has shape {tuple(scale.shape)}, expected {want} "
            f"for the [{n}, {k}] weight {wkey} in 128x128 blocks"
        )


def _linear_shape(module: nn.Module) -> tuple[int, int] | None:
    """[N, K] of a module that can hold an FP8 weight, or None."""
    if isinstance(module, FP8BlockLinear):
        return module.out_features, module.in_features
    w = _linear_weight_nk(module)
    return None if w is None else (w.shape[0], w.shape[1])


def _target_module(model: nn.Module, ckpt: _Checkpoint, prefix: str, weight: torch.Tensor) -> nn.Module:
    """The model's linear at ``prefix``, checked to take ``weight`` [N, K]."""
    wkey = f"{prefix}.weight"
    try:
        module = model.get_submodule(prefix)
    except AttributeError as e:
        raise CheckpointError(f"{ckpt.where(wkey)} has no module {prefix!r} in the model") from e
    shape = _linear_shape(module)
    if shape is None:
        raise CheckpointError(f"{ckpt.where(wkey)} is FP8 but {prefix!r} is a {type(module).__name__}, not a linear")
    if tuple(weight.shape) != shape:
        raise CheckpointError(f"{ckpt.where(wkey)} has shape {tuple(weight.shape)}, the model expects {shape}")
    return module


def _checked_bias(ckpt: _Checkpoint, prefix: str, module: nn.Module, n: int) -> torch.Tensor | None:
    """The stored bias [N] in the module's bias dtype, or None; its presence must match the module."""
    key = f"{prefix}.bias"
    bias = ckpt.tensors.get(key)
    if (bias is None) != (module.bias is None):
        raise CheckpointError(f"{ckpt.where(key)} is {'missing' if bias is None else 'unexpected'}")
    if bias is None:
        return None
    if bias.dtype not in _HIGH_PRECISION:
        raise CheckpointDtypeError(f"{ckpt.where(key)} has dtype {bias.dtype}, expected a float dtype")
    if tuple(bias.shape) != (n,):
        raise CheckpointError(f"{ckpt.where(key)} has shape {tuple(bias.shape)}, expected ({n},)")
    return bias.to(module.bias.dtype)


def _plan_fp8_module(model: nn.Module, ckpt: _Checkpoint, prefix: str) -> FP8BlockLinear:
    """The ``FP8BlockLinear`` for ``prefix`` from its stored weight, scale and bias (bytes as stored)."""
    skey, wkey = f"{prefix}{SCALE_SUFFIX}", f"{prefix}.weight"
    if wkey not in ckpt.tensors:
        raise CheckpointError(f"{ckpt.where(skey)} has no {wkey}")
    weight, scale = _checked_weight(ckpt, wkey), _checked_scale(ckpt, skey)
    _check_grid(ckpt, skey, scale, wkey, weight)
    module = _target_module(model, ckpt, prefix, weight)
    bias = _checked_bias(ckpt, prefix, module, weight.shape[0])
    replaces = module.replaces if isinstance(module, FP8BlockLinear) else type(module).__name__
    device = _target_device(model, module)  # the file's tensors are on the CPU; the model may be on a GPU
    return FP8BlockLinear(
        weight.to(device), scale.to(device), None if bias is None else bias.to(device), ckpt.scale_fmt, replaces
    )


def _target_device(model: nn.Module, module: nn.Module) -> torch.device:
    """Where the FP8 module replacing ``module`` goes: ``module``'s own weight's device, or where the rest
    of the model is when that weight is on the meta device (allowed for replaced modules), else the
    CPU. (Until 2026-12-08 it stayed on the CPU: a model built on a GPU got CPU FP8 modules and its
    first forward failed with a device mismatch.)"""
    own = getattr(module, "weight", None)
    if isinstance(own, torch.Tensor) and not own.is_meta:
        return own.device
    for t in (*model.parameters(), *model.buffers()):
        if not t.is_meta:
            return t.device
    return torch.device("cpu")


def _fp8_keys(prefix: str) -> tuple[str, str, str]:
    return f"{prefix}.weight", f"{prefix}{SCALE_SUFFIX}", f"{prefix}.bias"


def _check_high_precision(model: nn.Module, ckpt: _Checkpoint, fp8_prefixes: set[str]) -> dict[str, torch.Tensor]:
    """The remaining (non-FP8) tensors, checked against the model's state dict: names, shapes, dtypes."""
    covered = {key for prefix in fp8_prefixes for key in _fp8_keys(prefix)}
    rest = {k: t for k, t in ckpt.tensors.items() if k not in covered}
    expected = model.state_dict(keep_vars=True)
    for key, tensor in sorted(rest.items()):
        if tensor.dtype == FP8_DTYPE and key.endswith(".weight"):
            raise CheckpointError(f"{ckpt.where(key)}: FP8 tensor {key} has no weight_scale_inv")
        if key not in expected:
            moe = (
                " (a Mixture-of-Experts checkpoint with per-expert tensors: load_quantized_ cannot map them onto "
                "3-D expert parameters; docs/checkpoints.md)"
                if ".experts." in key
                else ""
            )
            raise CheckpointError(f"{ckpt.where(key)}: unexpected tensor {key}{moe}")
        want = expected[key]
        if tuple(tensor.shape) != tuple(want.shape):
            raise CheckpointError(
                f"{ckpt.where(key)} has shape {tuple(tensor.shape)}, the model expects {tuple(want.shape)}"
            )
        same_kind = tensor.dtype in _HIGH_PRECISION if want.is_floating_point() else not tensor.is_floating_point()
        if not same_kind:
            raise CheckpointDtypeError(f"{ckpt.where(key)} has dtype {tensor.dtype}, the model holds {want.dtype}")
    partners = _tied_partners(model)
    # a tied name absent from the file is loaded through a partner the file holds in high precision;
    # a partner that becomes FP8 does not count (the swap unties it: the name would keep its init)
    missing = [
        k
        for k in expected
        if k not in rest and k not in covered and not any(p in rest for p in partners.get(k, ()))
    ]
    if missing:
        raise CheckpointError(f"{ckpt.path}: missing tensor {missing[0]}")
    return rest


def load_quantized_(model: nn.Module, path: str | Path) -> list[str]:
    """Load a FineGrainedFP8 checkpoint into ``model`` in place; returns the converted module paths.

    ``model`` is built from the checkpoint's config (high-precision modules; ``FP8BlockLinear``
    modules are replaced too). The FP8 bytes and scales are used as stored (never requantized);
    ue8m0 scales stored as float8_e8m0fnu are widened to float32 exactly. Malformed checkpoints
    raise ``CheckpointError`` (see the module docstring) before the model is changed; so does a
    model with meta-device tensors outside the modules that become FP8 (ValueError). ``model`` may
    be the ``torch.compile`` wrapper.
    """
    model = unwrap_compiled(model)
    ckpt = _read_checkpoint(Path(path))
    prefixes = sorted(k[: -len(SCALE_SUFFIX)] for k in ckpt.tensors if k.endswith(SCALE_SUFFIX))
    new_modules = {prefix: _plan_fp8_module(model, ckpt, prefix) for prefix in prefixes}
    _check_no_meta(model, prefixes)
    rest = _check_high_precision(model, ckpt, set(new_modules))
    for prefix, module in new_modules.items():
        _swap_module(model, prefix, module)
    model.load_state_dict(rest, strict=False)
    return prefixes


def _check_no_meta(model: nn.Module, fp8_prefixes: list[str]) -> None:
    """A model built on the meta device cannot be loaded in place: ``load_state_dict`` leaves meta
    parameters as they are (a warning each, the model unusable), and non-persistent buffers (rotary
    frequencies) are in no checkpoint. Only the modules that become FP8 may be meta."""
    replaced = tuple(f"{p}." for p in fp8_prefixes)
    for name, t in (*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)):
        if t.is_meta and not name.startswith(replaced):
            raise ValueError(
                f"load_quantized_: {name} is on the meta device; build the model with real tensors "
                "(e.g. on the CPU) before loading, or load with transformers' from_pretrained"
            )


def _tied_partners(model: nn.Module) -> dict[str, list[str]]:
    """{name: the other names of the same parameter} for tied parameters (saved once in a file)."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return {n: [o for o in group if o != n] for group in names.values() if len(group) > 1 for n in group}
