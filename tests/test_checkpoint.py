"""FineGrainedFP8 checkpoints: save, load without requantizing, transformers interop, bad files."""

from __future__ import annotations

import copy
import gc
import importlib.util
import json
import logging
import warnings
import weakref

import pytest
import torch
from safetensors.torch import load_file, save_file

import fp8inductor
import fp8inductor.testing
import model_zoo as zoo
from fp8inductor.checkpoint import CheckpointDtypeError, load_quantized_, save_pretrained
from fp8inductor.modules import FP8BlockLinear, quantize_
from fp8inductor.testing import assert_fp8_equal


def _saved(tmp_path, name="llama"):
    torch.manual_seed(0)
    model, inputs, n = zoo.MODELS[name](torch.bfloat16)
    quantize_(model)
    save_pretrained(model, tmp_path, transformers_loadable=name != "gpt2")  # GPT-2's Conv1D: ours only
    return model, inputs, n


def _fresh(name):
    torch.manual_seed(1)  # different random weights: everything must come from the file
    return zoo.MODELS[name](torch.bfloat16)[0]


@pytest.mark.parametrize("name", ["llama", "qwen2", "gpt2"])
def test_round_trip_keeps_every_byte_and_the_output(tmp_path, name):
    model, inputs, n = _saved(tmp_path, name)
    qc = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "fp8" and qc["weight_block_size"] == [128, 128]
    assert qc["activation_scheme"] == "dynamic" and "lm_head" in qc["modules_to_not_convert"]
    loaded = _fresh(name)
    converted = load_quantized_(loaded, tmp_path)
    assert len(converted) == n
    ref_sd, new_sd = model.state_dict(), loaded.state_dict()
    assert ref_sd.keys() == new_sd.keys()
    for key, t in ref_sd.items():
        if t.dtype == torch.float8_e4m3fn:
            assert_fp8_equal(new_sd[key], t, key)
        else:
            assert torch.equal(new_sd[key], t), key
    with torch.inference_mode():
        assert torch.equal(zoo.main_output(loaded(**inputs)), zoo.main_output(model(**inputs)))


def test_gpt2_conv1d_checkpoints_are_refused_unless_asked_for(tmp_path):
    """transformers converts nn.Linear only: an FP8 GPT-2 Conv1D would not load there (shape mismatch)
    or, square, load transposed and unscaled with no error. save_pretrained refuses by default and
    names them, also for a model that load_quantized_ filled (the modules remember what they
    replaced); transformers_loadable=False writes the file, which load_quantized_ reads exactly."""
    torch.manual_seed(0)
    model, inputs, _ = zoo.gpt2(torch.bfloat16)
    quantize_(model)
    with pytest.raises(ValueError, match=r"transformer\.h\.0\.attn\.c_attn, .* replaced GPT-2 Conv1D") as e:
        save_pretrained(model, tmp_path / "a")
    assert "and 4 more" in str(e.value)  # 8 Conv1D layers: 4 named, then the count
    assert not (tmp_path / "a").exists()  # nothing written
    save_pretrained(model, tmp_path / "b", transformers_loadable=False)
    loaded = _fresh("gpt2")
    load_quantized_(loaded, tmp_path / "b")
    with torch.inference_mode():
        assert torch.equal(zoo.main_output(loaded(**inputs)), zoo.main_output(model(**inputs)))
    with pytest.raises(ValueError, match="replaced GPT-2 Conv1D"):
        save_pretrained(loaded, tmp_path / "c")
    # a model with plain nn.Linear layers is not affected
    llama, _, _ = zoo.llama(torch.bfloat16)
    quantize_(llama)
    save_pretrained(llama, tmp_path / "d")


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_transformers_loads_our_checkpoint(tmp_path, name):
    pytest.importorskip("accelerate")  # transformers' FP8 loader needs it
    from transformers import AutoModelForCausalLM

    model, _, _ = _saved(tmp_path, name)
    # Without a GPU transformers dequantizes to bf16; with one it keeps its FP8Linear modules.
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    hf_sd = hf.state_dict()
    for path, mod in model.named_modules():
        if isinstance(mod, FP8BlockLinear):
            theirs = hf_sd[f"{path}.weight"]
            if theirs.dtype == torch.float8_e4m3fn:  # kept as FP8: our bytes and scales, unchanged
                assert_fp8_equal(theirs.cpu(), mod.weight, path)
                assert torch.equal(hf_sd[f"{path}.weight_scale_inv"].cpu(), mod.weight_scale_inv), path
                continue
            ours = fp8inductor.dequantize_weight(mod.weight, mod.weight_scale_inv, dtype=torch.float32)
            # transformers dequantizes q * s into the model dtype: the same product, then one rounding.
            assert torch.equal(theirs, ours.to(theirs.dtype)), path
    # The raw tensors on disk are ours, bit for bit.
    disk = load_file(str(tmp_path / "model.safetensors"))
    for path, mod in model.named_modules():
        if isinstance(mod, FP8BlockLinear):
            assert_fp8_equal(disk[f"{path}.weight"], mod.weight)
            assert torch.equal(disk[f"{path}.weight_scale_inv"], mod.weight_scale_inv)


def _corrupt(tmp_path, edit):
    f = tmp_path / "model.safetensors"
    tensors = load_file(str(f))
    edit(tensors)
    save_file(tensors, str(f), metadata={"format": "pt"})


KEY = "model.layers.0.mlp.up_proj"


@pytest.mark.parametrize(
    "edit,error",
    [
        (lambda t: t.pop(f"{KEY}.weight_scale_inv"), f"FP8 tensor {KEY}.weight has no weight_scale_inv"),
        (lambda t: t.pop(f"{KEY}.weight"), f"{KEY}.weight_scale_inv has no {KEY}.weight"),
        (lambda t: t.__setitem__(f"{KEY}.weight_scale_inv", t[f"{KEY}.weight_scale_inv"][:1]),
         rf"{KEY}.weight_scale_inv has shape \(1, 2\), expected \(4, 2\)"),
        (lambda t: t.__setitem__(f"{KEY}.weight_scale_inv", t[f"{KEY}.weight_scale_inv"].double()),
         rf"{KEY}.weight_scale_inv has dtype torch.float64, expected float32"),
        (lambda t: t.__setitem__(f"{KEY}.weight", t[f"{KEY}.weight"][:, :128].contiguous()),
         rf"{KEY}.weight_scale_inv has shape \(4, 2\), expected \(4, 1\)"),
        (lambda t: t.__setitem__("model.layers.0.mlp.extra.weight_scale_inv", torch.ones(1, 1)),
         "has no model.layers.0.mlp.extra.weight"),
        (lambda t: t.__setitem__("model.bogus", torch.ones(3)), "unexpected tensor model.bogus$"),
        (lambda t: t.__setitem__("model.layers.0.mlp.experts.0.w1.weight", torch.ones(3)),
         "unexpected tensor model.layers.0.mlp.experts.0.w1.weight .a Mixture-of-Experts checkpoint"),
        (lambda t: t.pop("model.norm.weight"), "missing tensor model.norm.weight"),
    ],
)
def test_malformed_checkpoints_are_clear_errors(tmp_path, edit, error):
    _saved(tmp_path)
    _corrupt(tmp_path, edit)
    with pytest.raises((ValueError, TypeError), match=error):  # TypeError for wrong dtypes
        load_quantized_(_fresh("llama"), tmp_path)


def test_wrong_shape_for_the_model_and_pickle_only(tmp_path):
    _saved(tmp_path)
    bigger = zoo.MODELS["llama"](torch.bfloat16)[0]
    bigger.model.layers[0].mlp.up_proj = torch.nn.Linear(256, 640, bias=False)
    with pytest.raises(ValueError, match=rf"{KEY}.weight has shape \(512, 256\), the model expects \(640, 256\)"):
        load_quantized_(bigger, tmp_path)
    pickle_dir = tmp_path / "pickle"
    pickle_dir.mkdir()
    torch.save({}, pickle_dir / "pytorch_model.bin")
    with pytest.raises(ValueError, match="only safetensors"):
        load_quantized_(_fresh("llama"), pickle_dir)


def test_save_needs_a_quantized_model(tmp_path):
    model = zoo.llama()[0]
    with pytest.raises(ValueError, match="call fp8inductor.quantize_ first"):
        save_pretrained(model, tmp_path)


def test_loaded_model_compiles_without_requantizing(tmp_path):
    model, inputs, n = _saved(tmp_path)
    loaded = _fresh("llama")
    load_quantized_(loaded, tmp_path)
    torch._dynamo.reset()
    with torch.inference_mode():
        y = zoo.main_output(torch.compile(loaded, backend="fp8block")(**inputs))
        expect = zoo.main_output(model(**inputs))
    assert not fp8inductor.last_report().converted  # already FP8: nothing to quantize again
    # Same FP8 ops; Inductor's fused bf16 norms/attention round apart from eager: measured relative
    # (Frobenius) error 0.031-0.034 over three seeds on the CPU (2026-12-08), as test_models.py's 0.03-0.05.
    assert fp8inductor.testing.rel_err(y, expect) < 0.06
    torch._dynamo.reset()


class _Attn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.wkv_a = torch.nn.Linear(256, 576, bias=False)  # DeepSeek-V3 kv_a_proj: N = 576 = 4.5 blocks
        self.norm = torch.nn.LayerNorm(576)


def test_deepseek_style_checkpoint_partial_grid_scale_name_and_ue8m0(tmp_path):
    w = torch.randn(576, 256) / 16
    q, s = fp8inductor.quantize_weight(w, scale_fmt="ue8m0")
    assert s.shape == (5, 2)  # ceil grid: the last block row holds 64 rows
    ref = _Attn()
    save_file({"wkv_a.weight": q, "wkv_a.scale": s, "norm.weight": ref.norm.weight.detach(),
               "norm.bias": ref.norm.bias.detach()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {
        "quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128],
        "scale_fmt": "ue8m0"}}))
    model = _Attn()
    assert load_quantized_(model, tmp_path) == ["wkv_a"]
    assert_fp8_equal(model.wkv_a.weight, q)
    assert torch.equal(model.wkv_a.weight_scale_inv, s) and model.wkv_a.scale_fmt == "ue8m0"
    x = torch.randn(3, 256)
    torch.testing.assert_close(model.wkv_a(x), fp8inductor.block_fp8_linear(x, q, s, scale_fmt="ue8m0"), rtol=0, atol=0)


@pytest.mark.parametrize("stored", ["e8m0", "float32"])
def test_single_file_scale_fmt_follows_the_scale_dtype(tmp_path, stored):
    """A lone .safetensors file has no config.json: float8_e8m0fnu scales (only powers of two fit)
    mean ue8m0, float32 scales mean float (the activation scales follow)."""
    w = torch.randn(576, 256) / 16
    q, s = fp8inductor.quantize_weight(w, scale_fmt="ue8m0")
    ref = _Attn()
    stored_s = s.to(torch.float8_e8m0fnu) if stored == "e8m0" else s
    save_file({"wkv_a.weight": q, "wkv_a.weight_scale_inv": stored_s, "norm.weight": ref.norm.weight.detach(),
               "norm.bias": ref.norm.bias.detach()}, str(tmp_path / "one.safetensors"))
    model = _Attn()
    assert load_quantized_(model, tmp_path / "one.safetensors") == ["wkv_a"]
    assert torch.equal(model.wkv_a.weight_scale_inv, s)
    assert model.wkv_a.scale_fmt == ("ue8m0" if stored == "e8m0" else "float")


@pytest.mark.parametrize("stored", ["e8m0", "float32"])
@pytest.mark.parametrize(
    "config",
    [
        {"model_type": "deepseek_v3"},  # no quantization_config (DeepSeek keeps scale_fmt elsewhere)
        {"quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}},  # transformers'
        {"quantization_config": {"quant_method": "fp8", "scale_fmt": None}},
    ],
    ids=["no-quantization-config", "no-scale-fmt", "null-scale-fmt"],
)
def test_directory_without_a_declared_scale_fmt_reads_as_its_file(tmp_path, stored, config):
    """A config.json that declares no scale_fmt leaves it to the scale dtypes, as for the lone file:
    loading the directory and loading its file give the same modules (it once read "float" for the
    directory and "ue8m0" for the file, a silent change of the activation scales)."""
    w = torch.randn(576, 256) / 16
    q, s = fp8inductor.quantize_weight(w, scale_fmt="ue8m0")
    ref = _Attn()
    stored_s = s.to(torch.float8_e8m0fnu) if stored == "e8m0" else s
    save_file({"wkv_a.weight": q, "wkv_a.weight_scale_inv": stored_s, "norm.weight": ref.norm.weight.detach(),
               "norm.bias": ref.norm.bias.detach()}, str(tmp_path / "model.safetensors"))  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    from_dir, from_file = _Attn(), _Attn()
    load_quantized_(from_dir, tmp_path)
    load_quantized_(from_file, tmp_path / "model.safetensors")
    want = "ue8m0" if stored == "e8m0" else "float"
    assert from_dir.wkv_a.scale_fmt == from_file.wkv_a.scale_fmt == want


@pytest.mark.parametrize("declared", ["ue8m0", None])
def test_uint8_e8m0_scales_load_where_ue8m0_is_declared(tmp_path, declared):
    """MXFP8-style checkpoints store ue8m0 scales as raw uint8 exponent bytes; transformers reads them
    as float8_e8m0fnu where quantization_config says scale_fmt "ue8m0". So does load_quantized_ (it
    refused them); without that declaration a uint8 scale stays a clear error naming the fix."""
    w = torch.randn(576, 256) / 16
    q, s = fp8inductor.quantize_weight(w, scale_fmt="ue8m0")
    ref = _Attn()
    save_file({"wkv_a.weight": q, "wkv_a.weight_scale_inv": s.to(torch.float8_e8m0fnu).view(torch.uint8),
               "norm.weight": ref.norm.weight.detach(), "norm.bias": ref.norm.bias.detach()},
              str(tmp_path / "model.safetensors"))  # fmt: skip
    qc = {"quant_method": "fp8", "weight_block_size": [128, 128]}
    if declared:
        qc["scale_fmt"] = declared
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": qc}))
    model = _Attn()
    if declared is None:
        with pytest.raises(CheckpointDtypeError, match=r"uint8.*scale_fmt \"ue8m0\""):
            load_quantized_(model, tmp_path)
        return
    assert load_quantized_(model, tmp_path) == ["wkv_a"]
    assert torch.equal(model.wkv_a.weight_scale_inv, s) and model.wkv_a.scale_fmt == "ue8m0"


def test_dequantize_weight_takes_e8m0_scales():
    """transformers 5 keeps ue8m0 scales as float8_e8m0fnu: dequantize_weight widens them (exact)."""
    q, s = fp8inductor.quantize_weight(torch.randn(200, 300), scale_fmt="ue8m0")
    want = fp8inductor.dequantize_weight(q, s, dtype=torch.float32)
    assert torch.equal(fp8inductor.dequantize_weight(q, s.to(torch.float8_e8m0fnu), dtype=torch.float32), want)


@pytest.mark.gpu
def test_round_trip_on_cuda(tmp_path):
    model, inputs, _ = _saved(tmp_path)
    loaded = _fresh("llama")
    load_quantized_(loaded, tmp_path)
    model, loaded = model.cuda(), loaded.cuda()
    inputs = {k: v.cuda() for k, v in inputs.items()}
    with torch.inference_mode():
        y_loaded = zoo.main_output(loaded(**inputs))
        y_saved = zoo.main_output(model(**inputs))
        y_cpu = zoo.main_output(model.cpu()(**{k: v.cpu() for k, v in inputs.items()}))
    assert torch.equal(y_loaded, y_saved)  # same bytes, same kernels
    # Triton kernels vs the CPU reference: same quantized weights; bf16 intermediates may round apart.
    # Measured 0.03-0.05 between Inductor and eager on the CPU for the same reason (test_models.py).
    assert fp8inductor.testing.rel_err(y_loaded.cpu(), y_cpu) < 0.1


@pytest.mark.gpu
def test_load_into_a_model_on_cuda_puts_the_fp8_modules_there(tmp_path):
    """The file's tensors are read to the CPU; the FP8 modules go where the modules they replace are
    (until 2026-12-08 they stayed on the CPU in a CUDA model: a device-mismatch error at the first forward)."""
    model, inputs, _ = _saved(tmp_path)
    loaded = _fresh("llama").cuda()
    converted = load_quantized_(loaded, tmp_path)
    for path in converted:
        mod = loaded.get_submodule(path)
        assert mod.weight.is_cuda and mod.weight_scale_inv.is_cuda and (mod.bias is None or mod.bias.is_cuda), path
    model = model.cuda()
    inputs = {k: v.cuda() for k, v in inputs.items()}
    with torch.inference_mode():
        assert torch.equal(zoo.main_output(loaded(**inputs)), zoo.main_output(model(**inputs)))


def test_replaced_modules_on_the_meta_device_go_where_the_model_is(tmp_path):
    """Only the modules that become FP8 may be on the meta device; their FP8 replacements are put on the
    device of the rest of the model."""
    model, inputs, _ = _saved(tmp_path)
    loaded = _fresh("llama")
    up = loaded.model.layers[0].mlp.up_proj
    up.weight = torch.nn.Parameter(torch.empty_like(up.weight, device="meta"))
    load_quantized_(loaded, tmp_path)
    assert loaded.model.layers[0].mlp.up_proj.weight.device.type == "cpu"
    with torch.inference_mode():
        assert torch.equal(zoo.main_output(loaded(**inputs)), zoo.main_output(model(**inputs)))


@pytest.mark.gpu
@pytest.mark.usefixtures("fresh_dynamo")
def test_transformers_loaded_fp8linears_convert_on_cuda(tmp_path):
    """On a GPU machine transformers keeps its FP8Linear modules: convert them, run and compile ours."""
    pytest.importorskip("accelerate")
    from transformers import AutoModelForCausalLM

    model, inputs, n = _saved(tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).cuda().eval()
    before = _fp8_linear_tensors(hf)
    assert len(before) == n, "transformers should keep FP8Linear modules when a GPU is present"
    assert sorted(fp8inductor.convert_transformers_fp8_(hf)) == sorted(before)
    for path, (weight, scale, _) in before.items():
        assert hf.get_submodule(path).weight.data_ptr() == weight.data_ptr(), path
        assert hf.get_submodule(path).weight_scale_inv.data_ptr() == scale.data_ptr(), path
    model = model.cuda()
    inputs = {k: v.cuda() for k, v in inputs.items()}
    with torch.inference_mode():
        for path in before:  # each converted linear: same bytes, same kernels as ours, bit for bit
            lin = hf.get_submodule(path)
            x = torch.randn(3, lin.in_features, device="cuda", dtype=torch.bfloat16)
            assert torch.equal(lin(x), model.get_submodule(path)(x)), path
        y_hf = zoo.main_output(hf(**inputs))
        # Whole model: transformers' from_pretrained picks its own attention implementation, so the
        # bf16 parts round apart (measured 1-ulp differences, amplified by FP8 rounding downstream).
        assert fp8inductor.testing.rel_err(y_hf, zoo.main_output(model(**inputs))) < 0.08
        y_compiled = zoo.main_output(torch.compile(hf, backend="fp8block")(**inputs))
    assert not fp8inductor.last_report().converted  # nothing quantized again: the ops were already there
    assert fp8inductor.testing.rel_err(y_compiled, y_hf) < 0.08  # bf16 intermediates round apart


# ---------------------------------------------------------------------------------------------
# transformers' own FP8Linear modules -> FP8BlockLinear (tensors shared)
# ---------------------------------------------------------------------------------------------


def _hf_fp8_model(name):
    """(bf16 model, the same model with transformers FP8Linear modules holding our quantized bytes, inputs, n)."""
    from transformers import FineGrainedFP8Config
    from transformers.integrations.finegrained_fp8 import replace_with_fp8_linear

    torch.manual_seed(0)
    model, inputs, n = zoo.MODELS[name](torch.bfloat16)
    hf = copy.deepcopy(model)
    # On the CPU transformers creates the FP8Linear modules on the meta device; its loader would fill them.
    replace_with_fp8_linear(hf, ["lm_head"], FineGrainedFP8Config(weight_block_size=[128, 128]))
    for path, mod in hf.named_modules():
        if type(mod).__name__ == "FP8Linear":
            src = model.get_submodule(path)
            q, s = fp8inductor.quantize_weight(src.weight.detach())
            mod.weight = torch.nn.Parameter(q, requires_grad=False)
            mod.weight_scale_inv = torch.nn.Parameter(s, requires_grad=False)
            if src.bias is not None:
                mod.bias = torch.nn.Parameter(src.bias.detach().clone(), requires_grad=False)
    return model, hf, inputs, n


def _fp8_linear_tensors(model):
    """{path: (weight, weight_scale_inv, bias)} of the transformers FP8Linear modules."""
    return {
        path: (mod.weight, mod.weight_scale_inv, mod.bias)
        for path, mod in model.named_modules()
        if type(mod).__name__ == "FP8Linear"
    }


@pytest.mark.parametrize("name", ["llama", "qwen2"])  # qwen2: q/k/v projections with bias
def test_convert_transformers_fp8_shares_tensors_and_matches_quantize_(name):
    model, hf, inputs, n = _hf_fp8_model(name)
    before = _fp8_linear_tensors(hf)
    assert len(before) == n
    converted = fp8inductor.convert_transformers_fp8_(hf)
    assert sorted(converted) == sorted(before)
    for path, (weight, scale, bias) in before.items():
        new = hf.get_submodule(path)
        assert isinstance(new, FP8BlockLinear) and new.scale_fmt == "float"
        assert new.weight.data_ptr() == weight.data_ptr(), path  # shared, not copied
        assert new.weight_scale_inv.data_ptr() == scale.data_ptr(), path
        assert (new.bias is None) == (bias is None) and (bias is None or new.bias.data_ptr() == bias.data_ptr())
    assert not _fp8_linear_tensors(hf)
    ours = copy.deepcopy(model)
    fp8inductor.quantize_(ours)
    with torch.no_grad():
        assert torch.equal(zoo.main_output(hf(**inputs)), zoo.main_output(ours(**inputs)))
        torch._dynamo.reset()
        y_hf = zoo.main_output(torch.compile(hf, backend="fp8block")(**inputs))
        assert not fp8inductor.last_report().converted  # FP8 already: nothing quantized again
        torch._dynamo.reset()
        y_ours = zoo.main_output(torch.compile(ours, backend="fp8block")(**inputs))
    torch._dynamo.reset()
    assert torch.equal(y_hf, y_ours)


def test_quantize_converts_fp8linear_modules_too_unless_told_not_to():
    model, hf, inputs, n = _hf_fp8_model("llama")
    before = _fp8_linear_tensors(hf)
    keep = "model.layers.1.mlp.down_proj"
    skipped = fp8inductor.quantize_(hf, fp8inductor.FP8BlockConfig(modules_to_not_convert=("lm_head", keep)))
    assert skipped[keep] == f"modules_to_not_convert entry {keep!r}"
    assert type(hf.get_submodule(keep)).__name__ == "FP8Linear"
    assert set(_fp8_linear_tensors(hf)) == {keep}
    for path, (weight, _, _) in before.items():
        if path != keep:
            assert hf.get_submodule(path).weight.data_ptr() == weight.data_ptr(), path
    assert "lm_head" in skipped  # the bf16 lm_head: skipped as before


def test_convert_transformers_fp8_ue8m0_scales():
    from transformers.integrations.finegrained_fp8 import FP8Linear

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = FP8Linear(256, 576, block_size=(128, 128), scale_fmt="ue8m0")

    w = torch.randn(576, 256) / 16
    q, s = fp8inductor.quantize_weight(w, scale_fmt="ue8m0")
    block = Block()
    block.proj.weight = torch.nn.Parameter(q, requires_grad=False)
    block.proj.weight_scale_inv = torch.nn.Parameter(s.to(torch.float8_e8m0fnu), requires_grad=False)
    assert fp8inductor.convert_transformers_fp8_(block) == ["proj"]
    assert block.proj.scale_fmt == "ue8m0" and block.proj.weight.data_ptr() == q.data_ptr()
    assert torch.equal(block.proj.weight_scale_inv, s)  # e8m0 widened to float32 exactly
    x = torch.randn(3, 256)
    assert torch.equal(block.proj(x), fp8inductor.block_fp8_linear(x, q, s, scale_fmt="ue8m0"))


def _fp8_linear(**kw):
    from transformers.integrations.finegrained_fp8 import FP8Linear

    mod = FP8Linear(256, 384, **{"block_size": (128, 128), **kw})
    q, s = fp8inductor.quantize_weight(torch.randn(384, 256))
    mod.weight = torch.nn.Parameter(q, requires_grad=False)
    if mod.weight_scale_inv.dim() == 2:
        mod.weight_scale_inv = torch.nn.Parameter(s, requires_grad=False)
    return mod


def test_transformers_fp8_with_hooks_or_shared_is_one_decision(caplog):
    """An FP8Linear with a forward hook is left as it is (the swap would drop the hook; quantize_
    reports it, convert_transformers_fp8_ warns), as for nn.Linear; one FP8Linear reachable at two
    paths is converted or skipped at both (it was split: converted at one path, left at the other)."""
    hooked = torch.nn.Sequential(_fp8_linear())
    calls = []
    hooked[0].register_forward_hook(lambda *a: calls.append(1))
    assert "forward hooks" in fp8inductor.quantize_(hooked)["0"]
    with caplog.at_level(logging.WARNING, logger="fp8inductor"):
        assert fp8inductor.convert_transformers_fp8_(hooked) == []
    assert any("leaves 0 as it is: it has forward hooks" in r.getMessage() for r in caplog.records)
    assert type(hooked[0]).__name__ == "FP8Linear"
    shared = _fp8_linear()
    root = torch.nn.Module()
    root.a, root.b = torch.nn.Sequential(shared), torch.nn.Sequential(shared)
    skipped = fp8inductor.quantize_(root, {"modules_to_not_convert": ["a"]})
    assert set(skipped) == {"a.0", "b.0"} and root.a[0] is shared and root.b[0] is shared
    assert fp8inductor.convert_transformers_fp8_(root) == ["a.0", "b.0"]
    assert root.a[0] is root.b[0] and isinstance(root.a[0], FP8BlockLinear)


def _break_scale_shape(mod):
    mod.weight_scale_inv = torch.nn.Parameter(torch.ones(1, 1), requires_grad=False)


def _break_weight_dtype(mod):
    mod.weight = torch.nn.Parameter(torch.zeros(384, 256, dtype=torch.bfloat16), requires_grad=False)


def _break_scale_dtype(mod):
    mod.weight_scale_inv = torch.nn.Parameter(mod.weight_scale_inv.double(), requires_grad=False)


def _meta_weight(mod):
    mod.weight = torch.nn.Parameter(torch.empty(384, 256, dtype=torch.float8_e4m3fn, device="meta"))


@pytest.mark.parametrize(
    "kw,edit,error,match",
    [
        ({"block_size": (64, 64)}, None, ValueError, r"b\.proj: block_size \(64, 64\) is not supported"),
        ({"block_size": None}, None, ValueError, r"b\.proj: per-tensor FP8 \(block_size None\)"),
        ({"activation_scheme": "static"}, None, ValueError, r"b\.proj: activation_scheme 'static' is not supported"),
        ({}, _break_scale_shape, ValueError, r"b\.proj\.weight: weight_scale_inv has shape \(1, 1\), expected \(3, 2\)"),
        ({}, _break_weight_dtype, TypeError, r"b\.proj\.weight: FP8 weight must be torch\.float8_e4m3fn"),
        ({}, _break_scale_dtype, TypeError, r"b\.proj\.weight: weight_scale_inv must be float32"),
        ({}, _meta_weight, ValueError, r"b\.proj: the weight is on the meta device"),
    ],
)
def test_convert_transformers_fp8_errors_name_the_module_and_change_nothing(kw, edit, error, match):
    model = torch.nn.Module()
    model.a = _fp8_linear()  # valid: must stay an FP8Linear when another module fails
    model.b = torch.nn.Module()
    model.b.proj = _fp8_linear(**kw)
    if edit is not None:
        edit(model.b.proj)
    with pytest.raises(error, match=match):
        fp8inductor.convert_transformers_fp8_(model)
    assert type(model.a).__name__ == "FP8Linear"
    with pytest.raises(error, match=match):
        fp8inductor.quantize_(model)  # quantize_ converts FP8Linear modules the same way
    assert type(model.a).__name__ == "FP8Linear"


# ---------------------------------------------------------------------------------------------
# Backend-only route: bf16 model in, FP8 in the compiled graph; release_bf16_weights
# ---------------------------------------------------------------------------------------------


def _live_fp8_tensors() -> list[torch.Tensor]:
    """Every plain (not fake, not meta) float8_e4m3fn tensor the garbage collector can see."""
    gc.collect()
    return [
        o
        for o in gc.get_objects()
        if type(o) in (torch.Tensor, torch.nn.Parameter) and o.dtype == torch.float8_e4m3fn and not o.is_meta
    ]


def _linear_paths(model):
    return [p for p, m in model.named_modules() if isinstance(m, torch.nn.Linear) and p != "lm_head"]


@pytest.mark.usefixtures("fresh_dynamo")
def test_release_bf16_weights_frees_both_copies_and_recompiles_to_the_same_output():
    torch.manual_seed(0)
    model, inputs, n = zoo.llama()
    paths = _linear_paths(model)
    bf16_weights = [weakref.ref(model.get_submodule(p).weight) for p in paths]
    preexisting = {id(t) for t in _live_fp8_tensors()}
    with torch.no_grad():
        fast = torch.compile(model, backend="fp8block")
        y = zoo.main_output(fast(**inputs))
        assert len(fp8inductor.last_report().converted) == n
        graph_fp8 = [weakref.ref(t) for t in _live_fp8_tensors() if id(t) not in preexisting]
        assert len(graph_fp8) >= n  # the compiled graph's own FP8 weights

        skipped = fp8inductor.release_bf16_weights(fast)  # the torch.compile wrapper is accepted

        assert set(skipped) == {"lm_head"}
        assert all(isinstance(model.get_submodule(p), FP8BlockLinear) for p in paths)
        assert all(r() is None for r in bf16_weights)  # nothing holds the bf16 weights any more
        assert all(r() is None for r in graph_fp8)  # nor the old graph's FP8 copies
        assert torch.equal(zoo.main_output(fast(**inputs)), y)  # same bytes: same output, bit for bit
        assert not fp8inductor.last_report().converted  # recompiled against FP8 modules: no requantization
        longer = torch.randint(0, 512, (2, 19), generator=torch.Generator().manual_seed(1))
        y_longer = zoo.main_output(fast(input_ids=longer))  # a new shape recompiles
        eager = zoo.main_output(model(input_ids=longer))
    assert y_longer.shape == (2, 19, 512)
    assert fp8inductor.testing.rel_err(y_longer, eager) < 0.08  # Inductor vs eager bf16 rounding (test_models)


@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("listed,converted", [("0", set()), ("2", {"0"})])
def test_release_converts_what_the_backend_converted_for_tied_linears(listed, converted):
    """Two linears sharing one weight (first named "0.weight"), one in modules_to_not_convert. The
    backend skips a matmul whose own module or whose weight's owner is listed: with "0" listed both
    stay high precision, with "2" listed the first converts. release_bf16_weights (quantize_) now
    decides the same way, so the output is unchanged. (With "0" listed, quantize_ used to convert the
    second linear: the output changed after the release, and the tied bf16 weight stayed alive
    beside a new FP8 copy.)"""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(256, 256, bias=False), torch.nn.ReLU(), torch.nn.Linear(256, 256, bias=False)
    ).eval()
    model[2].weight = model[0].weight
    opts = {"modules_to_not_convert": [listed]}
    x = torch.randn(4, 256)
    with torch.no_grad():
        fast = torch.compile(model, backend="fp8block", options=opts)
        y = fast(x)
        assert {d.module for d in fp8inductor.last_report().converted} == converted
        fp8inductor.release_bf16_weights(fast, opts)
        assert {p for p, m in model.named_children() if isinstance(m, FP8BlockLinear)} == converted
        assert torch.equal(fast(x), y)


@pytest.mark.usefixtures("fresh_dynamo")
def test_in_place_weight_update_after_compile_is_stale_until_released():
    torch.manual_seed(0)
    model, inputs, _ = zoo.llama()
    with torch.no_grad():
        fast = torch.compile(model, backend="fp8block")
        y = zoo.main_output(fast(**inputs))
        model.model.layers[0].mlp.up_proj.weight.data.mul_(2)
        # Documented pitfall: the compiled graph holds FP8 constants frozen at compile time.
        assert torch.equal(zoo.main_output(fast(**inputs)), y)
        fp8inductor.release_bf16_weights(fast)  # quantizes the updated weights and recompiles
        y_new = zoo.main_output(fast(**inputs))
        eager = zoo.main_output(model(**inputs))
    assert fp8inductor.testing.rel_err(y_new, eager) < 0.08
    assert fp8inductor.testing.rel_err(y_new, y) > 4 * fp8inductor.testing.rel_err(y_new, eager)


@pytest.mark.usefixtures("fresh_dynamo")
def test_reset_after_an_in_place_update_frees_the_old_graphs_fp8_copies():
    """The documented fix for in-place weight changes: ``fp8inductor.reset()``, then call again. The
    new graph quantizes the new values, and the old graph's FP8 constants are gone (with plain
    ``torch.compiler.reset()`` Inductor's module cache kept them: one more FP8 copy of the weights per
    change-and-reset cycle)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(3)]).eval()
    x = torch.randn(4, 256)
    preexisting = {id(t) for t in _live_fp8_tensors()}
    with torch.no_grad():
        fast = torch.compile(model, backend="fp8block")
        fast(x)
        for step in range(2):
            old = [weakref.ref(t) for t in _live_fp8_tensors() if id(t) not in preexisting]
            assert len(old) >= 3  # the compiled graph's FP8 weights
            model[1].weight.mul_(2)
            fp8inductor.reset()
            y = fast(x)
            assert all(r() is None for r in old), f"cycle {step}: the old graph's FP8 copies are still alive"
            want = x
            for lin in model:
                want = fp8inductor.block_fp8_linear(want, *fp8inductor.quantize_weight(lin.weight), lin.bias)
            assert torch.equal(y, want)


def test_state_dict_of_high_precision_weights_is_refused_by_fp8_modules():
    """A bf16 state dict loaded into a converted model: copy_ cast the bf16 weight into e4m3 codes under
    the old scales (relative error 0.98, no error, even with strict=False as HF loaders call it). Now
    load_state_dict raises, strict or not; an FP8 state dict still round-trips bit for bit."""
    torch.manual_seed(0)
    bf16 = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128)).to(torch.bfloat16)
    high = {k: v.clone() for k, v in bf16.state_dict().items()}
    model = copy.deepcopy(bf16)
    quantize_(model)
    fp8_state = {k: v.clone() for k, v in model.state_dict().items()}
    for strict in (True, False):
        with pytest.raises(RuntimeError, match=r"0\.weight: FP8BlockLinear holds torch.float8_e4m3fn"):
            model.load_state_dict(high, strict=strict)
    with pytest.raises(RuntimeError, match="must be loaded together"):
        model.load_state_dict({k: v for k, v in fp8_state.items() if k != "2.weight_scale_inv"}, strict=False)
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    y = model(x)
    fresh = copy.deepcopy(bf16)
    quantize_(fresh)
    fresh.load_state_dict(fp8_state)
    assert torch.equal(fresh(x), y)


@pytest.mark.parametrize("assign", [False, True])
def test_e8m0_scales_are_widened_however_they_are_loaded(assign):
    """transformers 5 stores ue8m0 scales as float8_e8m0fnu. copy_ widened them, but
    load_state_dict(assign=True) (loading into a model built on the meta device) and plain assignment
    stored them as they were, and the next forward refused them. Every path now holds float32, exactly."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 384))
    quantize_(model, fp8inductor.FP8BlockConfig(scale_fmt="ue8m0"))
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    want = model(x)
    e8m0 = {
        k: v.to(torch.float8_e8m0fnu) if k.endswith("scale_inv") else v.clone() for k, v in model.state_dict().items()
    }
    fresh = torch.nn.Sequential(torch.nn.Linear(256, 384))
    quantize_(fresh, fp8inductor.FP8BlockConfig(scale_fmt="ue8m0"))
    fresh.load_state_dict(e8m0, assign=assign)
    assert fresh[0].weight_scale_inv.dtype == torch.float32
    assert e8m0["0.weight_scale_inv"].dtype == torch.float8_e8m0fnu  # the caller's dict is not changed
    assert torch.equal(fresh(x), want)
    fresh[0].weight_scale_inv = e8m0["0.weight_scale_inv"]
    assert fresh[0].weight_scale_inv.dtype == torch.float32 and torch.equal(fresh(x), want)


def test_fp8_weight_cannot_be_replaced_by_a_high_precision_one():
    """transformers' tie_weights (also run by resize_token_embeddings) assigns the embedding's bf16 weight
    to a converted lm_head: it used to replace the FP8 buffer and leave the old scales, failing at the
    next forward deep in the op. The assignment itself is now the error."""
    lin = FP8BlockLinear.from_weight(torch.randn(256, 256))
    with pytest.raises(TypeError, match="FP8BlockLinear.weight must stay torch.float8_e4m3fn, got torch.bfloat16"):
        lin.weight = torch.nn.Parameter(torch.randn(256, 256, dtype=torch.bfloat16))
    with pytest.raises(TypeError, match="weight_scale_inv must stay"):
        lin.weight_scale_inv = lin.weight_scale_inv.half()
    lin.weight = lin.weight.clone()  # FP8 stays assignable (load_state_dict(assign=True) does this)
    lin.weight_scale_inv = lin.weight_scale_inv.to(torch.float8_e8m0fnu).float()


def test_quantize_of_a_compiled_model_converts_the_model_it_runs():
    """quantize_ on torch.compile's wrapper replaced the wrapper's _orig_mod attribute, while the compiled
    wrapper kept calling the old bf16 modules (no error, no FP8). It now converts the wrapped model, as
    release_bf16_weights does; a compiled root linear is the clear ValueError of an uncompiled one."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU()).eval()
    fast = torch.compile(model, backend="eager")
    assert quantize_(fast) == {}
    assert isinstance(model[0], FP8BlockLinear)
    x = torch.randn(3, 256)
    with torch.no_grad():
        assert torch.equal(fast(x), model(x))
    with pytest.raises(ValueError, match="the model itself is a linear"):
        quantize_(torch.compile(torch.nn.Linear(256, 256), backend="eager"))


def test_an_fp8_lm_head_is_not_listed_as_kept(tmp_path):
    """transformers skips what ``modules_to_not_convert`` lists: a listed FP8 ``lm_head`` would be
    loaded as a bf16 Linear holding the e4m3 codes without their scales (wrong logits, no error)."""
    torch.manual_seed(0)
    model, _, _ = zoo.MODELS["llama"](torch.bfloat16)
    quantize_(model, fp8inductor.FP8BlockConfig(modules_to_not_convert=()))
    assert isinstance(model.lm_head, FP8BlockLinear)
    save_pretrained(model, tmp_path)
    qc = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert "lm_head" not in qc["modules_to_not_convert"]
    assert "lm_head.weight_scale_inv" in load_file(tmp_path / "model.safetensors")



def test_moe_experts_left_in_high_precision_are_listed_as_kept(tmp_path):
    """transformers' FineGrainedFP8 loader turns every module named ``*.experts`` into its FP8Experts
    unless ``modules_to_not_convert`` lists it. ``quantize_`` leaves a transformers 5 MoE's experts
    (3-D gate_up_proj / down_proj) in bf16: unlisted, an FP8 GPU loaded those bf16 weights as e4m3
    codes beside uninitialized scales (wrong output, no error). The CPU loader dequantizes instead,
    so the check runs transformers' module replacement with the written list, as its GPU path does."""
    pytest.importorskip("accelerate")
    from transformers import FineGrainedFP8Config, MixtralConfig, MixtralForCausalLM
    from transformers.integrations.finegrained_fp8 import replace_with_fp8_linear

    cfg = MixtralConfig(hidden_size=256, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, vocab_size=512, num_local_experts=4, num_experts_per_tok=2)
    torch.manual_seed(0)
    model = MixtralForCausalLM(cfg).to(torch.bfloat16).eval()
    quantize_(model)
    save_pretrained(model, tmp_path)
    kept = json.loads((tmp_path / "config.json").read_text())["quantization_config"]["modules_to_not_convert"]
    assert {"model.layers.0.mlp.experts", "model.layers.1.mlp.experts"} <= set(kept), kept
    hf = MixtralForCausalLM(cfg).to(torch.bfloat16)
    replace_with_fp8_linear(hf, kept, FineGrainedFP8Config(weight_block_size=[128, 128]), pre_quantized=True)
    converted = {path for path, mod in hf.named_modules() if "FP8" in type(mod).__name__}
    ours = {path for path, mod in model.named_modules() if isinstance(mod, FP8BlockLinear)}
    assert converted == ours  # the attention projections; the experts stay as the file holds them

def test_quantize_converts_a_shared_module_at_every_path():
    lin = torch.nn.Linear(256, 256)
    model = torch.nn.Sequential(lin, torch.nn.ReLU(), lin)
    x = torch.randn(3, 256)
    first = fp8inductor.block_fp8_linear(x, *_q(lin), lin.bias)
    want = fp8inductor.block_fp8_linear(torch.relu(first), *_q(lin), lin.bias)
    assert quantize_(model) == {}
    assert isinstance(model[0], FP8BlockLinear) and model[2] is model[0]
    torch.testing.assert_close(model(x), want, rtol=0, atol=0)
    # skipped at one path: skipped at both (one module, one decision), and reported at each
    lin2 = torch.nn.Linear(256, 256)
    model2 = torch.nn.Sequential(torch.nn.Sequential(lin2), lin2)
    skipped = quantize_(model2, fp8inductor.FP8BlockConfig(modules_to_not_convert=("0",)))
    assert set(skipped) == {"0.0", "1"} and model2[1] is lin2 and model2[0][0] is lin2


def _q(lin):
    return fp8inductor.quantize_weight(lin.weight.detach())


def test_quantize_refuses_a_root_linear_and_leaves_it_alone():
    lin = torch.nn.Linear(256, 256)
    keys = set(lin.state_dict())
    with pytest.raises(ValueError, match="the model itself is a linear"):
        quantize_(lin)
    with pytest.raises(ValueError, match="the model itself is a linear"):
        fp8inductor.convert_transformers_fp8_(lin)
    assert set(lin.state_dict()) == keys and type(lin) is torch.nn.Linear


def test_quantize_skips_linears_whose_weights_torch_reads_directly():
    """nn.MultiheadAttention reads out_proj.weight itself, nn.TransformerEncoderLayer's fast path
    linear1/linear2's: FP8 modules there would hand them e4m3 codes (a dtype error or worse)."""
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(256, 4, 512, batch_first=True).eval()
    mlp = torch.nn.Sequential(layer, torch.nn.Linear(256, 256))
    x = torch.randn(2, 5, 256)
    with torch.no_grad():
        want = mlp(x)
    skipped = quantize_(mlp)
    assert set(skipped) == {"0.self_attn.out_proj", "0.linear1", "0.linear2"}, skipped
    assert "MultiheadAttention" in skipped["0.self_attn.out_proj"] and "fast path" in skipped["0.linear1"]
    assert isinstance(mlp[1], FP8BlockLinear)
    with torch.no_grad():
        got = mlp(x)  # the fast path of the encoder layer runs (eval, no grad, batch_first)
    assert (got - want).norm() / want.norm() < 0.05  # only mlp[1] is FP8: one FP8 linear's error


def test_quantize_on_the_meta_device_is_a_clear_error():
    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Linear(256, 256))
    with pytest.raises(ValueError, match="0: the weight is on the meta device"):
        quantize_(model)
    assert type(model[0]) is torch.nn.Linear


class _TiedLinearFirst(torch.nn.Module):
    """A linear whose weight an embedding shares, the linear first in parameter order."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(256, 512, bias=False)
        self.emb = torch.nn.Embedding(512, 256)
        self.emb.weight = self.proj.weight


def test_a_tied_weight_saved_only_as_fp8_is_a_missing_tensor(tmp_path):
    """The swap to FP8BlockLinear unties the pair: the embedding's half would keep its random init."""
    torch.manual_seed(0)
    q, s = fp8inductor.quantize_weight(torch.randn(512, 256))
    save_file({"proj.weight": q, "proj.weight_scale_inv": s}, tmp_path / "model.safetensors")
    model = _TiedLinearFirst()
    before = model.emb.weight.detach().clone()
    with pytest.raises(fp8inductor.checkpoint.CheckpointError, match="missing tensor emb.weight"):
        load_quantized_(model, tmp_path)
    assert type(model.proj) is torch.nn.Linear and torch.equal(model.emb.weight, before)
    # with the embedding stored in high precision it loads, and the linear is FP8
    emb = torch.randn(512, 256)
    save_file({"proj.weight": q, "proj.weight_scale_inv": s, "emb.weight": emb}, tmp_path / "model.safetensors")
    assert load_quantized_(model, tmp_path) == ["proj"]
    assert torch.equal(model.emb.weight, emb) and isinstance(model.proj, FP8BlockLinear)


class _ScaledLinear(torch.nn.Linear):
    def forward(self, x):
        return super().forward(x) * 100


def test_quantize_skips_modules_whose_swap_would_change_what_they_compute():
    """An nn.Linear subclass with its own forward, a forward hook, a pre-hook, a forward replaced on
    the instance: an FP8BlockLinear would silently drop each. They stay, with the reason; a plain
    linear beside them converts."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(*(torch.nn.Linear(256, 256) for _ in range(4)))
    model[0] = _ScaledLinear(256, 256)
    model[1].register_forward_hook(lambda mod, inp, out: out * 0)
    model[2].register_forward_pre_hook(lambda mod, inp: (inp[0] * 2,))
    plain = torch.nn.Linear(256, 256)
    model[3].forward = lambda x, lin=model[3]: torch.nn.functional.linear(x, lin.weight, lin.bias) + 1
    model.append(plain)
    x = torch.randn(3, 256)
    with torch.no_grad():
        want = model[:4](x)
    skipped = quantize_(model)
    assert set(skipped) == {"0", "1", "2", "3"}, skipped
    assert "overrides nn.Linear.forward" in skipped["0"] and "forward hooks" in skipped["1"]
    assert "forward pre hooks" in skipped["2"] and "replaced on the instance" in skipped["3"]
    assert isinstance(model[4], FP8BlockLinear)
    with torch.no_grad():
        torch.testing.assert_close(model[:4](x), want, rtol=0, atol=0)


def test_quantize_honours_transformers_keep_in_fp32_modules():
    """T5 casts the activation to ``wo.weight.dtype`` before calling ``wo``: an FP8 ``wo`` would
    turn that into a cast to float8 (a TypeError at forward). transformers lists it in
    ``_keep_in_fp32_modules``; quantize_ leaves it, and the model runs."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    cfg = T5Config(vocab_size=256, d_model=256, d_kv=64, d_ff=512, num_layers=1, num_decoder_layers=1, num_heads=4)
    model = T5ForConditionalGeneration(cfg).eval()
    ids = torch.randint(0, 256, (1, 5))
    skipped = quantize_(model)
    wo = {k: v for k, v in skipped.items() if k.endswith(".wo")}
    assert len(wo) == 2 and all("_keep_in_fp32_modules entry 'wo'" in v for v in wo.values()), skipped
    assert isinstance(model.encoder.block[0].layer[0].SelfAttention.q, FP8BlockLinear)
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids, decoder_input_ids=ids).logits).all()


@pytest.mark.parametrize("cast", ["to_bf16", "half", "float", "double"])
def test_fp8_module_keeps_its_weight_and_scale_dtypes_under_model_casts(cast):
    """model.to(dtype) and friends convert every floating-point tensor, float8 included: the FP8
    codes and the fp32 scales would be rounded or widened. FP8BlockLinear keeps them (bit for bit);
    the bias follows the model."""
    model = torch.nn.Sequential(torch.nn.Linear(256, 384))
    quantize_(model)
    w, s = model[0].weight.clone(), model[0].weight_scale_inv.clone()
    casts = {"to_bf16": lambda: model.to(torch.bfloat16), "half": model.half, "float": model.float}
    from torch.utils._python_dispatch import TorchDispatchMode

    class Copies(TorchDispatchMode):  # the elements of every dtype conversion made
        made: list[int] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func is torch.ops.aten._to_copy.default:
                self.made.append(out.numel())
            return out

    with Copies():
        casts.get(cast, model.double)()
    assert max(Copies.made) <= 384  # the bias only: no high-precision copy of the codes, made and dropped
    assert_fp8_equal(model[0].weight, w)
    assert model[0].weight_scale_inv.dtype == torch.float32 and torch.equal(model[0].weight_scale_inv, s)
    dtype = {"to_bf16": torch.bfloat16, "half": torch.float16, "float": torch.float32, "double": torch.float64}[cast]
    assert model[0].bias.dtype == dtype
    if dtype != torch.float64:  # (float64 activations are rejected by the ops)
        assert model(torch.randn(2, 256, dtype=dtype)).dtype == dtype


def test_quantize_takes_an_options_dict_and_rejects_other_configs():
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Linear(256, 256))
    with pytest.raises(TypeError, match="FP8BlockConfig or a dict"):
        fp8inductor.modules.release_bf16_weights(model, ["0"])
    skipped = quantize_(model, {"modules_to_not_convert": ["1"], "scale_fmt": "ue8m0"})
    assert set(skipped) == {"1"} and model[0].scale_fmt == "ue8m0"


def test_load_into_a_meta_model_is_a_clear_error(tmp_path):
    """load_state_dict would leave meta parameters as they are (a warning each): the model would
    report success and fail at its first forward."""
    model, _, _ = _saved(tmp_path)
    with torch.device("meta"):
        target = copy.deepcopy(model).to("meta")
    with pytest.raises(ValueError, match="is on the meta device"):
        load_quantized_(target, tmp_path)


def test_single_file_reads_the_config_json_beside_it(tmp_path):
    """save_pretrained writes ue8m0 scales as float32, declaring the format in config.json: loading
    the .safetensors file by its path reads that config too (before 2026-12-06: "float")."""
    torch.manual_seed(0)
    model, _, n = zoo.MODELS["llama"](torch.bfloat16)
    quantize_(model, fp8inductor.FP8BlockConfig(scale_fmt="ue8m0"))
    save_pretrained(model, tmp_path)
    files = sorted(tmp_path.glob("*.safetensors"))
    assert len(files) == 1 and load_file(files[0])["model.layers.0.mlp.up_proj.weight_scale_inv"].dtype == torch.float32
    target = _fresh("llama")
    assert len(load_quantized_(target, files[0])) == n
    assert {m.scale_fmt for m in target.modules() if isinstance(m, FP8BlockLinear)} == {"ue8m0"}


def test_fp8_module_and_quantize_reject_bad_bias_devices_and_lazy_weights():
    q, s = fp8inductor.quantize_weight(torch.randn(256, 256))
    for bias in (torch.zeros(3), torch.zeros(256, dtype=torch.int32)):
        with pytest.raises(ValueError, match=r"bias must be a float32/float16/bfloat16 \[256\] tensor"):
            FP8BlockLinear(q, s, bias)
    with pytest.raises(ValueError, match="FP8BlockLinear: all tensors must be on one device"):
        FP8BlockLinear(q, s, torch.zeros(256, device="meta"))
    lazy = torch.nn.Sequential(torch.nn.LazyLinear(256))
    with pytest.raises(ValueError, match="not initialized"):
        quantize_(lazy)


def test_save_and_load_through_the_torch_compile_wrapper(tmp_path):
    """``save_pretrained(torch.compile(model))`` writes what the model itself would: module paths
    without the wrapper's ``_orig_mod.`` (with it, ``lm_head`` read as not FP8 and was listed as kept:
    transformers would load its e4m3 codes unscaled). ``load_quantized_`` takes the wrapper too."""
    torch.manual_seed(0)
    model, inputs, _ = zoo.llama(torch.bfloat16)
    quantize_(model, fp8inductor.FP8BlockConfig(modules_to_not_convert=("self_attn",)))
    save_pretrained(model, tmp_path / "plain")
    save_pretrained(torch.compile(model), tmp_path / "wrapped")
    qc = {d: json.loads((tmp_path / d / "config.json").read_text())["quantization_config"] for d in ("plain", "wrapped")}
    assert qc["wrapped"] == qc["plain"]
    assert "lm_head" not in qc["plain"]["modules_to_not_convert"]  # an FP8 lm_head (not in the skip list)
    assert not any("_orig_mod" in p for p in qc["wrapped"]["modules_to_not_convert"])
    loaded = _fresh("llama")
    load_quantized_(torch.compile(loaded), tmp_path / "wrapped")
    with torch.inference_mode():
        assert torch.equal(zoo.main_output(loaded(**inputs)), zoo.main_output(model(**inputs)))


def test_layers_with_a_partial_last_block_warn_and_load_exactly_with_load_quantized_(tmp_path):
    """N or K not a multiple of 128: the DeepSeek format's partial last block. transformers' CPU
    loader (5.x) takes rows // scale_rows as the block size and misreads such a weight: a warning
    names the layers; ``load_quantized_`` reads every byte."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=192, intermediate_size=384, num_hidden_layers=1, num_attention_heads=3,
                      num_key_value_heads=3, head_dim=64, vocab_size=512)  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    quantize_(model)
    with pytest.warns(UserWarning, match=r"model\.layers\.0\.self_attn\.q_proj, .* not a multiple of 128"):
        save_pretrained(model, tmp_path)
    torch.manual_seed(1)
    loaded = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    load_quantized_(loaded, tmp_path)
    got = loaded.state_dict()
    for key, t in model.state_dict().items():
        if t.dtype == torch.float8_e4m3fn:
            assert_fp8_equal(got[key], t, key)
        else:
            assert torch.equal(got[key], t), key


def test_tied_embeddings_with_an_fp8_lm_head_are_saved_untied(tmp_path):
    """quantize_ with lm_head converted unties it from the bf16 embedding. The saved config must say
    so: with ``tie_word_embeddings: true`` transformers ties the two on loading (on an FP8 GPU it
    failed, comparing bf16 with e4m3). The live model's config is left as it was."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True)  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    quantize_(model, fp8inductor.FP8BlockConfig(modules_to_not_convert=()))
    save_pretrained(model, tmp_path / "fp8_head")
    assert json.loads((tmp_path / "fp8_head" / "config.json").read_text())["tie_word_embeddings"] is False
    assert model.config.tie_word_embeddings is True
    torch.manual_seed(1)
    loaded = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    load_quantized_(loaded, tmp_path / "fp8_head")
    assert isinstance(loaded.lm_head, FP8BlockLinear)
    assert_fp8_equal(loaded.lm_head.weight, model.lm_head.weight)
    assert torch.equal(loaded.model.embed_tokens.weight, model.model.embed_tokens.weight)
    # lm_head kept in bf16: still tied, and saved as tied
    torch.manual_seed(0)
    tied = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    quantize_(tied)
    save_pretrained(tied, tmp_path / "bf16_head")
    assert json.loads((tmp_path / "bf16_head" / "config.json").read_text())["tie_word_embeddings"] is True


def test_load_picks_files_in_transformers_order(tmp_path):
    """In a directory, ``model.safetensors`` wins over a shard index, then the index names the files,
    as transformers' ``from_pretrained`` picks them (4.57 and 5.x). Until 2026-12-08 the index won: a
    directory that had held a sharded save and then got a single-file one (transformers' save removes
    the old shards but leaves their index) was an error here and loaded in transformers, and with
    both current the two loaders read different weights. Both present is now a warning."""
    model, inputs, _ = _saved(tmp_path)  # model.safetensors (FP8)
    fp8_file = (tmp_path / "model.safetensors").read_bytes()
    model.save_pretrained(tmp_path, max_shard_size="300KB")  # shards + index beside model.safetensors
    assert (tmp_path / "model.safetensors.index.json").is_file()
    (tmp_path / "model.safetensors").write_bytes(fp8_file)  # (a non-sharded save rewrites it)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    for shard in set(index["weight_map"].values()):
        (tmp_path / shard).unlink()  # the stale index now names shards that are gone
    loaded = _fresh("llama")
    with pytest.warns(UserWarning, match="reading model.safetensors, as transformers does") as caught:
        load_quantized_(loaded, tmp_path)
    assert caught[0].filename == __file__  # points at the caller's line
    with torch.inference_mode():
        assert torch.equal(zoo.main_output(loaded(**inputs)), zoo.main_output(model(**inputs)))
    if importlib.util.find_spec("accelerate") is not None:  # transformers' FP8 loader needs it
        from transformers import AutoModelForCausalLM

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hf = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)  # the same file
        up = model.model.layers[0].mlp.up_proj
        theirs = hf.state_dict()["model.layers.0.mlp.up_proj.weight"].cpu()
        if theirs.dtype == torch.float8_e4m3fn:
            assert_fp8_equal(theirs, up.weight)
        else:  # dequantized (no GPU)
            assert torch.equal(theirs, fp8inductor.dequantize_weight(up.weight, up.weight_scale_inv))

    # shards alone: the index says which files; one it names that is missing is an error
    model.save_pretrained(tmp_path, max_shard_size="300KB")
    (tmp_path / "model.safetensors").unlink()
    loaded = _fresh("llama")
    load_quantized_(loaded, tmp_path)
    with torch.inference_mode():
        assert torch.equal(zoo.main_output(loaded(**inputs)), zoo.main_output(model(**inputs)))
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    index["weight_map"]["lm_head.weight"] = "model-missing.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(fp8inductor.checkpoint.CheckpointError, match="model-missing.safetensors"):
        load_quantized_(_fresh("llama"), tmp_path)
