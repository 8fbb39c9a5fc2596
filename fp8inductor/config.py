"""``FP8BlockConfig``: every option the ``fp8block`` backend takes, validated once."""

from __future__ import annotations

import dataclasses
import functools
import re
import typing
from collections.abc import Mapping
from typing import Any

from .reference import SCALE_FMTS

# Inductor options that the backend sets itself; a user passing them would silently lose them.
_RESERVED_INDUCTOR_KEYS = ("freezing", "joint_custom_pre_pass")


GEMM_LOWERINGS = ("template", "extern")


_DEFAULT_NOT_CONVERTED = ("lm_head",)  # the output head stays high precision, as in transformers


@dataclasses.dataclass(frozen=True)
class FP8BlockConfig:
    """Options of the ``fp8block`` backend (``torch.compile(..., options={...})``).

    Attributes:
        weight_block_size: (block_n, block_k) of the weight scales. Only (128, 128) is implemented
            by the GEMM kernels (the DeepSeek-V3 / transformers FineGrainedFP8 layout).
        group_size: activation group along K, per token. Must equal block_k (128).
        scale_fmt: "float" (fp32 scales, DeepSeek-V3) or "ue8m0" (power-of-two scales, V3.1).
        modules_to_not_convert: module paths left in high precision. An entry matches whole
            dot-separated path components anywhere in the path ("mlp.gate" matches
            "model.layers.0.mlp.gate" but not "model.layers.0.mlp.gate_proj"), and also where
            transformers' ``should_convert_module`` matches it (a regex from the start of the path,
            "model.layers.*.self_attn"; a suffix of the path). None means the default ("lm_head",),
            as in transformers' ``FineGrainedFP8Config`` (whose quantizer then skips the output
            head); ``[]`` converts every linear, ``lm_head`` included.
        min_in_features / min_out_features: smaller linears are skipped (too small to gain).
        gemm_lowering: "template" (default): on FP8 GPUs, static-M linears lower to Triton templates
            whose store carries the fused epilogue (bias, cast, residual add, activation); see
            ``fp8inductor.lowering``. "extern": always the opaque op (activation quant + GEMM
            launched by the op, config chosen per call).
        fuse_siblings: linears that read the same activation with high-precision parameter weights
            (q/k/v, gate/up) run as one GEMM on the weights concatenated along N: one activation
            quant and one launch instead of one each, for a static M of at most 128 rows (decode,
            whose cost is mostly per-launch cost; ``passes.SIBLING_FUSION_MAX_M``), or any static M
            where the fused GEMM runs on cuBLAS blockwise. Needs out_features that are multiples of 128 (a weight block
            never straddles two linears); the concatenated weight is quantized once per process and
            shared by every graph (``weight_memo``). Linears on already-FP8 modules (``quantize_``)
            are not fused: that would need a second FP8 copy.
        fuse_norms: an RMSNorm (transformers' ``LlamaRMSNorm`` form) whose output only FP8 linears
            read, and the residual add in front of it, run as one kernel that also quantizes the
            normalized activation (``fp8inductor.norm_fusion``); the linears take the quantized
            activation. Numerics: the norm's own bf16 roundings, as eager (docs/numerics.md).
        trig_tables_once: a sin/cos table that several kernels read (a rotary embedding's, shared by
            every layer) is computed into a buffer once per forward, where Inductor would evaluate
            sin/cos again for every element of every reader (``fp8inductor.trig_tables``). Same
            values; it is no FP8 matter, and plain ``torch.compile`` does not do it.
        fold_gqa_heads: at decode (one query position), a grouped-query attention whose
            keys and values transformers expanded to the query heads (``repeat_kv``, taken where a
            mask is passed) reads the KV heads as they are, the query heads of a group folded into
            query rows (``fp8inductor.gqa_heads``): the same attention without copying the KV cache
            ``n_rep`` times per layer and step (H100, Llama-3-8B shapes: batch 32 decode 2.4x faster).
            No FP8 matter; plain ``torch.compile`` does not do it.
        gqa_decode_kernel: with ``fold_gqa_heads``, run such a decode attention (batch 1 included)
            through ``fp8inductor::gqa_decode_attention`` (``kernels/gqa_decode.py``: split-KV over
            the KV heads as stored) where it takes the inputs; off: fold it onto SDPA's op (batch > 1
            only). H100, Llama-3-8B, batch-1 decode: 32 layers 3998 instead of 4740 us a step.
        convert_routers: also convert Mixture-of-Experts routers (``eligibility.is_moe_router``).
            Off by default: transformers' FP8 loader and the FP8 checkpoints keep routers in high
            precision, and an FP8 router changes which experts a token gets (a quarter of the
            tokens' top-8 sets on a random 128-expert Qwen3-MoE). ``quantize_`` converts only routers
            that are ``nn.Linear`` modules (transformers 4's); transformers 5's router modules are no
            linears, so with this option the backend converts them and ``quantize_`` leaves them.
    """

    weight_block_size: tuple[int, int] = (128, 128)
    group_size: int = 128
    scale_fmt: str = "float"
    modules_to_not_convert: tuple[str, ...] = _DEFAULT_NOT_CONVERTED
    min_in_features: int = 128
    min_out_features: int = 128
    gemm_lowering: str = "template"
    fuse_siblings: bool = True
    fuse_norms: bool = True
    trig_tables_once: bool = True
    fold_gqa_heads: bool = True
    gqa_decode_kernel: bool = True
    convert_routers: bool = False

    def __post_init__(self) -> None:
        wbs = self.weight_block_size
        if not isinstance(wbs, (tuple, list)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in wbs):
            raise TypeError(f"weight_block_size must be a pair of ints (block_n, block_k), got {wbs!r}")
        bs = tuple(wbs)
        if bs != (128, 128):
            raise ValueError(f"weight_block_size must be (128, 128) (the only layout the kernels implement), got {bs}")
        object.__setattr__(self, "weight_block_size", bs)
        if not isinstance(self.group_size, int) or isinstance(self.group_size, bool):
            raise TypeError(f"group_size must be an int, got {self.group_size!r}")
        if self.group_size != bs[1]:
            raise ValueError(f"group_size must equal the weight block's K size {bs[1]}, got {self.group_size}")
        if self.scale_fmt not in SCALE_FMTS:
            raise ValueError(f"scale_fmt must be one of {SCALE_FMTS}, got {self.scale_fmt!r}")
        # None: the default, as transformers reads it (until 2026-12-08 None converted lm_head too)
        mods = _DEFAULT_NOT_CONVERTED if self.modules_to_not_convert is None else self.modules_to_not_convert
        if (
            isinstance(mods, str)
            or not isinstance(mods, (list, tuple, set, frozenset))
            or not all(isinstance(m, str) and m for m in mods)
        ):
            raise TypeError(f"modules_to_not_convert must be a list of non-empty strings, got {mods!r}")
        # a set in sorted order: the tuple's repr is part of the compile cache key
        mods = sorted(mods) if isinstance(mods, (set, frozenset)) else mods
        object.__setattr__(self, "modules_to_not_convert", tuple(mods))
        for name in ("min_in_features", "min_out_features"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        for name in (
            "fuse_siblings",
            "fuse_norms",
            "trig_tables_once",
            "fold_gqa_heads",
            "gqa_decode_kernel",
            "convert_routers",
        ):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.gemm_lowering not in GEMM_LOWERINGS:
            raise ValueError(f"gemm_lowering must be one of {GEMM_LOWERINGS}, got {self.gemm_lowering!r}")

    def skips_module(self, path: str) -> str | None:
        """The ``modules_to_not_convert`` entry matching module ``path``, or None."""
        return matching_entry(path, self.modules_to_not_convert)


def matching_entry(path: str, entries) -> str | None:
    """The first of ``entries`` that matches module ``path``, or None. An entry matches

    * whole dot-separated components anywhere in the path ("mlp.gate" matches
      "model.layers.0.mlp.gate", not "model.layers.0.mlp.gate_proj"), or
    * as transformers' ``should_convert_module`` matches it (5.x), so that a config written for
      transformers keeps the same modules: a regex from the start of the path up to a component
      boundary ("model.layers.*.self_attn" matches "model.layers.3.self_attn.q_proj"), or a suffix
      of the path string. (Component-only matching converted such modules silently.)
    """
    parts = path.split(".") if path else []
    for entry in entries:
        want = entry.split(".")
        if any(parts[i : i + len(want)] == want for i in range(len(parts) - len(want) + 1)):
            return entry
        if path and (path.endswith(entry) or _regex_match(entry, path)):
            return entry
    return None


@functools.lru_cache(maxsize=256)
def _entry_regex(entry: str) -> re.Pattern | None:
    try:
        return re.compile(rf"(?:{entry})(?:(?<=\.)|(?=\.|$))")
    except re.error:  # not a regex: matched by its components and as a suffix only
        return None


def _regex_match(entry: str, path: str) -> bool:
    pattern = _entry_regex(entry)
    return pattern is not None and pattern.match(path) is not None


_FIELDS = {f.name for f in dataclasses.fields(FP8BlockConfig)}


def split_options(options: Mapping[str, Any] | None) -> tuple[FP8BlockConfig, dict[str, Any]]:
    """Split ``torch.compile(options=...)`` into our config and Inductor config patches.

    Keys naming an ``FP8BlockConfig`` field go to the config; keys naming an Inductor config entry
    pass through to Inductor; anything else is a clear error (never silently ignored).
    """
    import torch._inductor.config as inductor_config

    ours: dict[str, Any] = {}
    inductor: dict[str, Any] = {}
    for key, value in (options or {}).items():
        name = key.replace("-", "_") if isinstance(key, str) else key  # "max-autotune", as Inductor takes it
        if key in _FIELDS:
            ours[key] = value
        elif name in _RESERVED_INDUCTOR_KEYS:
            raise ValueError(f"fp8block sets Inductor option {key!r} itself; remove it from options")
        elif _is_inductor_option(inductor_config, name):
            _check_inductor_type(inductor_config, name, value)
            inductor[name] = value
        else:
            raise ValueError(
                f"unknown fp8block option {key!r}: expected one of {sorted(_FIELDS)} or an Inductor config key"
            )
    return FP8BlockConfig(**ours), inductor


def _check_inductor_type(inductor_config: Any, name: str, value: Any) -> None:
    """The value's type against the Inductor option's, as ``torch.compile(backend="inductor")`` checks
    it: a string "False" for a bool option would otherwise be truthy (turning it on)."""
    get_type = getattr(inductor_config, "get_type", None)
    try:
        want = get_type(name) if get_type is not None else None
    except Exception:  # an entry whose type Inductor cannot tell: no check, as in Inductor
        return
    if isinstance(want, type) and typing.get_origin(want) is None and not isinstance(value, want):
        raise TypeError(f"Inductor option {name!r} takes a {want.__name__}, got {type(value).__name__} {value!r}")


def _is_inductor_option(inductor_config: Any, key: str) -> bool:
    known = getattr(inductor_config, "_config", None)  # a ConfigModule: dotted names ("triton.cudagraphs") included
    return key in known if known is not None else hasattr(inductor_config, key)
