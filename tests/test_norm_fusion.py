"""The RMSNorm + quantization fusion of the fp8block pass (``fp8inductor.norm_fusion``), on the CPU.

On the CPU the fused op and the linears on its quantization are the reference implementations, so a
fused graph must give exactly what ``rms_norm_quant_ref`` followed by ``block_gemm_ref`` gives: the
comparisons below are bit for bit. Where the fusion must not apply, the graph keeps the norm.
(On the H100: tests/test_gpu_lowering.py.)
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters
from torch._inductor.utils import run_and_get_code
from transformers.models.llama.modeling_llama import LlamaRMSNorm

import fp8inductor
from fp8inductor.reference import block_gemm_ref, quantize_weight_ref, rms_norm_quant_ref
from fp8inductor.testing import rel_err

pytestmark = pytest.mark.usefixtures("fresh_dynamo")
NORM_CALL = "fp8inductor.rms_norm_quant.default("


class NormLinear(nn.Module):
    """h = x (+ r); y = proj(norm(h)); returns (y, h) when there is a residual (h is read again)."""

    def __init__(self, k=384, n=256, dtype=torch.bfloat16, residual=True, bias=False):
        super().__init__()
        self.norm = LlamaRMSNorm(k, eps=1e-5).to(dtype)
        self.proj = nn.Linear(k, n, bias=bias).to(dtype)
        self.residual = residual
        with torch.no_grad():
            self.norm.weight.copy_(torch.rand(k) + 0.5)

    def forward(self, x, r):
        h = x + r if self.residual else x
        y = self.proj(self.norm(h))
        return (y, h) if self.residual else y

    def expected(self, x, r):
        """The fused graph's result from the references: rms_norm_quant, then the block GEMM."""
        wq, ws = quantize_weight_ref(self.proj.weight.detach())
        h, xq, xs = rms_norm_quant_ref(x, r if self.residual else None, self.norm.weight.detach(), 1e-5)
        k = x.shape[-1]
        b = None if self.proj.bias is None else self.proj.bias.detach()
        y = block_gemm_ref(xq.reshape(-1, k), xs.reshape(-1, xs.shape[-1]), wq, ws, b, x.dtype)
        y = y.reshape(*x.shape[:-1], -1)
        return (y, h) if self.residual else y


def _run(model, *args, **options):
    compiled = torch.compile(model, backend="fp8block", options=options or None)
    with torch.inference_mode():
        out, code = run_and_get_code(compiled, *args)
    return out, "\n".join(code)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("residual", [True, False], ids=["residual", "plain"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_fused_graph_is_the_reference_op_sequence(dtype, residual, bias):
    torch.manual_seed(0)
    model = NormLinear(dtype=dtype, residual=residual, bias=bias)
    x, r = torch.randn(2, 7, 384, dtype=dtype) * 3, torch.randn(2, 7, 384, dtype=dtype)
    out, code = _run(model, x, r)
    assert counters["fp8inductor"]["norms_fused"] == 1
    assert code.count(NORM_CALL) == 1, code
    with torch.inference_mode():
        want = model.expected(x, r)
    for a, b in zip(out if residual else [out], want if residual else [want]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _tiny_llama(layers: int, vocab: int, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=256, intermediate_size=512, num_hidden_layers=layers, num_attention_heads=2,
        num_key_value_heads=1, vocab_size=vocab,
    )  # fmt: skip
    model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    with torch.no_grad():  # a fresh LlamaRMSNorm weight is all ones: a fused norm that dropped it would pass
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(torch.rand_like(p) + 0.5)
    return model


def _eager_logits(model, ids) -> torch.Tensor:
    with torch.inference_mode():
        return model(ids).logits.float()


def _assert_as_accurate_as_unfused(model, ids, want, fused_logits: torch.Tensor, **options) -> None:
    """The fused graph's logits are within 1.25x (+1e-3) of the unfused graph's error against the
    eager bf16 logits ``want``: the fused norm keeps eager's bf16 roundings, so only FP8 noise should
    differ."""
    torch._dynamo.reset()
    unfused, _ = _run(model, ids, fuse_norms=False, **options)
    err = ((fused_logits.float() - want).norm() / want.norm()).item()
    err_unfused = ((unfused.logits.float() - want).norm() / want.norm()).item()
    assert err < 1.25 * err_unfused + 1e-3, (err, err_unfused)


def test_llama_layers_fuse_every_norm_and_stay_accurate():
    """Both norms of every layer (the first reads the embedding, the others a residual sum); the
    final norm feeds the unconverted lm_head and stays. Logits as accurate as without the fusion."""
    model = _tiny_llama(3, 500, seed=0)
    ids = torch.randint(0, 500, (2, 24))
    want = _eager_logits(model, ids)
    out, code = _run(model, ids)
    assert counters["fp8inductor"]["norms_fused"] == 6
    assert code.count(NORM_CALL) == 6
    # all but the first (which reads the embedding) take the residual add in
    calls = [line for line in code.splitlines() if NORM_CALL in line]
    assert sum(", None, " in line for line in calls) == 1, calls
    _assert_as_accurate_as_unfused(model, ids, want, out.logits)


def test_final_norm_fuses_into_an_fp8_lm_head_through_the_alias():
    """With ``lm_head`` converted too, the final norm reaches it through the ``aten.alias`` that
    transformers' ``hidden_states[:, slice(-0, None), :]`` traces to, and fuses: 2 norms per layer + 1.
    The alias goes with it (no norm left to Inductor), and the logits stay as accurate as unfused."""
    model = _tiny_llama(2, 384, seed=1)
    ids = torch.randint(0, 384, (2, 5))
    want = _eager_logits(model, ids)
    out, code = _run(model, ids, modules_to_not_convert=[])
    assert counters["fp8inductor"]["norms_fused"] == 5
    assert code.count(NORM_CALL) == 5 and "aten.alias" not in code
    # per layer q/k/v and gate/up, each one GEMM (siblings fused at this M), and lm_head
    assert code.count("fp8inductor.quantized_block_linear.default(") == 2 * 2 + 1
    _assert_as_accurate_as_unfused(model, ids, want, out.logits, modules_to_not_convert=[])


class QKV(nn.Module):
    """A norm read by three linears (q, k, v), as a Llama layer's input_layernorm."""

    def __init__(self, k=256):
        super().__init__()
        self.norm = LlamaRMSNorm(k, eps=1e-5).to(torch.bfloat16)
        self.q = nn.Linear(k, 256, bias=False).to(torch.bfloat16)
        self.k = nn.Linear(k, 128, bias=False).to(torch.bfloat16)
        self.v = nn.Linear(k, 128, bias=False).to(torch.bfloat16)
        with torch.no_grad():
            self.norm.weight.copy_(torch.rand(k) + 0.5)

    def forward(self, x, r):
        h = x + r
        n = self.norm(h)  # the outputs in fp32 (exact): a linear's own output may not leave the graph if fused
        return self.q(n).float(), self.k(n).float(), self.v(n).float(), h


@pytest.mark.parametrize("fuse_siblings", [True, False], ids=["siblings", "separate"])
def test_split_k_readers_get_the_norm_kernels_tickets(monkeypatch, fuse_siblings):
    """Where the readers run split-K at their static M (``block_gemm.splitk_tickets``: the GPU
    decode case; faked here, on the CPU, by patching the plan), the norm is still fused: the norm
    op clears one tickets buffer of the largest count, and every split-K linear takes it (they
    run one after another, each leaves it zero). Results stay the reference's, bit for bit."""
    from fp8inductor import norm_fusion

    plan = {256: 12, 128: 5, 384: 9, 512: 0}  # by N: the fused q/k/v is N = 512, not split-K
    seen = []

    def fake_tickets(linear):
        n = int(norm_fusion._val(norm_fusion._linear_args(linear)[1]).shape[0])
        seen.append(n)
        return plan[n]

    monkeypatch.setattr(norm_fusion, "_splitk_tickets", fake_tickets)
    torch.manual_seed(0)
    model = QKV()
    x, r = torch.randn(1, 1, 256, dtype=torch.bfloat16), torch.randn(1, 1, 256, dtype=torch.bfloat16)
    out, code = _run(model, x, r, fuse_siblings=fuse_siblings)
    assert counters["fp8inductor"]["norms_fused"] == 1
    calls = [line for line in code.splitlines() if NORM_CALL in line]
    linears = [line for line in code.splitlines() if "fp8inductor.quantized_block_linear.default(" in line]
    if fuse_siblings:
        assert seen == [512] and calls[0].rstrip().endswith("'float', 0)"), calls
        assert len(linears) == 1 and linears[0].rstrip().endswith("None)"), linears
    else:
        assert sorted(seen) == [128, 128, 256] and calls[0].rstrip().endswith("'float', 12)"), calls
        assert len(linears) == 3 and not any(line.rstrip().endswith("None)") for line in linears), linears
    with torch.inference_mode():
        wq = [quantize_weight_ref(lin.weight.detach()) for lin in (model.q, model.k, model.v)]
        h, xq, xs = rms_norm_quant_ref(x, r, model.norm.weight.detach(), 1e-5)
        for y, (q, s) in zip(out[:3], wq, strict=True):
            want = block_gemm_ref(xq.reshape(1, 256), xs.reshape(1, 2), q, s, None, torch.bfloat16)
            torch.testing.assert_close(y.reshape(1, -1), want.float(), rtol=0, atol=0)
        torch.testing.assert_close(out[3], h, rtol=0, atol=0)


class NotFusable(nn.Module):
    """Norms whose output something other than FP8 linears reads, or of another form."""

    def __init__(self, k=256):
        super().__init__()
        self.norm_a = LlamaRMSNorm(k).to(torch.bfloat16)
        self.norm_b = LlamaRMSNorm(k).to(torch.bfloat16)
        self.gemma_w = nn.Parameter(torch.zeros(k, dtype=torch.bfloat16))
        self.fc_a = nn.Linear(k, k, bias=False).to(torch.bfloat16)
        self.fc_b = nn.Linear(k, k, bias=False).to(torch.bfloat16)
        self.fc_c = nn.Linear(k, k, bias=False).to(torch.bfloat16)

    def forward(self, x):
        a = self.norm_a(x)
        y = self.fc_a(a) + a  # the norm's output is also added: not only FP8 linears read it
        hf = y.float()
        g = (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + 1e-6)) * (1.0 + self.gemma_w.float())
        y = self.fc_b(g.to(torch.bfloat16))  # Gemma's form: (1 + w), weighed in fp32
        n = self.norm_b(y)
        return self.fc_c(n), n  # the norm's output leaves the graph


def test_norms_read_by_others_or_of_other_forms_stay():
    torch.manual_seed(0)
    model = NotFusable()
    x = torch.randn(3, 5, 256, dtype=torch.bfloat16)
    out, code = _run(model, x)
    assert counters["fp8inductor"]["norms_fused"] == 0 and NORM_CALL not in code
    assert counters["fp8inductor"]["linears_converted"] == 3


class NormOfUnusualInputs(nn.Module):
    """A whole-tensor RMS (``mean(dim=None)``) with a per-feature weight, and a norm of ``x + int``."""

    def __init__(self, k=256):
        super().__init__()
        self.w = nn.Parameter(torch.rand(k, dtype=torch.bfloat16) + 0.5)
        self.fc_a = nn.Linear(k, k, bias=False).to(torch.bfloat16)
        self.fc_b = nn.Linear(k, k, bias=False).to(torch.bfloat16)

    def forward(self, x, offset: int):
        hf = x.float()
        a = self.fc_a(self.w * (hf * torch.rsqrt(hf.pow(2).mean(dim=None, keepdim=True) + 1e-6)).to(x.dtype))
        h = x + offset  # aten.add.Tensor(x, SymInt) once offset is dynamic
        hf = h.float()
        return a, self.fc_b(self.w * (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(h.dtype))


def test_norms_of_unusual_inputs_compile():
    """``mean(dim=None)`` matched the norm pattern and crashed the pass ('NoneType' object is not
    iterable): it is left to Inductor. A norm of ``x + offset`` whose int offset became symbolic
    (Dynamo's automatic dynamic on the second value) crashed the residual check ('SymInt' object has
    no attribute 'dtype'): it fuses with the add left outside the kernel. Both match the unfused graph."""
    torch.manual_seed(0)
    model = NormOfUnusualInputs().eval()
    x = torch.randn(4, 256, dtype=torch.bfloat16)
    fused = torch.compile(model, backend="fp8block")
    unfused = torch.compile(model, backend="fp8block", options={"fuse_norms": False})
    with torch.inference_mode():
        for offset in (1, 2, 3):  # the second call recompiles with a symbolic offset
            got, want = fused(x, offset), unfused(x, offset)
            torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
            # fused: the reference's bf16 roundings of the normalized value, unfused: Inductor's fp32; one
            # bf16 step moves a code by one e4m3 step in a few elements (as test_dynamic_true_keeps_the_norm;
            # measured 0.023 with torch 2.11, less with 2.13)
            assert rel_err(got[1], want[1]) < 0.05
    assert counters["fp8inductor"]["norms_fused"] >= 1


def test_norm_wider_than_the_kernel_row_stays():
    """K above ``NORM_QUANT_MAX_K`` (the kernel holds a row in registers and refuses wider ones):
    the pass leaves the norm to Inductor instead of compiling a graph whose kernel would raise."""
    from fp8inductor.kernels.config import NORM_QUANT_MAX_K

    torch.manual_seed(0)
    k = NORM_QUANT_MAX_K + 128
    model = NormLinear(k=k, n=128, residual=False)
    x = torch.randn(2, k, dtype=torch.bfloat16)
    out, code = _run(model, x, None)
    assert counters["fp8inductor"]["norms_fused"] == 0 and NORM_CALL not in code
    assert counters["fp8inductor"]["linears_converted"] == 1
    with torch.inference_mode():
        want = model.expected(x, None)
    assert ((out.float() - want.float()).norm() / want.float().norm()).item() < 0.05


def test_option_off_and_unconverted_linears():
    torch.manual_seed(0)
    model = NormLinear()
    x, r = torch.randn(4, 384, dtype=torch.bfloat16), torch.randn(4, 384, dtype=torch.bfloat16)
    _, code = _run(model, x, r, fuse_norms=False)
    assert NORM_CALL not in code and counters["fp8inductor"]["norms_fused"] == 0
    torch._dynamo.reset()
    _, code = _run(model, x, r, modules_to_not_convert=["proj"])
    assert NORM_CALL not in code and counters["fp8inductor"]["norms_fused"] == 0
    with pytest.raises(TypeError, match="fuse_norms must be a bool"):
        fp8inductor.FP8BlockConfig(fuse_norms=1)


def test_symbolic_m_is_fused():
    """``mark_dynamic`` on the token dim: one graph, fused, exact for every M."""
    torch.manual_seed(0)
    model = NormLinear()
    compiled = torch.compile(model, backend="fp8block")
    with torch.inference_mode():
        for m in (3, 17, 64):
            x, r = torch.randn(m, 384, dtype=torch.bfloat16), torch.randn(m, 384, dtype=torch.bfloat16)
            torch._dynamo.mark_dynamic(x, 0)
            torch._dynamo.mark_dynamic(r, 0)
            out, want = compiled(x, r), model.expected(x, r)
            torch.testing.assert_close(out[0], want[0], rtol=0, atol=0)
            torch.testing.assert_close(out[1], want[1], rtol=0, atol=0)
    assert counters["fp8inductor"]["norms_fused"] == 1 and counters["stats"]["unique_graphs"] == 1


def test_dynamic_true_keeps_the_norm():
    """``dynamic=True`` makes the norm's eps a graph input (Dynamo does not specialize floats
    there): the fused op takes eps as a constant, so the norm stays, unfused and correct."""
    torch.manual_seed(0)
    model = NormLinear()
    x, r = torch.randn(5, 384, dtype=torch.bfloat16), torch.randn(5, 384, dtype=torch.bfloat16)
    with torch.inference_mode():
        out = torch.compile(model, backend="fp8block", dynamic=True)(x, r)
        want = model.expected(x, r)
    assert counters["fp8inductor"]["norms_fused"] == 0 and counters["fp8inductor"]["linears_converted"] == 1
    torch.testing.assert_close(out[1], want[1], rtol=0, atol=0)
    # Inductor's unfused norm keeps fp32 where the reference rounds to bf16: one bf16 step of the
    # normalized value moves a code by at most one e4m3 step in a few elements
    assert ((out[0].float() - want[0].float()).norm() / want[0].float().norm()).item() < 0.05


@pytest.mark.parametrize(
    "sizes,strides,row_stride",
    [
        ([8, 1], [1, 256], 1),  # rms_norm_quant's scales of a [8, 1, K] decode activation: dim -2 says 256
        ([1, 8], [8, 1], 1),  # the same scales of a [1, 8, K] prefill activation
        ([2, 4], [4, 1], 1),  # column-major over flattened rows, both lead dims > 1
        ([8, 1], [4096, 4096], 4096),  # a row-major activation
        ([3, 1, 4], [4, 99, 1], 1),  # size-1 dims may have any stride
        ([3, 4], [8, 2], 2),
        ([1, 1], [5, 7], 1),  # one row
        ([2, 4], [1, 2], None),  # transposed lead dims: no single row stride
        ([2, 4], [3, 1], None),
        ([2, None], [4, 1], None),  # symbolic
        ([0, 4], [4, 1], None),  # no rows (M = 0): the callers copy, which costs nothing
        ([4, 0], [0, 1], None),
    ],
)
def test_template_row_stride_of_flattened_lead_dims(sizes, strides, row_stride):
    """The lowering hands the GEMM template its activation as a view whose dim -2 steps by the
    flattened row's stride (``lowering._row_stride``); a decode [B, 1, K] activation's column-major
    scales once went in with dim -2's stride B*G and gave NaN logits (H100, 2026-12-05). The GPU side
    is ``test_gpu_lowering.py::test_norm_fusion_lowers_to_one_kernel_and_matches_the_ops[decode_b8_*]``."""
    from fp8inductor.lowering import _row_stride

    assert _row_stride(sizes, strides) == row_stride
