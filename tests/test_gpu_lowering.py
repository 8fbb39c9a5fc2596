"""The Triton-template lowering on the GPU: choice, epilogue fusion (from the generated code), numerics.

The template runs the same main loop as the op's own kernels (``_mainloop_tma`` / ``_mainloop_ptr``)
with the same config (tuned table or heuristic), so a plain linear must match the eager op *bit for
bit*; fused epilogue ops (SiLU, residual add) are computed in fp32 inside the store instead of on
the bf16-rounded linear output, so those outputs match eager within one bf16 rounding of the
linear's output propagated through the op (rtol 2**-7).
"""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._inductor.utils import run_and_get_code

import fp8inductor
from fp8inductor.modules import quantize_

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("fresh_dynamo")]


class _Block(nn.Module):
    """y = silu(lin1(x)) * lin2(x) + r ; z = lin3(y) + r: bias, activation, product and residual epilogues."""

    def __init__(self, k: int, n: int, bias: bool) -> None:
        super().__init__()
        self.lin1 = nn.Linear(k, n, bias=bias)
        self.lin2 = nn.Linear(k, n, bias=False)
        self.lin3 = nn.Linear(n, k, bias=bias)

    def forward(self, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        y = F.silu(self.lin1(x)) * self.lin2(x)
        return self.lin3(y) + r


def _template_kernels(code: str) -> int:
    return len(re.findall(r"@triton_heuristics\.template\(", code))


def _pointwise_kernels(code: str) -> int:
    return len(re.findall(r"@triton_heuristics\.pointwise\(", code))


def _compile_and_code(model, *args, **options):
    compiled = torch.compile(model, backend="fp8block", options=options or None)
    with torch.inference_mode():
        out, codes = run_and_get_code(compiled, *args)
    return out, "\n".join(codes)


@pytest.mark.parametrize("m", [8, 96, 1000])
@pytest.mark.parametrize("bias", [False, True])
def test_plain_linear_template_is_bit_identical_to_the_op(m, bias):
    torch.manual_seed(m)
    lin = nn.Linear(640, 384, bias=bias, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(m, 640, device="cuda", dtype=torch.bfloat16)
    y, code = _compile_and_code(lin, x)
    eager = lin.__class__(640, 384, bias=bias, device="cuda", dtype=torch.bfloat16)
    eager.load_state_dict(lin.state_dict())
    holder = nn.Sequential(eager)
    quantize_(holder)
    with torch.inference_mode():
        want = holder(x)
    if m > 64:  # M <= 64 may pick split-K, which stays the op (same kernels anyway)
        assert _template_kernels(code) == 1, code
    torch.testing.assert_close(y, want, rtol=0, atol=0)


def test_epilogue_fused_into_template_store(monkeypatch):
    monkeypatch.setenv("FP8INDUCTOR_CUBLAS", "0")  # lin1/lin2 (M=512, K=512) would pick cuBLAS: the op, no template
    torch.manual_seed(0)
    model = _Block(512, 768, bias=True).to("cuda", torch.bfloat16)
    x = torch.randn(2, 256, 512, device="cuda", dtype=torch.bfloat16)
    r = torch.randn(2, 256, 512, device="cuda", dtype=torch.bfloat16)
    y, code = _compile_and_code(model, x, r)
    report = fp8inductor.last_report()
    assert len(report.converted) == 3
    # Three GEMM templates on 3-D activations; bias, silu, the product and the residual add all ride
    # in their stores: no standalone pointwise kernel is left. lin1 and lin2 share one activation
    # quantization (the op's own Triton kernel), lin3 has its own.
    assert _template_kernels(code) == 3, code
    assert _pointwise_kernels(code) == 0, code
    assert code.count("fp8inductor.quantize_activation.default(") == 2, code
    eager = _Block(512, 768, bias=True).to("cuda", torch.bfloat16)
    eager.load_state_dict(model.state_dict())
    quantize_(eager)
    with torch.inference_mode():
        want = eager(x, r)
    # lin3's input differs from eager's by the fused (unrounded) product, so allow a bf16 rounding
    # of its inputs propagated through a 768-term dot: a few bf16 ulps of the output.
    torch.testing.assert_close(y.float(), want.float(), rtol=2**-6, atol=2**-6 * want.abs().max().item())


def test_symbolic_m_keeps_the_op_with_run_time_configs():
    torch.manual_seed(0)
    lin = nn.Linear(512, 512, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(300, 512, device="cuda", dtype=torch.bfloat16)
    torch._dynamo.mark_dynamic(x, 0)
    _, code = _compile_and_code(lin, x)
    assert _template_kernels(code) == 0
    assert "fp8inductor.block_linear" in code


def test_extern_option_keeps_the_op():
    lin = nn.Linear(512, 512, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(300, 512, device="cuda", dtype=torch.bfloat16)
    _, code = _compile_and_code(lin, x, gemm_lowering="extern")
    assert _template_kernels(code) == 0
    assert "fp8inductor.block_linear" in code


def test_max_autotune_benchmarks_templates_and_externs(monkeypatch):
    monkeypatch.setenv("FP8INDUCTOR_CUBLAS", "0")  # M=512, K=1024 would leave the GEMM to cuBLAS: no autotuning
    torch.manual_seed(0)
    lin = nn.Linear(1024, 1024, bias=True, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(512, 1024, device="cuda", dtype=torch.bfloat16)
    y, code = _compile_and_code(lin, x, mode="max-autotune")
    holder = nn.Sequential(nn.Linear(1024, 1024, bias=True, device="cuda", dtype=torch.bfloat16))
    holder[0].load_state_dict(lin.state_dict())
    quantize_(holder)
    with torch.inference_mode():
        want = holder(x)
    # Whichever choice won (template config, the op's launcher), it is the same
    # quantized GEMM: equal within the Hopper fp8 accumulation noise plus one bf16 rounding.
    torch.testing.assert_close(y.float(), want.float(), rtol=2**-7, atol=2**-7 * want.abs().max().item())


def test_cudagraphs_with_templates_match_plain_compile():
    torch.manual_seed(0)
    model = _Block(512, 768, bias=True).to("cuda", torch.bfloat16)
    x = torch.randn(4, 512, device="cuda", dtype=torch.bfloat16)
    r = torch.randn(4, 512, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        plain = torch.compile(model, backend="fp8block")(x, r)
        torch._dynamo.reset()
        graphed = torch.compile(model, backend="fp8block", options={"mode": "reduce-overhead"})
        for _ in range(3):  # warm-up, record, replay
            y = graphed(x, r)
    torch.testing.assert_close(y, plain, rtol=0, atol=0)


class _NormLinear(nn.Module):
    """h = x + r; y = proj(LlamaRMSNorm(h)); returns (y, h)."""

    def __init__(self, k: int, n: int) -> None:
        from transformers.models.llama.modeling_llama import LlamaRMSNorm

        super().__init__()
        self.norm = LlamaRMSNorm(k, eps=1e-5)
        self.proj = nn.Linear(k, n, bias=False)
        with torch.no_grad():
            self.norm.weight.copy_(torch.rand(k) + 0.5)

    def forward(self, x: torch.Tensor, r: torch.Tensor):
        h = x + r
        return self.proj(self.norm(h)), h


@pytest.mark.parametrize(
    "lead,cublas_on,forced,pdl_on",
    [((1, 2048), True, None, True), ((1, 96), False, None, True), ((1, 1), True, None, True),
     ((8, 1), True, None, True), ((8, 1), True, "tiles_16x64", True), ((8, 1), True, "tiles_16x64", False),
     ((8, 1), True, "tma_64x128", True), ((2, 3), True, "tiles_16x64", False)],
    ids=["cublas", "template", "decode", "decode_b8", "decode_b8_tiles_pdl", "decode_b8_tiles", "decode_b8_tma",
         "batch2x3_tiles"],
)
def test_norm_fusion_lowers_to_one_kernel_and_matches_the_ops(lead, cublas_on, forced, pdl_on, monkeypatch):
    """RMSNorm + residual add + quantization as one ``rms_norm_quant`` call, the linear on its output
    by the GEMM ``static_choice`` picks (cuBLAS reading the column-major scales in place, or the
    template, or the op's split-K kernel on tile tickets the norm kernel clears, or the op's tiles
    kernel PDL-launched behind the norm kernel at M <= 8), bit-identical to the eager ops on the
    same inputs. ``FP8INDUCTOR_PDL=0`` keeps a decode-size tiles config on the template.

    The decode shapes [B, 1, K] (forced onto a template config, which the H100 table picks for the
    gate/up GEMM at B = 8) give the column-major scales strides (1, B*G, B): a size-1 dim -2 whose
    stride is not the row's. The template once stepped over rows by it and read far out of the
    scales (NaN logits at decode b8/b32 in bench_model, H100, 2026-12-05)."""
    from torch._dynamo.utils import counters

    from fp8inductor.kernels import block_gemm
    from fp8inductor.kernels.config import CONFIGS

    if not cublas_on:
        monkeypatch.setenv("FP8INDUCTOR_CUBLAS", "0")
    if not pdl_on:
        monkeypatch.setenv("FP8INDUCTOR_PDL", "0")
    if forced is not None:
        monkeypatch.setattr(block_gemm, "_default_config", lambda *args: CONFIGS[forced])
        monkeypatch.setattr(torch._inductor.config, "force_disable_caches", True)  # the config is not in any key
    m = math.prod(lead)
    k, n = 4096, 6144
    torch.manual_seed(m)
    model = _NormLinear(k, n).to("cuda", torch.bfloat16)
    x = torch.randn(*lead, k, device="cuda", dtype=torch.bfloat16) * 2
    r = torch.randn(*lead, k, device="cuda", dtype=torch.bfloat16)
    (y, h), code = _compile_and_code(model, x, r)
    kind = block_gemm.static_choice(x.device, m, n, k, torch.bfloat16, None).kind
    tickets = block_gemm.splitk_tickets(x.device, m, n, k, torch.bfloat16, None)
    op_tiles = kind == "tiles" and pdl_on and m <= 8
    assert counters["fp8inductor"]["norms_fused"] == 1 and code.count("fp8inductor.rms_norm_quant.default(") == 1
    assert (tickets > 0) == (kind == "splitk")
    assert re.search(rf"rms_norm_quant\.default\(.*'float', {tickets}\)", code), code
    if kind == "splitk":  # the op on the norm kernel's tickets: no quantization, no memset of its own
        assert _template_kernels(code) == 0 and "quantize_activation" not in code, code
        assert re.search(r"quantized_block_linear\.default\(.*, buf\d+\)", code), code
    elif op_tiles:  # the op, whose tiles kernel is PDL-launched behind the norm kernel
        assert _template_kernels(code) == 0 and "quantize_activation" not in code, code
        assert "fp8inductor.quantized_block_linear.default(" in code, code
    elif kind == "cublas":
        # the scales go to cuBLAS as a view of the op's column-major output, not a copy
        assert re.search(rf"_scaled_mm\.default\(.*reinterpret_tensor\(buf\d+, \({m}, 32\), \(1, {m}\)", code), code
    else:
        assert _template_kernels(code) == 1, code
    with torch.inference_mode():
        wq, ws = fp8inductor.quantize_weight(model.proj.weight)
        h_want, xq, xs, _ = torch.ops.fp8inductor.rms_norm_quant(x, r, model.norm.weight, 1e-5, "float")
        y_want = torch.ops.fp8inductor.quantized_block_linear(xq, xs, wq, ws, None, torch.bfloat16)
    torch.testing.assert_close(h, h_want, rtol=0, atol=0)
    torch.testing.assert_close(y, y_want, rtol=0, atol=0)
