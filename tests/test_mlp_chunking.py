"""The fp8block pass's MLP row chunking (``FP8BlockConfig.mlp_chunk_rows``, ``fp8inductor.mlp_chunking``),
on the CPU.

On the CPU the GEMMs are the reference implementation and every chunk's quantization is Inductor's
IR (``quant_ir``), fused into the chunk's SiLU * up. Two chunk sizes give the same bits (each row's
arithmetic does not depend on the chunk it is in). The unchunked graph quantizes down_proj's input
with the op's kernel on the CPU, on SiLU * up rounded to bf16, where the chunked one quantizes the
fp32 product (as the unchunked graph does on the GPU): their outputs differ at the FP8 level only.
(On the H100: tests/test_gpu_lowering.py.)
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters
from torch._inductor.utils import run_and_get_code
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

from fp8inductor.config import FP8BlockConfig
from fp8inductor.testing import rel_err

pytestmark = pytest.mark.usefixtures("fresh_dynamo")
HIDDEN, INTER = 256, 384


class MlpHalf(nn.Module):
    """r + mlp(norm(r)): a Llama decoder layer's second half (the MLP's gate/up run as one GEMM)."""

    def __init__(self, act: str = "silu", seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        config = LlamaConfig(hidden_size=HIDDEN, intermediate_size=INTER, hidden_act=act, rms_norm_eps=1e-5)
        self.norm = LlamaRMSNorm(HIDDEN, eps=1e-5)
        self.mlp = LlamaMLP(config)
        with torch.no_grad():
            self.norm.weight.copy_(torch.rand(HIDDEN) + 0.5)
        self.to(torch.bfloat16).eval()

    def forward(self, r):
        return r + self.mlp(self.norm(r))


def _run(model, *args, **options):
    counters.clear()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="fp8block", options=options or None)
    with torch.inference_mode():
        out, code = run_and_get_code(compiled, *args)
    return out, "\n".join(code), counters["fp8inductor"]["mlps_chunked"]


def _input(*lead, seed=1):
    return torch.randn(*lead, HIDDEN, generator=torch.Generator().manual_seed(seed)).to(torch.bfloat16)


@pytest.mark.parametrize("lead", [(2, 50), (100,), (1, 100)], ids=["2x50", "100", "1x100"])
def test_chunk_sizes_agree_bit_for_bit_and_match_unchunked_at_fp8_level(lead):
    model, r = MlpHalf(), _input(*lead)
    y32, code, chunked = _run(model, r, mlp_chunk_rows=32)  # 100 rows: chunks of 32, 32, 32, 4
    assert chunked == 1
    assert code.count("fp8inductor.quantized_block_linear.default(") == 4 + 1  # 4 gate/up chunks, one down
    y48, _, chunked = _run(model, r, mlp_chunk_rows=48)
    assert chunked == 1 and torch.equal(y32, y48)
    y, code, chunked = _run(model, r)
    assert chunked == 0 and code.count("fp8inductor.quantized_block_linear.default(") == 1
    with torch.inference_mode():
        eager = model(r)
    # FP8 level: both against eager bf16, and the two within the quantization's own noise
    assert rel_err(y32 - r, eager - r) < 0.08 and rel_err(y - r, eager - r) < 0.08
    assert rel_err(y32 - r, y - r) < 0.05


def test_codes_are_written_into_the_concatenation():
    """Each chunk's quantization writes its codes into the [M, I/128, 128] buffer the down GEMM reads
    (aliases of it, one per chunk): no copy of the codes."""
    _, code, chunked = _run(MlpHalf(), _input(100), mlp_chunk_rows=32)
    assert chunked == 1
    groups = INTER // 128
    fp8_buffers = re.findall(r"(buf\d+) = empty_strided_cpu\((\(.*?\)), .*float8_e4m3fn\)", code)
    assert [shape for _, shape in fp8_buffers] == [f"(100, {groups}, 128)"], code  # no chunk buffer of its own
    cat_buffers = [name for name, _ in fp8_buffers]
    aliases = re.findall(rf"reinterpret_tensor\({cat_buffers[0]}, \((\d+), {groups}, 128\)", code)
    assert sorted(map(int, aliases)) == [4, 32, 32, 32], code


def test_other_activations_chunk_too():
    """The region is any row-local chain: GELU(tanh) * up (Gemma's MLP) chunks as SiLU * up does."""
    model, r = MlpHalf(act="gelu_pytorch_tanh"), _input(100)
    y, _, chunked = _run(model, r, mlp_chunk_rows=32)
    y2, _, _ = _run(model, r, mlp_chunk_rows=64)
    assert chunked == 1 and torch.equal(y, y2)


class ReadsProduct(MlpHalf):
    """SiLU * up is also returned: its chunks would have to be concatenated, so no chunking."""

    def forward(self, r):
        h = self.mlp.act_fn(self.mlp.gate_proj(self.norm(r))) * self.mlp.up_proj(self.norm(r))
        return r + self.mlp.down_proj(h), h


class ScaledProduct(MlpHalf):
    """A parameter enters the region (not row-local from y alone): no chunking."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.rand(INTER, dtype=torch.bfloat16) + 0.5)

    def forward(self, r):
        n = self.norm(r)
        h = self.mlp.act_fn(self.mlp.gate_proj(n)) * self.mlp.up_proj(n) * self.gain
        return r + self.mlp.down_proj(h)


@pytest.mark.parametrize("model_cls", [ReadsProduct, ScaledProduct], ids=["product-returned", "parameter-in-region"])
def test_regions_that_are_not_row_local_from_the_gemm_stay(model_cls):
    model, r = model_cls(), _input(100)
    out, _, chunked = _run(model, r, mlp_chunk_rows=32)
    assert chunked == 0
    with torch.inference_mode():
        eager = model(r)
    first = out[0] if isinstance(out, tuple) else out
    want = eager[0] if isinstance(eager, tuple) else eager
    assert rel_err(first - r, want - r) < 0.08


def test_not_chunked_at_or_below_the_chunk_size_or_symbolic_m():
    model = MlpHalf()
    _, _, chunked = _run(model, _input(64), mlp_chunk_rows=64)
    assert chunked == 0
    counters.clear()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="fp8block", options={"mlp_chunk_rows": 32}, dynamic=True)
    with torch.inference_mode():
        compiled(_input(100))
    assert counters["fp8inductor"]["mlps_chunked"] == 0


@pytest.mark.parametrize("bad", [-1, True, 1.5, "512"])
def test_option_validated(bad):
    with pytest.raises(ValueError, match="mlp_chunk_rows"):
        FP8BlockConfig(mlp_chunk_rows=bad)
