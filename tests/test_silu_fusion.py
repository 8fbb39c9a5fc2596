"""The SiLU(gate) * up + quantization fusion of the fp8block pass (``fp8inductor.silu_fusion``), on the CPU.

On the CPU the fused op and the linears on its quantization are the reference implementations, so a
fused graph must give exactly what the references give in the same order: the activation's
quantization, the gate/up GEMMs, ``silu_mul_quant_ref``, the down GEMM. The comparisons are bit for
bit. Where the fusion must not apply, the graph keeps Inductor's own SiLU * up.
(On the H100: tests/test_gpu_lowering.py.)
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters
from torch._inductor.utils import run_and_get_code
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaMLP

import fp8inductor  # noqa: F401  (registers the backend)
from fp8inductor.reference import block_gemm_ref, quantize_activation_ref, quantize_weight_ref, silu_mul_quant_ref

pytestmark = pytest.mark.usefixtures("fresh_dynamo")
FUSED_CALL = "fp8inductor.silu_mul_quant.default("


def _mlp(hidden=256, inter=384, dtype=torch.bfloat16, seed=0) -> LlamaMLP:
    torch.manual_seed(seed)
    return LlamaMLP(LlamaConfig(hidden_size=hidden, intermediate_size=inter, hidden_act="silu")).to(dtype).eval()


def _linear_ref(x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    wq, ws = quantize_weight_ref(linear.weight.detach())
    xq, xs = quantize_activation_ref(x, 128, "float")
    k = x.shape[-1]
    y = block_gemm_ref(xq.reshape(-1, k), xs.reshape(-1, xs.shape[-1]), wq, ws, None, x.dtype)
    return y.reshape(*x.shape[:-1], -1)


def _expected(mlp: LlamaMLP, x: torch.Tensor) -> torch.Tensor:
    gate, up = _linear_ref(x, mlp.gate_proj), _linear_ref(x, mlp.up_proj)
    q, s = silu_mul_quant_ref(gate, up)
    wq, ws = quantize_weight_ref(mlp.down_proj.weight.detach())
    n = gate.shape[-1]
    y = block_gemm_ref(q.reshape(-1, n), s.reshape(-1, s.shape[-1]), wq, ws, None, x.dtype)
    return y.reshape(*x.shape[:-1], -1)


def _run(model, *args, **options):
    compiled = torch.compile(model, backend="fp8block", options=options or None)
    with torch.inference_mode():
        out, code = run_and_get_code(compiled, *args)
    return out, "\n".join(code)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("shape", [(3, 5), (1, 1), (2, 70)], ids=str)
def test_llama_mlp_fuses_and_matches_the_references(shape, dtype):
    mlp = _mlp(dtype=dtype)
    x = torch.randn(*shape, 256).to(dtype)
    out, code = _run(mlp, x)
    assert counters["fp8inductor"]["silu_mul_fused"] == 1
    assert FUSED_CALL in code
    with torch.inference_mode():
        want = _expected(mlp, x)
    torch.testing.assert_close(out, want, rtol=0, atol=0)


def test_option_off_keeps_inductors_silu():
    mlp = _mlp()
    x = torch.randn(4, 256).bfloat16()
    out, code = _run(mlp, x, fuse_silu_mul=False)
    assert counters["fp8inductor"]["silu_mul_fused"] == 0 and FUSED_CALL not in code
    with torch.inference_mode():
        want = _expected(mlp, x)
    # Inductor's own chain computes SiLU * up in fp32 too (the IR quantization fused into it): the
    # same value to within an ulp of exp, so codes move by at most one step.
    torch.testing.assert_close(out, want, rtol=0.02, atol=0.02)


class SiluProductReadTwice(nn.Module):
    """The product feeds the FP8 linear and is also returned: not fusable."""

    def __init__(self):
        super().__init__()
        self.gate, self.up, self.down = nn.Linear(256, 384), nn.Linear(256, 384), nn.Linear(384, 256)

    def forward(self, x):
        y = nn.functional.silu(self.gate(x)) * self.up(x)
        return self.down(y), y


class GeluProduct(nn.Module):
    """Another activation: not SiLU, not fused."""

    def __init__(self):
        super().__init__()
        self.gate, self.up, self.down = nn.Linear(256, 384), nn.Linear(256, 384), nn.Linear(384, 256)

    def forward(self, x):
        return self.down(nn.functional.gelu(self.gate(x)) * self.up(x))


class SiluTimesActivation(nn.Module):
    """SiLU(x @ W) * x2 with a plain F.silu and the operands swapped (up * silu(gate)): fused."""

    def __init__(self):
        super().__init__()
        self.gate, self.down = nn.Linear(256, 384, bias=False), nn.Linear(384, 256, bias=True)

    def forward(self, x, other):
        return self.down(other * nn.functional.silu(self.gate(x)))


@pytest.mark.parametrize("model_cls,fused", [(SiluProductReadTwice, 0), (GeluProduct, 0)])
def test_left_alone(model_cls, fused):
    model = model_cls().bfloat16()
    _run(model, torch.randn(4, 256).bfloat16())
    assert counters["fp8inductor"]["silu_mul_fused"] == fused


def test_swapped_operands_and_a_bias():
    model = SiluTimesActivation().bfloat16()
    x, other = torch.randn(2, 3, 256).bfloat16(), torch.randn(2, 3, 384).bfloat16()
    out, code = _run(model, x, other)
    assert counters["fp8inductor"]["silu_mul_fused"] == 1 and FUSED_CALL in code
    with torch.inference_mode():
        gate = _linear_ref(x, model.gate)
        q, s = silu_mul_quant_ref(gate, other)
        wq, ws = quantize_weight_ref(model.down.weight.detach())
        y = block_gemm_ref(q.reshape(-1, 384), s.reshape(-1, 3), wq, ws, model.down.bias.detach(), x.dtype)
    torch.testing.assert_close(out, y.reshape(2, 3, 256), rtol=0, atol=0)
