"""Bad checkpoint files, by hypothesis: every corruption is a ``CheckpointError`` naming the file or tensor.

Each example writes a small valid FineGrainedFP8 checkpoint (one or two safetensors shards and a
config.json) for a tiny model, corrupts it in one way that cannot be a valid checkpoint of that
model, and loads it. The load must raise ``fp8inductor.checkpoint.CheckpointError`` (a ValueError;
``CheckpointDtypeError`` is also a TypeError), whose message names the checkpoint file (or, for a
missing tensor, the checkpoint directory) and the tensor at fault, and must leave the model as it
was. Any other exception type, a crash, or a successful load fails the test.
"""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save as safetensors_bytes
from torch import nn

import fp8inductor
from fp8inductor.checkpoint import CheckpointDtypeError, CheckpointError, load_quantized_
from fp8inductor.modules import FP8BlockLinear
from fp8inductor.testing import assert_fp8_equal

FUZZ = settings(max_examples=100, deadline=None)

# safetensors dtype names of the same byte size as the original that cannot stand in for it.
_SAME_SIZE_WRONG = {
    torch.float8_e4m3fn: ["F8_E5M2", "F8_E8M0", "U8", "I8", "BOOL"],  # FP8 weight
    torch.float32: ["I32", "U32"],  # block scale, LayerNorm in float32
    torch.bfloat16: ["I16", "U16"],  # bias, LayerNorm in bf16
}
_NOT_DTYPES = ["X9", "F8", "f32", "", "E8M0", "I4", "FP8"]


class Tiny(nn.Module):
    """Two linears (one with partial 128-blocks) and a LayerNorm: x [.., k] -> [.., k]."""

    def __init__(self, k: int, n: int, bias: bool) -> None:
        super().__init__()
        self.up = nn.Linear(k, n, bias=bias)
        self.down = nn.Linear(n, k, bias=False)
        self.norm = nn.LayerNorm(k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.down(torch.relu(self.up(x))))


# ---------------------------------------------------------------------------------------------
# A valid checkpoint and its raw bytes
# ---------------------------------------------------------------------------------------------


def _checkpoint_tensors(model: Tiny, scale_fmt: str) -> dict[str, torch.Tensor]:
    """The FineGrainedFP8 tensors of ``model``: FP8 weights, float32 scales, bf16 bias and norm."""
    tensors: dict[str, torch.Tensor] = {}
    for name in ("up", "down"):
        linear = getattr(model, name)
        q, s = fp8inductor.quantize_weight(linear.weight.detach(), scale_fmt=scale_fmt)
        tensors[f"{name}.weight"], tensors[f"{name}.weight_scale_inv"] = q, s
        if linear.bias is not None:
            tensors[f"{name}.bias"] = linear.bias.detach().to(torch.bfloat16)
    # not LayerNorm's init (ones, zeros), which a fresh model holds too: a norm left unloaded would pass
    tensors["norm.weight"] = (torch.rand_like(model.norm.weight) + 0.5).to(torch.bfloat16)
    tensors["norm.bias"] = torch.randn_like(model.norm.bias)  # float32
    return tensors


def _split(raw: bytes) -> tuple[dict, bytes]:
    """safetensors bytes -> (header dict, data bytes)."""
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _join(header: dict | bytes, data: bytes, length: int | None = None) -> bytes:
    """(header, data) -> safetensors bytes; ``length`` overrides the header length prefix."""
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(head) if length is None else length) + head + data


class Case:
    """A tiny model and its checkpoint on disk (one or two shards) ready to be corrupted."""

    def __init__(self, root: Path, k: int, n: int, bias: bool, scale_fmt: str, shards: int, seed: int) -> None:
        torch.manual_seed(seed)
        self.root, self.k, self.n = root, k, n
        self.model_args = (k, n, bias)
        self.tensors = _checkpoint_tensors(Tiny(*self.model_args), scale_fmt)
        keys = sorted(self.tensors)
        self.shards = [keys[i::shards] for i in range(shards)]
        self.config = {"quantization_config": {"quant_method": "fp8", "activation_scheme": "dynamic",
                                               "weight_block_size": [128, 128], "scale_fmt": scale_fmt}}

    def shard_path(self, index: int) -> Path:
        return self.root / f"model-{index + 1:05d}-of-{len(self.shards):05d}.safetensors"

    def file_of(self, key: str) -> Path:
        """The (first) shard holding ``key``."""
        return self.shard_path(next(i for i, keys in enumerate(self.shards) if key in keys))

    def write(self) -> None:
        for index, keys in enumerate(self.shards):
            shard = {k: self.tensors[k] for k in keys}
            self.shard_path(index).write_bytes(safetensors_bytes(shard, metadata={"format": "pt"}))
        (self.root / "config.json").write_text(json.dumps(self.config))

    def fresh_model(self) -> Tiny:
        torch.manual_seed(12345)  # other weights than the checkpoint's: everything must come from the file
        return Tiny(*self.model_args)


@st.composite
def cases(draw):
    return dict(
        k=draw(st.sampled_from([128, 200, 256])),
        n=draw(st.sampled_from([128, 136, 384])),
        bias=draw(st.booleans()),
        scale_fmt=draw(st.sampled_from(["float", "ue8m0"])),
        shards=draw(st.integers(1, 2)),
        seed=draw(st.integers(0, 2**16)),
    )


def _assert_clear_error(case: Case, names: list[str]) -> None:
    """Loading ``case`` raises a CheckpointError naming one of ``names``; the model is untouched."""
    model = case.fresh_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        load_quantized_(model, case.root)
    except CheckpointError as e:
        message = str(e)
        assert str(case.root) in message, f"the message does not name the checkpoint: {message}"
        assert any(name in message for name in names), f"the message names none of {names}: {message}"
    else:
        raise AssertionError(f"a corrupted checkpoint loaded silently (expected an error naming {names})")
    assert not any(isinstance(m, FP8BlockLinear) for m in model.modules()), "the model was changed"
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


# ---------------------------------------------------------------------------------------------
# The valid checkpoint loads, bytes as stored (so the loader cannot pass by rejecting everything)
# ---------------------------------------------------------------------------------------------


@FUZZ
@given(cases())
def test_valid_checkpoints_load_bytes_as_stored(params):
    with tempfile.TemporaryDirectory() as tmp:
        case = Case(Path(tmp), **params)
        case.write()
        model = case.fresh_model()
        assert load_quantized_(model, case.root) == ["down", "up"]
        for name in ("up", "down"):
            assert_fp8_equal(getattr(model, name).weight, case.tensors[f"{name}.weight"], name)
            assert torch.equal(getattr(model, name).weight_scale_inv, case.tensors[f"{name}.weight_scale_inv"])
            assert getattr(model, name).scale_fmt == params["scale_fmt"]
        assert torch.equal(model.norm.weight, case.tensors["norm.weight"].float())
        assert torch.equal(model.norm.bias, case.tensors["norm.bias"])
        for name in ("up", "down"):
            bias = getattr(model, name).bias
            assert (bias is None) == (f"{name}.bias" not in case.tensors)
            if bias is not None:
                assert torch.equal(bias, case.tensors[f"{name}.bias"].to(bias.dtype)), name
        assert torch.isfinite(model(torch.randn(3, case.k))).all()


# ---------------------------------------------------------------------------------------------
# Corrupted headers and files: the safetensors layer
# ---------------------------------------------------------------------------------------------


def _header_mutation(draw, header: dict, data: bytes, key: str) -> bytes:
    """One corruption of a shard holding ``key``, as the shard's new bytes."""
    entry = header[key]
    kind = draw(st.sampled_from(
        ["dtype_name", "shape", "offsets_out_of_range", "offsets_overlap", "offsets_reversed", "truncated",
         "length_prefix_too_large", "length_prefix_huge", "not_json", "header_not_object", "extra_bytes"]))
    if kind == "dtype_name":
        entry["dtype"] = draw(st.sampled_from(_NOT_DTYPES))
    elif kind == "shape":
        shape = draw(st.lists(st.integers(0, 1024), min_size=0, max_size=3).filter(lambda s: s != entry["shape"]))
        entry["shape"] = shape
    elif kind == "offsets_out_of_range":
        begin, end = entry["data_offsets"]
        entry["data_offsets"] = [begin, len(data) + draw(st.integers(1, 10**9))]
    elif kind == "offsets_overlap":
        begin, end = entry["data_offsets"]
        shift = draw(st.integers(1, max(1, end - begin)))
        entry["data_offsets"] = [begin + shift, end + shift] if begin == 0 else [begin - shift, end - shift]
    elif kind == "offsets_reversed":
        begin, end = entry["data_offsets"]
        entry["data_offsets"] = [end + 1, begin]
    raw = _join(header, data)
    if kind == "truncated":
        return raw[: draw(st.integers(0, len(raw) - 1))]
    if kind == "extra_bytes":
        return raw + bytes(draw(st.integers(1, 64)))
    if kind == "length_prefix_too_large":
        return struct.pack("<Q", len(raw) - 8 + draw(st.integers(1, 1024))) + raw[8:]
    if kind == "length_prefix_huge":
        return struct.pack("<Q", draw(st.integers(2**40, 2**64 - 1))) + raw[8:]
    if kind == "not_json":
        junk = draw(st.binary(min_size=1, max_size=200).filter(lambda b: not _is_json_object(b)))
        return _join(junk, data)
    if kind == "header_not_object":
        return _join(json.dumps(draw(st.sampled_from([[], [1, 2], "x", 3, None]))).encode(), data)
    return raw


def _is_json_object(b: bytes) -> bool:
    try:
        return isinstance(json.loads(b), dict)
    except (ValueError, UnicodeDecodeError):
        return False


@FUZZ
@given(cases(), st.data())
def test_corrupted_safetensors_files_are_clear_errors(params, data):
    with tempfile.TemporaryDirectory() as tmp:
        case = Case(Path(tmp), **params)
        case.write()
        key = data.draw(st.sampled_from(sorted(case.tensors)))
        path = case.file_of(key)
        header, payload = _split(path.read_bytes())
        path.write_bytes(_header_mutation(data.draw, header, payload, key))
        _assert_clear_error(case, [str(path), key])


@FUZZ
@given(cases(), st.data())
def test_same_size_wrong_dtype_is_a_dtype_error(params, data):
    """A header dtype of the right byte size but the wrong kind: the bytes load, the dtype is refused."""
    with tempfile.TemporaryDirectory() as tmp:
        case = Case(Path(tmp), **params)
        case.write()
        key = data.draw(st.sampled_from(sorted(case.tensors)))
        path = case.file_of(key)
        header, payload = _split(path.read_bytes())
        header[key]["dtype"] = data.draw(st.sampled_from(_SAME_SIZE_WRONG[case.tensors[key].dtype]))
        path.write_bytes(_join(header, payload))
        _assert_clear_error(case, [key])
        try:
            load_quantized_(case.fresh_model(), case.root)
        except CheckpointError as e:
            assert isinstance(e, CheckpointDtypeError) and isinstance(e, TypeError), str(e)


# ---------------------------------------------------------------------------------------------
# Well-formed files with the wrong tensors: the FineGrainedFP8 layer
# ---------------------------------------------------------------------------------------------


def _tensor_mutation(draw, case: Case) -> list[str]:
    """Change ``case.tensors`` / shards into an invalid checkpoint; returns the names an error may give."""
    t = case.tensors
    linear = draw(st.sampled_from(["up", "down"]))
    w, s = f"{linear}.weight", f"{linear}.weight_scale_inv"
    kind = draw(st.sampled_from(
        ["drop_scale", "drop_weight", "drop_norm", "scale_grid", "scale_dtype", "scale_values", "weight_dtype",
         "weight_shape", "extra_scale_for_norm", "extra_scale_for_nothing", "extra_tensor", "duplicate_in_shards",
         "bias_shape", "bias_unexpected"]))
    if kind == "drop_scale":
        del t[s]
        return [w]
    if kind == "drop_weight":
        del t[w]
        return [s, w]
    if kind == "drop_norm":
        del t["norm.weight"]
        return ["norm.weight"]
    if kind == "scale_grid":
        rows, cols = t[s].shape
        shape = draw(st.tuples(st.integers(1, 5), st.integers(1, 5)).filter(lambda sh: sh != (rows, cols)))
        t[s] = torch.rand(shape) + 0.01
        return [w, s]
    if kind == "scale_dtype":
        t[s] = t[s].to(draw(st.sampled_from([torch.float64, torch.bfloat16, torch.float16, torch.int32])))
        return [w, s]
    if kind == "scale_values":
        rows, cols = t[s].shape
        bad = draw(st.sampled_from([float("nan"), float("inf"), -float("inf"), -1.0, -1e-3]))
        t[s] = t[s].clone()
        t[s][draw(st.integers(0, rows - 1)), draw(st.integers(0, cols - 1))] = bad
        return [s]
    if kind == "weight_dtype":
        t[w] = t[w].float().to(draw(st.sampled_from([torch.bfloat16, torch.float32, torch.float8_e5m2])))
        return [w]
    if kind == "weight_shape":
        n, k = t[w].shape
        rows = draw(st.sampled_from([n - 1, n + 1, n + 128]))
        t[w] = torch.zeros(rows, k, dtype=torch.float8_e4m3fn)
        return [w]
    if kind == "extra_scale_for_norm":
        t["norm.weight_scale_inv"] = torch.ones(1, 1)
        return ["norm.weight"]
    if kind == "extra_scale_for_nothing":
        t["mlp.gate.weight_scale_inv"] = torch.ones(1, 1)
        return ["mlp.gate.weight"]
    if kind == "extra_tensor":
        t["bogus"] = torch.ones(3)
        return ["bogus"]
    if kind == "duplicate_in_shards":
        if len(case.shards) == 1:
            case.shards.append([])
        other = next(keys for keys in case.shards if w not in keys)
        other.append(w)
        return [w]
    if kind == "bias_shape":
        t["up.bias"] = torch.zeros(case.n + draw(st.integers(1, 3)), dtype=torch.bfloat16)
        return ["up.bias"]
    # bias_unexpected: a bias for a linear built without one
    t["down.bias"] = torch.zeros(case.k, dtype=torch.bfloat16)
    return ["down.bias"]


@FUZZ
@given(cases(), st.data())
def test_wrong_tensors_are_clear_errors(params, data):
    with tempfile.TemporaryDirectory() as tmp:
        case = Case(Path(tmp), **params)
        names = _tensor_mutation(data.draw, case)
        keys = set(case.tensors)
        case.shards = [[k for k in shard if k in keys] for shard in case.shards]
        case.shards[-1] += sorted(keys - {k for shard in case.shards for k in shard})
        case.shards = [shard for shard in case.shards if shard]
        case.write()
        _assert_clear_error(case, names)


# ---------------------------------------------------------------------------------------------
# config.json
# ---------------------------------------------------------------------------------------------


@FUZZ
@given(cases(), st.data())
def test_bad_quantization_config_is_a_clear_error(params, data):
    with tempfile.TemporaryDirectory() as tmp:
        case = Case(Path(tmp), **params)
        case.write()
        qc = case.config["quantization_config"]
        kind = data.draw(st.sampled_from(["not_json", "qc_not_object", "quant_method", "block", "static", "fmt"]))
        if kind == "not_json":
            (case.root / "config.json").write_bytes(data.draw(st.binary(max_size=64).filter(lambda b: not _is_json(b))))
        else:
            if kind == "qc_not_object":
                case.config["quantization_config"] = data.draw(st.sampled_from([[], "fp8", 1]))
            elif kind == "quant_method":
                qc["quant_method"] = data.draw(st.sampled_from(["bitsandbytes", "compressed-tensors", "fp4"]))
            elif kind == "block":
                qc["weight_block_size"] = data.draw(st.sampled_from([[64, 64], [128], None, 128, [128, 64]]))
            elif kind == "static":
                qc["activation_scheme"] = "static"
            else:
                qc["scale_fmt"] = data.draw(st.sampled_from(["e5m2", "UE8M0", "fp32"]))
            (case.root / "config.json").write_text(json.dumps(case.config))
        _assert_clear_error(case, [str(case.root / "config.json")])


def _is_json(b: bytes) -> bool:
    try:
        json.loads(b)
        return True
    except (ValueError, UnicodeDecodeError):
        return False
