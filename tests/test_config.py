"""FP8BlockConfig validation and the options split."""

from __future__ import annotations

import pytest

from fp8inductor.config import FP8BlockConfig, split_options


def test_defaults_skip_lm_head_only():
    cfg = FP8BlockConfig()
    assert cfg.skips_module("lm_head") == "lm_head"
    assert cfg.skips_module("model.layers.0.mlp.up_proj") is None


@pytest.mark.parametrize(
    "entry,path,skipped",
    [
        ("mlp.gate", "model.layers.0.mlp.gate", True),
        ("mlp.gate", "model.layers.0.mlp.gate_proj", False),  # whole components, not substrings
        ("gate", "model.layers.0.mlp.gate_proj", False),
        ("layers.0", "model.layers.0.self_attn.q_proj", True),
        ("layers.0", "model.layers.10.self_attn.q_proj", False),
        ("lm_head", "lm_head", True),
        ("model.layers.1.mlp", "model.layers.1.mlp.down_proj", True),
        ("q_proj", "model.layers.3.self_attn.q_proj", True),
        # as transformers' should_convert_module (5.x) matches: a regex from the start up to a component
        # boundary, or a suffix (these converted silently with component matching only)
        ("model.layers.*.self_attn", "model.layers.3.self_attn.q_proj", True),
        (r"model\.layers\.[0-2]\.mlp", "model.layers.1.mlp.up_proj", True),
        (r"model\.layers\.[0-2]\.mlp", "model.layers.3.mlp.up_proj", False),
        ("layers.1", "model.layers.11.attn", False),
        ("up_gate", "model.layers.0.mlp.fused_up_gate", True),  # transformers' plain suffix
        ("[bad", "model.layers.0.mlp.gate", False),  # not a regex: components and suffix only
    ],
)
def test_modules_to_not_convert_matches_path_components(entry, path, skipped):
    cfg = FP8BlockConfig(modules_to_not_convert=(entry,))
    assert (cfg.skips_module(path) is not None) == skipped


def test_modules_to_not_convert_agrees_with_transformers():
    """Every module transformers' should_convert_module keeps in high precision, we keep too."""
    utils = pytest.importorskip("transformers.quantizers.quantizers_utils")
    should_convert_module = getattr(utils, "should_convert_module", None)
    if should_convert_module is None:
        pytest.skip("this transformers has no should_convert_module")

    paths = [f"model.layers.{i}.{m}" for i in (0, 1, 11) for m in ("self_attn.q_proj", "mlp.gate", "mlp.gate_proj")]
    entries = ["model.layers.*.self_attn", "layers.1", "mlp.gate", r"model\.layers\.1\d\.mlp", "proj", "lm_head"]
    for entry in entries:
        for path in paths:
            if not should_convert_module(path, [entry]):
                assert FP8BlockConfig(modules_to_not_convert=(entry,)).skips_module(path) == entry, (entry, path)


def test_split_options_routes_keys():
    cfg, inductor = split_options(
        {
            "modules_to_not_convert": ["lm_head", "mlp.gate"],
            "scale_fmt": "ue8m0",
            "max_autotune": True,
            "triton.cudagraphs": False,
        }
    )
    assert cfg.modules_to_not_convert == ("lm_head", "mlp.gate") and cfg.scale_fmt == "ue8m0"
    assert inductor == {"max_autotune": True, "triton.cudagraphs": False}
    # None is the default, as transformers' FineGrainedFP8Config reads it (its quantizer then skips the
    # output head); it converted lm_head too until 2026-12-08. [] converts every linear.
    cfg, _ = split_options({"modules_to_not_convert": None})
    assert cfg.modules_to_not_convert == ("lm_head",) == FP8BlockConfig().modules_to_not_convert
    assert FP8BlockConfig(modules_to_not_convert=None).modules_to_not_convert == ("lm_head",)  # as through options
    assert split_options({"modules_to_not_convert": []})[0].modules_to_not_convert == ()
    assert FP8BlockConfig(modules_to_not_convert={"b", "a"}).modules_to_not_convert == ("a", "b")
    # Inductor's own spelling with hyphens is accepted, as torch.compile(backend="inductor") does
    assert split_options({"max-autotune": True})[1] == {"max_autotune": True}


@pytest.mark.parametrize(
    "options,error,match",
    [
        ({"bogus_option": 1}, ValueError, "unknown fp8block option 'bogus_option'"),
        ({"scale_fmt": "e5m2"}, ValueError, "scale_fmt must be one of"),
        ({"weight_block_size": (64, 64)}, ValueError, r"weight_block_size must be \(128, 128\)"),
        ({"group_size": 64}, ValueError, "group_size must equal"),
        ({"weight_block_size": 128}, TypeError, "weight_block_size must be a pair of ints"),
        ({"weight_block_size": (128.0, 128.0)}, TypeError, "weight_block_size must be a pair of ints"),
        ({"group_size": 128.0}, TypeError, "group_size must be an int"),
        ({"modules_to_not_convert": "lm_head"}, TypeError, "list of non-empty strings"),
        ({"min_in_features": 0}, ValueError, "min_in_features must be a positive int"),
        ({"freezing": False}, ValueError, "sets Inductor option 'freezing' itself"),
        # a string for a bool Inductor option was passed through, and "False" is truthy: CUDA graphs on
        ({"triton.cudagraphs": "False"}, TypeError, "'triton.cudagraphs' takes a bool, got str"),
        ({"max-autotune": 1}, TypeError, "'max_autotune' takes a bool, got int"),
        ({"modules_to_not_convert": (m for m in ["a"])}, TypeError, "list of non-empty strings"),
    ],
)
def test_bad_options_are_clear_errors(options, error, match):
    with pytest.raises(error, match=match):
        split_options(options)


def test_config_is_frozen_and_hashable():
    cfg = FP8BlockConfig(modules_to_not_convert=["a", "b"])
    assert cfg.modules_to_not_convert == ("a", "b")
    with pytest.raises(AttributeError):
        cfg.scale_fmt = "ue8m0"  # type: ignore[misc]
    assert hash(cfg) == hash(FP8BlockConfig(modules_to_not_convert=("a", "b")))
