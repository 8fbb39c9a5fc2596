"""The activation quantization as Inductor IR (``fp8inductor.quant_ir``), on any device Inductor
compiles for (CPU here: C++ codegen; the H100's Triton codegen in tests/test_gpu_lowering.py).

What must hold: inside an fp8block compile, ``quantize_activation`` of a producer's output becomes
one Inductor kernel with the producer (no separate op call), and its codes and scales are bit-equal
to ``quantize_activation_ref`` of the value the producer computes (Inductor keeps a fused bf16
chain in fp32, so the reference is fed the fp32 producer); where the IR cannot stand in (ragged K,
``gemm_lowering="extern"``) the op's kernel runs.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from fp8inductor import reference as ref
from fp8inductor.testing import assert_fp8_equal, assert_scales_equal

QUANT = torch.ops.fp8inductor.quantize_activation
OP_CALL = "fp8inductor.quantize_activation.default("
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
KERNEL_DEF = {"cpu": "= async_compile.cpp", "cuda": "= async_compile.triton("}


def _silu_mul(a, b):
    return F.silu(a) * b


def _silu_mul_fp32(a, b):
    """The producer as Inductor's fused kernel computes it: in fp32, without the bf16 rounding
    (on the CPU the same operations; Triton's SiLU may differ from eager CUDA's in the last bit)."""
    return F.silu(a.float()) * b.float()


def _mul(a, b):
    return a * b


def _mul_fp32(a, b):
    """a * b in fp32: exact for bf16 and fp16 inputs (the product's mantissa fits), and one IEEE
    rounding for fp32 on every device: Inductor's fused product equals it bit for bit."""
    return a.float() * b.float()


def _compiled_quant(producer, scale_fmt, *args, **options):
    from torch._inductor.utils import run_and_get_code

    def f(*inputs):
        return QUANT(producer(*inputs), 128, scale_fmt)

    compiled = torch.compile(f, backend="fp8block", options=options or None)
    with torch.inference_mode():
        (q, s), code = run_and_get_code(compiled, *args)
    return q, s, "\n".join(code)


def _special_values(a: torch.Tensor, b: torch.Tensor) -> None:
    """NaN, Inf, an all-zero group, huge and tiny magnitudes, each in its own group."""
    a[0, 3] = float("nan")
    if a.shape[0] > 1:
        b[1, 128:256] = 0.0
    a[-1, -5] = float("inf")
    a[-1, 0] = 3e38 if a.dtype != torch.float16 else 6e4
    b[0, -1] = 1e-38 if b.dtype != torch.float16 else 6e-8


def _assert_bit_equal(q, s, q_ref, s_ref):
    """Codes bit-equal up to the sign of zero and NaN codes (-0.0 / s vs +0.0; the CPU's Inf / Inf
    is a negative NaN), scales bit-equal with NaN at the same places (fp8inductor.testing)."""
    assert q.dtype == ref.FP8_DTYPE
    assert_fp8_equal(q.cpu(), q_ref.cpu())
    assert_scales_equal(s.cpu(), s_ref.cpu())


@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale_fmt", ["float", "ue8m0"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("shape", [(1, 128), (37, 512), (2, 5, 384)])
def test_fused_into_producer_and_bit_equal(shape, dtype, scale_fmt, device):
    torch.manual_seed(sum(shape))
    a = torch.randn(shape, dtype=dtype) * 4
    b = torch.randn(shape, dtype=dtype)
    _special_values(a.view(-1, shape[-1]), b.view(-1, shape[-1]))
    q, s, code = _compiled_quant(_mul, scale_fmt, a.to(device), b.to(device))
    assert OP_CALL not in code, "the op ran instead of the IR"
    assert code.count(KERNEL_DEF[device]) == 1, "producer and quantization are not one kernel"
    q_ref, s_ref = ref.quantize_activation_ref(_mul_fp32(a, b), 128, scale_fmt)
    q, s = q.cpu(), s.cpu()
    _assert_bit_equal(q, s, q_ref, s_ref)
    nan_codes = q.view(torch.uint8).view(-1, shape[-1])[0, :128]
    assert (nan_codes == 0x7F).all(), "a NaN group is the positive NaN code, as the Triton kernel's"


@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale_fmt", ["float", "ue8m0"])
def test_top_of_fp32_range_saturates_as_the_reference(scale_fmt, device):
    """Groups whose ue8m0 scale is 2**120 get codes of at most 240 (reference.code_bound), so
    q * s stays finite; the IR's codes and scales are bit-equal to the reference's."""
    top = 2.0**120
    values = torch.tensor([3.0e38, 244 * top, 248 * top, 252 * top, 3.39e38, torch.finfo(torch.float32).max])
    a = torch.zeros(len(values), 256)
    a[:, 0], a[:, 1], a[:, 2] = values, -values, values / 3
    a[:, 128:] = torch.randn(len(values), 128)
    b = torch.ones_like(a)
    q, s, code = _compiled_quant(_mul, scale_fmt, a.to(device), b.to(device))
    assert OP_CALL not in code, "the op ran instead of the IR"
    q_ref, s_ref = ref.quantize_activation_ref(_mul_fp32(a, b), 128, scale_fmt)
    q, s = q.cpu(), s.cpu()
    _assert_bit_equal(q, s, q_ref, s_ref)
    assert torch.isfinite(q.float() * s.repeat_interleave(128, dim=1)).all()
    assert q[:, :128].float().abs().max() == (240 if scale_fmt == "ue8m0" else 448)


@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("device", DEVICES)
def test_silu_mul_fused_and_within_one_code_step(device):
    """Llama's SiLU(gate) * up -> quantization: one kernel; against the reference on eager's fp32
    SiLU, a code may move by one e4m3 step where the two SiLUs differ in the last bit (Triton's
    sigmoid is not eager CUDA's), and a scale by a few fp32 ulps; on the CPU the two agree exactly."""
    torch.manual_seed(0)
    a, b = torch.randn(64, 1024, dtype=torch.bfloat16) * 4, torch.randn(64, 1024, dtype=torch.bfloat16)
    q, s, code = _compiled_quant(_silu_mul, "float", a.to(device), b.to(device))
    assert OP_CALL not in code and code.count(KERNEL_DEF[device]) == 1
    q_ref, s_ref = ref.quantize_activation_ref(_silu_mul_fp32(a.to(device), b.to(device)).cpu(), 128, "float")
    q, s = q.cpu(), s.cpu()
    if device == "cpu":
        _assert_bit_equal(q, s, q_ref, s_ref)
        return
    torch.testing.assert_close(s, s_ref, rtol=4 * 2**-23, atol=0)
    codes, codes_ref = q.view(torch.uint8).int(), q_ref.view(torch.uint8).int()
    assert ((codes - codes_ref).abs() <= 1).all()  # same sign: one step on the e4m3 grid at most
    assert (codes != codes_ref).float().mean() < 1e-3


@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("device", DEVICES)
def test_unfused_input_is_bit_equal_to_the_op(device):
    """A graph input (nothing to fuse): the IR's result is the op's kernel's, bit for bit, on values
    on and beside every e4m3 rounding tie (amax 448 -> s = 1: x / s is x, ties stay ties), and on
    random rows whose divisions are inexact (where an approximate division would show)."""
    grid = torch.arange(0, 448, 0.0625, dtype=torch.float32).view(56, 128)  # every e4m3 tie, and more
    ties = torch.cat([grid, -grid], dim=1)
    ties[:, 0] = 448.0
    x = torch.cat([ties, torch.randn(200, 256) * torch.logspace(-6, 6, 200)[:, None]]).to(device)
    q, s, code = _compiled_quant(lambda t: t, "float", x)
    assert OP_CALL not in code
    with torch.inference_mode():
        q_op, s_op = QUANT(x, 128, "float")  # the op's kernel (Triton on CUDA, the reference on CPU)
    _assert_bit_equal(q.cpu(), s.cpu(), q_op.cpu(), s_op.cpu())


@pytest.mark.usefixtures("fresh_dynamo")
def test_dynamic_m_uses_the_ir():
    """The IR needs a static K only (a model's K is a weight's): a symbolic M compiles once and
    serves every M."""
    from torch._dynamo.utils import counters
    from torch._inductor.utils import run_and_get_code

    compiled = torch.compile(lambda a, b: QUANT(_silu_mul(a, b), 128, "float"), backend="fp8block")
    for m in (3, 17, 64):
        a, b = torch.randn(m, 256, dtype=torch.bfloat16), torch.randn(m, 256, dtype=torch.bfloat16)
        torch._dynamo.mark_dynamic(a, 0)
        torch._dynamo.mark_dynamic(b, 0)
        with torch.inference_mode():
            if m == 3:  # (run_and_get_code compiles afresh on every call)
                (q, s), code = run_and_get_code(compiled, a, b)
                assert OP_CALL not in "\n".join(code)
            else:
                q, s = compiled(a, b)
        _assert_bit_equal(q, s, *ref.quantize_activation_ref(_silu_mul_fp32(a, b), 128, "float"))
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize(
    "k, options, switch", [(200, {}, "1"), (256, {"gemm_lowering": "extern"}, "1"), (256, {}, "0")]
)
def test_op_kernel_where_the_ir_cannot_stand_in(monkeypatch, k, options, switch):
    """A ragged last group (K % 128 != 0), the extern option and ``FP8INDUCTOR_QUANT_IR=0`` keep the
    op, which reads the producer's bf16 output (Inductor's: computed in fp32, rounded once)."""
    monkeypatch.setenv("FP8INDUCTOR_QUANT_IR", switch)
    a, b = torch.randn(9, k, dtype=torch.bfloat16), torch.randn(9, k, dtype=torch.bfloat16)
    q, s, code = _compiled_quant(_silu_mul, "float", a, b, **options)
    assert OP_CALL in code
    x_bf16 = _silu_mul_fp32(a, b).to(torch.bfloat16)
    _assert_bit_equal(q, s, *ref.quantize_activation_ref(x_bf16, 128, "float"))


def test_available_gate(monkeypatch):
    from fp8inductor import quant_ir

    cpu = torch.device("cpu")
    assert quant_ir.available(cpu, 256, "float") and quant_ir.available(cpu, 128, "ue8m0")
    monkeypatch.setenv("FP8INDUCTOR_QUANT_IR", "0")
    assert not quant_ir.available(cpu, 256, "float")
    monkeypatch.delenv("FP8INDUCTOR_QUANT_IR")
    assert not quant_ir.available(cpu, 200, "float")  # ragged group
    assert not quant_ir.available(cpu, None, "float")  # symbolic K
    assert not quant_ir.available(cpu, 256, "e8m0")  # unknown format
    assert quant_ir.available(torch.device("cuda", 0), 256, "float")
    monkeypatch.setattr(torch.version, "hip", "6.2")  # ROCm: no PTX
    assert not quant_ir.available(torch.device("cuda", 0), 256, "float")


def _triton_kernel_plans(fn, *args):
    """(plans, wrapper code) of ``fn(*args)`` compiled as a prefill graph on the H100 would be (every
    FP8 linear on cuBLAS), planned on the CPU (``fp8inductor.plan``)."""
    from fp8inductor.plan import plan_triton_kernels

    return plan_triton_kernels(fn, *args)


def _quant_plans(plans):
    """The kernels reducing over 128-element groups: the activation quantizations."""
    return [p for p in plans if p.reduction and p.numels.get("r0_") == 128]


@pytest.mark.usefixtures("fresh_dynamo")
def test_rows_not_a_multiple_of_4_are_padded_inside_the_quantization():
    """cuBLAS takes M % 4 == 0 only: a 130-row activation is quantized as 132 rows (the two pad rows
    are a masked load inside the one quantization kernel, no copy of x), cuBLAS multiplies 132 rows,
    and the graph returns a view of the first 130 (no copy of the product)."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(512, 1024, bias=False).to(torch.bfloat16)
    plans, code = _triton_kernel_plans(lin, torch.randn(1, 130, 512, dtype=torch.bfloat16))
    assert code.count("aten._scaled_mm.default(") == 1 and "fp8inductor.block_linear.default(" not in code, code
    assert re.search(r"_scaled_mm\.default\(reinterpret_tensor\(buf\d+, \(132, 512\)", code), code
    assert re.search(r"empty_strided_\w+\(\(132, 4\), \(1, 132\)", code), code  # column-major scales
    assert re.search(r"return \(reinterpret_tensor\(buf\d+, \(1, 130, 1024\)", code), code
    assert len(plans) == 1 and plans[0].persistent and plans[0].numels == {"x": 132 * 4, "r0_": 128}, plans


@pytest.mark.usefixtures("fresh_dynamo")
def test_quantization_kernels_are_persistent_reductions():
    """Each activation quantization of a prefill MLP (x's; SiLU(gate) * up's, fused) is one
    persistent reduction over its 128-wide groups: x read once. Before the INNER hint and the
    recomputed scale (quant_ir.py), Inductor looped these reductions, reading x twice: 116 us per
    SiLU * up quantization on the H100 (Llama-3-8B, 1 x 2048), against 60 us persistent."""
    torch.manual_seed(0)
    gate, up, down = (
        torch.nn.Linear(a, b, bias=False).to(torch.bfloat16) for a, b in ((512, 1024),) * 2 + ((1024, 512),)
    )

    def mlp(x):
        return down(F.silu(gate(x)) * up(x))

    plans, code = _triton_kernel_plans(mlp, torch.randn(1, 256, 512, dtype=torch.bfloat16))
    assert code.count("aten._scaled_mm.default(") == 2 and "fp8inductor.block_linear.default(" not in code, code
    quant_plans = _quant_plans(plans)
    assert len(quant_plans) == 2, plans  # x's quantization (shared by gate and up), SiLU * up's
    assert all(plan.persistent for plan in quant_plans), quant_plans


@pytest.mark.usefixtures("fresh_dynamo")
def test_attention_output_quantization_reads_through_the_transpose():
    """o_proj's input is the attention output transposed back to [tokens, heads * head_dim]: its
    quantization is one persistent reduction reading through the transpose (no copy kernel), and
    q/k/v's is another."""
    torch.manual_seed(0)
    q_proj, k_proj, v_proj, o_proj = (torch.nn.Linear(512, 512, bias=False).to(torch.bfloat16) for _ in range(4))

    def attention(x):
        b, t, d = x.shape
        q, k, v = (p(x).view(b, t, 4, d // 4).transpose(1, 2) for p in (q_proj, k_proj, v_proj))
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return o_proj(o.transpose(1, 2).reshape(b, t, d))

    plans, code = _triton_kernel_plans(attention, torch.randn(1, 256, 512, dtype=torch.bfloat16))
    quant_plans = _quant_plans(plans)
    assert len(quant_plans) == 2 and all(plan.persistent for plan in quant_plans), plans
    assert code.count("aten._scaled_mm.default(") == 2, code  # q/k/v fused, o
    assert not [p for p in plans if not p.reduction], plans  # no pointwise kernel: no transpose copy


class _BufferLinear(torch.nn.Module):
    """A linear on FP8 buffers, as ``quantize_``'s modules hold them (frozen into constants)."""

    def __init__(self, wq: torch.Tensor, ws: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("wq", wq)
        self.register_buffer("ws", ws)

    def forward(self, x):
        return torch.ops.fp8inductor.block_linear(x, self.wq, self.ws, None)


@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("layout", ["row-major", "transposed", "misaligned"])
def test_cublas_lowering_needs_a_dense_weight(layout):
    """The aten ``_scaled_mm`` lowering takes the weight as a view, so it needs the weight and its
    scales row-major, at offset 0 and 16-byte aligned (what the op checks at run time); any other
    layout keeps the op, which checks the run-time tensors and falls back to its Triton kernels."""
    from fp8inductor.reference import quantize_weight_ref

    wq, ws = quantize_weight_ref(torch.randn(512, 256), (128, 128), "float")
    if layout == "transposed":
        wq = wq.t().contiguous().t()  # same values, column-major
    elif layout == "misaligned":
        wq = torch.cat([torch.zeros(1, dtype=wq.dtype), wq.flatten()])[1:].view(512, 256)  # 1 byte off
    model = _BufferLinear(wq, ws)
    _, code = _triton_kernel_plans(model, torch.randn(256, 256, dtype=torch.bfloat16))
    lowered = "aten._scaled_mm.default(" in code and "fp8inductor.block_linear.default(" not in code
    assert lowered == (layout == "row-major"), code


_COL_MAJOR_LIB = torch.library.Library("fp8inductor_test", "DEF")
_COL_MAJOR_LIB.define("quant_col_major(Tensor x) -> (Tensor, Tensor)")


def _quant_col_major_fake(x):
    m, k = x.shape
    return x.new_empty((m, k), dtype=ref.FP8_DTYPE), x.new_empty((k // 128, m), dtype=torch.float32).t()


_COL_MAJOR_LIB.impl("quant_col_major", _quant_col_major_fake, "Meta")
_COL_MAJOR_LIB.impl("quant_col_major", _quant_col_major_fake, "CPU")  # never run: lowered below


@pytest.mark.usefixtures("fresh_dynamo")
def test_column_major_scales_have_the_reference_values():
    """The cuBLAS lowering's form of the IR (scales written [M, K/128] with strides (1, M)), run by
    Inductor's C++ codegen: the same bits as the reference, in the layout cuBLAS reads."""
    from torch._inductor import lowering as L

    from fp8inductor import quant_ir

    op = torch.ops.fp8inductor_test.quant_col_major.default
    if op not in L.lowerings:
        L.register_lowering(op, type_promotion_kind=None)(
            lambda x: quant_ir.quantize_1x128(x, x.get_size()[0], int(x.get_size()[1]), "float", col_major_scales=True)
        )
    torch.manual_seed(0)
    a, b = torch.randn(37, 512, dtype=torch.bfloat16), torch.randn(37, 512, dtype=torch.bfloat16)
    _special_values(a, b)
    with torch.inference_mode():
        q, s = torch.compile(lambda a, b: op(a * b), backend="inductor")(a, b)
    assert s.stride() == (1, 37)
    _assert_bit_equal(q, s, *ref.quantize_activation_ref(_mul_fp32(a, b), 128, "float"))


@pytest.mark.usefixtures("fresh_dynamo")
def test_plan_counts_the_bytes_a_kernel_moves():
    """A softmax reads x and writes y once; its row max and sum live inside the kernel, and its
    output reuses an intermediate buffer in place (two names, one pointer). The activation
    quantization reads x and writes codes and scales; its group amax is internal. (The plan counted
    softmax at twice its traffic and gave the quantization a phantom read of its amax buffer.)"""
    from fp8inductor.plan import plan_triton_kernels

    x = torch.randn(64, 1024)
    plans, _ = plan_triton_kernels(lambda x: torch.softmax(x, -1), x, backend="inductor")
    assert [(sum(p.read_bytes), sum(p.write_bytes)) for p in plans] == [(x.nbytes, x.nbytes)], plans
    lin = torch.nn.Linear(512, 1024, bias=False).to(torch.bfloat16)
    x = torch.randn(256, 512, dtype=torch.bfloat16)
    (quant,) = _quant_plans(_triton_kernel_plans(lin, x)[0])
    assert quant.read_bytes == (x.nbytes,) and sorted(quant.write_bytes) == [256 * 4 * 4, x.numel()], quant


@pytest.mark.usefixtures("fresh_dynamo")
def test_llama_prefill_plan_has_no_op_call_and_only_persistent_quantizations():
    """A transformers Llama prefill graph, compiled as on the H100: every FP8 linear is an aten
    ``_scaled_mm`` call (q/k/v and gate/up fused: 4 per layer). The two after a norm read the
    quantization of ``rms_norm_quant`` (the only fp8inductor op called at run time, 2 per layer:
    fp8inductor.norm_fusion); the other two (o_proj, down_proj) an IR quantization that is one
    persistent reduction."""
    import model_zoo

    model, _, _ = model_zoo.llama()
    layers = model.config.num_hidden_layers
    ids = torch.randint(0, model.config.vocab_size, (1, 256), generator=torch.Generator().manual_seed(0))
    plans, code = _triton_kernel_plans(lambda ids: model(ids, logits_to_keep=1), ids)
    op_calls = [line for line in code.splitlines() if "torch.ops.fp8inductor." in line and ".default(" in line]
    assert len(op_calls) == 2 * layers and all("fp8inductor.rms_norm_quant.default(" in c for c in op_calls), op_calls
    assert code.count("aten._scaled_mm.default(") == 4 * layers, code
    quant_plans = _quant_plans(plans)
    assert len(quant_plans) == 2 * layers, plans
    assert all(plan.persistent for plan in quant_plans), quant_plans


def test_the_plan_covers_every_graph_of_a_function_with_a_graph_break():
    """The plan stopped the whole compile at the first graph's codegen: after a graph break the later
    graphs were silently missing (a model's traffic summed too low). Each graph is now planned and then
    run eagerly, so Dynamo goes on to the next."""
    l1 = torch.nn.Linear(512, 512, bias=False).to(torch.bfloat16)
    l2 = torch.nn.Linear(512, 512, bias=False).to(torch.bfloat16)
    x = torch.randn(256, 512, dtype=torch.bfloat16)

    def with_break(x):
        y = torch.relu(l1(x))
        torch._dynamo.graph_break()
        return l2(y)

    plans, code = _triton_kernel_plans(with_break, x)
    assert code.count("aten._scaled_mm.default(") == 2, code  # one FP8 GEMM in each graph
    assert len(_quant_plans(plans)) == 2, plans
