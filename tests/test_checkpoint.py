"""FineGrainedFP8 checkpoints: save, load without requantizing, transformers interop, bad files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import fp8inductor
import fp8inductor.testing
import model_zoo as zoo
from fp8inductor.checkpoint import load_quantized_, save_pretrained
from fp8inductor.modules import FP8BlockLinear, quantize_
from fp8inductor.testing import assert_fp8_equal


def _saved(tmp_path, name="llama"):
    torch.manual_seed(0)
    model, inputs, n = zoo.MODELS[name](torch.bfloat16)
    quantize_(model)
    save_pretrained(model, tmp_path)
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
         rf"{KEY}.weight: weight_scale_inv has shape \(1, 2\), expected \(4, 2\)"),
        (lambda t: t.__setitem__(f"{KEY}.weight_scale_inv", t[f"{KEY}.weight_scale_inv"].double()),
         f"{KEY}.weight: weight_scale_inv must be float32"),
        (lambda t: t.__setitem__(f"{KEY}.weight", t[f"{KEY}.weight"][:, :128].contiguous()),
         rf"{KEY}.weight: weight_scale_inv has shape \(4, 2\), expected \(4, 1\)"),
        (lambda t: t.__setitem__("model.layers.0.mlp.extra.weight_scale_inv", torch.ones(1, 1)),
         "has no model.layers.0.mlp.extra.weight"),
        (lambda t: t.__setitem__("model.bogus", torch.ones(3)), "unexpected tensor model.bogus"),
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
    assert torch.allclose(y.float(), expect.float(), rtol=0.08, atol=0.08)
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
