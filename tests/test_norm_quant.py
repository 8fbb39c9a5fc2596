"""The (residual add +) RMSNorm + quantization kernel and ops vs ``reference.rms_norm_quant_ref``.

Runs natively on CUDA when a GPU is visible, otherwise under the Triton interpreter on CPU tensors.
The reference runs on CPU copies (the spec; see tests/test_kernels.py).

Tolerances, and why: the residual sum ``h`` is one rounding of an exact fp32 sum in both, so it is
compared bit for bit. The row statistic is a K-long fp32 sum whose order differs (a tree in the
kernel, torch's order in the reference) and the GPU's ``rsqrt`` is the hardware approximation, so
``rstd`` may differ by an ulp or two; that moves the bf16/fp16 rounding of the normalized value of
a few elements by one ulp of the activation dtype, hence a group's amax and scale by at most that
(relative 2**-7 for bf16, 2**-10 for fp16; 4 fp32 ulps for fp32), and the dequantized values by at
most one e4m3 step (relative 2**-3) plus the change of scale. Under the interpreter the results
have been bit-exact for bf16 and fp16 (2026-11-25, triton 3.9); the bounds are for the GPU.
"""

from __future__ import annotations

import pytest
import torch

import fp8inductor  # noqa: F401  (registers torch.ops.fp8inductor)
import triton
import triton.language as tl

from fp8inductor.kernels.config import NORM_QUANT_MAX_K
from fp8inductor.kernels.norm_quant import _div_by_scale, rms_norm_quant
from fp8inductor.reference import SCALE_FMTS, ceil_div, rms_norm_quant_ref
from fp8inductor.testing import default_device

DEVICE = default_device()
DTYPES = (torch.bfloat16, torch.float16, torch.float32)
SCALE_RTOL = {torch.bfloat16: 2**-7, torch.float16: 2**-10, torch.float32: 4 * 2**-23}

pytestmark = pytest.mark.filterwarnings("ignore:(invalid value|overflow|divide by zero) encountered:RuntimeWarning")


@triton.jit
def _divide_kernel(v_ptr, s_ptr, out_ptr, G: tl.constexpr):
    """out[g, :] = _div_by_scale(v[g, :], s[g]) for G groups of 128 per program."""
    offs = tl.arange(0, G)[:, None] * 128 + tl.arange(0, 128)[None, :]
    base = tl.program_id(0) * G
    v = tl.load(v_ptr + base * 128 + offs)
    s = tl.load(s_ptr + base + tl.arange(0, G))
    tl.store(out_ptr + base * 128 + offs, _div_by_scale(v, s))


def _inputs(m: int, k: int, dtype: torch.dtype, residual: bool, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) * 3
    r = torch.randn(m, k, generator=g) if residual else None
    w = torch.rand(k, generator=g) + 0.5
    if m >= 2:
        x[1] = 0.0  # an all-zero row (with no residual): rstd = rsqrt(eps), codes 0
    if m >= 3 and k >= 256:
        x[2, 128:256] *= 1e-3  # a quiet group next to loud ones
    to = lambda t: None if t is None else t.to(dtype).to(DEVICE)
    return to(x), to(r), to(w)


def _check(x, r, w, eps=1e-5, scale_fmt="float"):
    h, q, s = rms_norm_quant(x, r, w, eps, scale_fmt)
    cpu = lambda t: None if t is None else t.cpu()
    h_ref, q_ref, s_ref = rms_norm_quant_ref(cpu(x), cpu(r), cpu(w), eps, scale_fmt)
    assert h.shape == h_ref.shape and q.shape == q_ref.shape and s.shape == s_ref.shape
    assert s.stride() == s_ref.stride()  # column-major over the rows, as cuBLAS reads it
    torch.testing.assert_close(h.cpu(), h_ref, rtol=0, atol=0, equal_nan=True)
    if q.numel() == 0:
        return h, q, s
    rtol = SCALE_RTOL[x.dtype]
    torch.testing.assert_close(s.cpu(), s_ref, rtol=rtol, atol=0, equal_nan=True)
    k = x.shape[-1]
    deq = q.cpu().float() * s.cpu().repeat_interleave(128, dim=-1)[..., :k]
    deq_ref = q_ref.float() * s_ref.repeat_interleave(128, dim=-1)[..., :k]
    torch.testing.assert_close(deq, deq_ref, rtol=2**-3 + 2 * rtol, atol=0, equal_nan=True)
    return h, q, s


@pytest.mark.parametrize("scale_fmt", SCALE_FMTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("residual", [True, False], ids=["residual", "plain"])
@pytest.mark.parametrize("mk", [(1, 4096), (3, 384), (5, 200), (4, 7168), (33, 1024)])
def test_matches_reference(mk, residual, dtype, scale_fmt):
    m, k = mk
    _check(*_inputs(m, k, dtype, residual, seed=m * 7 + k), scale_fmt=scale_fmt)


def test_leading_dims_and_strided_rows():
    x, r, w = _inputs(12, 640, torch.bfloat16, True, seed=1)
    x3, r3 = x.view(3, 4, 640), r.view(3, 4, 640)
    h, q, s = _check(x3, r3, w)
    assert h.shape == (3, 4, 640) and q.shape == (3, 4, 640) and s.shape == (3, 4, 5)
    assert s.stride() == (4, 1, 12)  # [M, G] column-major, viewed [3, 4, G]
    wide = torch.randn(6, 900, generator=torch.Generator().manual_seed(2)).bfloat16().to(DEVICE)
    _check(wide[:, 100:740], None, w)  # row stride 900
    _check(wide[::2, :640], wide[1::2, 200:840], w)  # strided rows in both


def test_nan_and_inf_stay_in_their_row():
    x, r, w = _inputs(4, 512, torch.bfloat16, True, seed=3)
    x[1, 7] = float("nan")
    x[3, 300] = float("inf")
    h, q, s = _check(x, r, w, eps=1e-6)
    # NaN in a row makes its statistic NaN: all its groups are NaN. Inf makes it Inf, rstd 0: the
    # Inf element is Inf * 0 = NaN (its group NaN), the rest of the row normalizes to 0. Other rows
    # are untouched.
    assert s[1].isnan().all() and q[1].float().isnan().all()
    assert s[3, 2].isnan() and not s[3, [0, 1, 3]].isnan().any()
    assert (q[3, :256].float() == 0).all() and q[3, 256:384].float().isnan().all()
    assert not s[[0, 2]].isnan().any() and not q[[0, 2]].float().isnan().any()


@pytest.mark.parametrize("scale_fmt", SCALE_FMTS)
def test_top_of_fp32_range(scale_fmt):
    """A norm weight near fp32's largest value: ue8m0 gives those groups the scale 2**120, and
    their codes saturate at 240 (reference.code_bound), so the dequantized values stay finite."""
    x = torch.ones(4, 256)
    x[1:, 0] = torch.tensor([0.97, 0.9, 0.5])  # other rows, other products with the top weight
    w = torch.rand(256, generator=torch.Generator().manual_seed(5)) + 0.5
    w[0], w[1] = 3.39e38, -3.3e38
    _, q, s = _check(x.to(DEVICE), None, w.to(DEVICE), scale_fmt=scale_fmt)
    q, s = q.cpu().float(), s.cpu()
    assert torch.isfinite(q * s.repeat_interleave(128, dim=1)).all()
    top = s[:, 0] == 2.0**120
    if scale_fmt == "ue8m0":
        assert int(top.sum()) >= 2 and q[top, :128].abs().max() == 240
    else:
        assert not top.any()


def test_empty_and_errors():
    w = torch.ones(256, dtype=torch.bfloat16, device=DEVICE)
    x = torch.zeros(0, 256, dtype=torch.bfloat16, device=DEVICE)
    h, q, s = rms_norm_quant(x, x, w, 1e-6)
    assert h.shape == (0, 256) and q.shape == (0, 256) and s.shape == (0, 2)
    x = torch.randn(2, 256, device=DEVICE).bfloat16()
    with pytest.raises(ValueError, match="weight must be"):
        rms_norm_quant(x, None, w[:128], 1e-6)
    with pytest.raises(ValueError, match="weight must be"):
        rms_norm_quant(x, None, w.float(), 1e-6)
    with pytest.raises(ValueError, match="residual must be"):
        rms_norm_quant(x, x.half(), w, 1e-6)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        rms_norm_quant(x.to(torch.float8_e4m3fn), None, w, 1e-6)
    with pytest.raises(ValueError, match="scale_fmt"):
        rms_norm_quant(x, None, w, 1e-6, "e5m2")
    big = NORM_QUANT_MAX_K + 128
    with pytest.raises(ValueError, match="registers"):
        rms_norm_quant(torch.zeros(1, big, device=DEVICE).bfloat16(), None, torch.ones(big, device=DEVICE).bfloat16(), 1e-6)


def test_reference_is_the_llama_norm_then_the_activation_quantization():
    """The reference's normalized output is transformers' LlamaRMSNorm's, bit for bit."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from fp8inductor.reference import quantize_activation_ref

    g = torch.Generator().manual_seed(4)
    norm = LlamaRMSNorm(384, eps=1e-5).to(torch.bfloat16)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(384, generator=g) + 0.5)
    x = (torch.randn(2, 5, 384, generator=g) * 4).bfloat16()
    r = torch.randn(2, 5, 384, generator=g).bfloat16()
    h, q, s = rms_norm_quant_ref(x, r, norm.weight.detach(), 1e-5)
    with torch.no_grad():
        q_want, s_want = quantize_activation_ref(norm(x + r), 128)
    assert torch.equal(h, x + r)
    assert torch.equal(q.view(torch.uint8), q_want.view(torch.uint8)) and torch.equal(s, s_want)


@pytest.mark.parametrize("tickets", [0, 1, 1500], ids=["no_tickets", "1_ticket", "1500_tickets"])
@pytest.mark.parametrize("residual", [True, False], ids=["residual", "plain"])
def test_op_matches_kernel_and_fake(residual, tickets):
    """``torch.ops.fp8inductor.rms_norm_quant``: the kernel on the device, its fake's layouts, and
    the zeroed tickets (more than the kernel's 1024-wide clearing loop does in one step)."""
    x, r, w = _inputs(6, 1024, torch.bfloat16, residual, seed=5)
    x3 = x.view(2, 3, 1024)
    r3 = r.view(2, 3, 1024) if r is not None else None
    out = torch.ops.fp8inductor.rms_norm_quant(x3, r3, w, 1e-5, "float", tickets)
    assert len(out) == 4
    assert out[3].dtype == torch.int32 and out[3].shape == (tickets,) and not out[3].any()
    want = rms_norm_quant(x3, r3, w, 1e-5, "float") if DEVICE == "cuda" else rms_norm_quant_ref(x3, r3, w, 1e-5)
    for a, b in zip(out[:3], want, strict=True):
        assert a.shape == b.shape and a.stride() == b.stride() and a.dtype == b.dtype
        bits = lambda t: t.view(torch.uint8) if t.dtype.itemsize == 1 else t
        assert torch.equal(bits(a), bits(b))
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fx3, fw = mode.from_tensor(x3), mode.from_tensor(w)
        fr3 = mode.from_tensor(r3) if r3 is not None else None
        fake = torch.ops.fp8inductor.rms_norm_quant(fx3, fr3, fw, 1e-5, "float", tickets)
    for a, b in zip(fake, out, strict=True):
        assert a.shape == b.shape and a.stride() == b.stride() and a.dtype == b.dtype
    with pytest.raises(ValueError, match="tickets must be an int >= 0"):
        torch.ops.fp8inductor.rms_norm_quant(x3, r3, w, 1e-5, "float", -1)


@pytest.mark.parametrize("m", [0, 3])
def test_kernel_clears_the_given_tickets(m):
    """``zero``: the kernel sets every element to 0 (program 0 does, in 1024-wide steps), also with
    no rows to normalize, and leaves the norm's outputs as they are without it."""
    x, r, w = _inputs(max(m, 1), 256, torch.bfloat16, True, seed=9)
    x, r = x[:m], r[:m]
    dirty = torch.arange(1, 2500, dtype=torch.int32, device=DEVICE)
    h, q, s = rms_norm_quant(x, r, w, 1e-5, zero=dirty)
    assert not dirty.any()
    h0, q0, s0 = rms_norm_quant(x, r, w, 1e-5)
    assert torch.equal(h, h0) and torch.equal(q.view(torch.uint8), q0.view(torch.uint8)) and torch.equal(s, s0)
    with pytest.raises(ValueError, match="zero must be a contiguous int32"):
        rms_norm_quant(x, r, w, 1e-5, zero=dirty.long())
    with pytest.raises(ValueError, match="zero must be a contiguous int32"):
        rms_norm_quant(x, r, w, 1e-5, zero=dirty[::2])


def test_quantized_block_linear_op_is_the_gemm_on_the_given_quantization():
    from fp8inductor.reference import block_gemm_ref, quantize_weight_ref

    g = torch.Generator().manual_seed(6)
    x, r, w = _inputs(10, 512, torch.bfloat16, True, seed=6)
    weight = (torch.randn(384, 512, generator=g) / 512**0.5).bfloat16()
    bias = torch.randn(384, generator=g).bfloat16()
    wq, ws = quantize_weight_ref(weight)
    _, xq, xs, t = torch.ops.fp8inductor.rms_norm_quant(x.view(2, 5, 512), r.view(2, 5, 512), w, 1e-5, "float", 64)
    wq, ws = wq.to(DEVICE), ws.to(DEVICE)
    want = block_gemm_ref(xq.reshape(10, 512).cpu(), xs.reshape(10, 4).cpu(), wq.cpu(), ws.cpu(), bias, torch.bfloat16)
    for tickets in (None, t, t[:1]):  # t[:1]: too few for a split-K launch's tiles, which then clears its own
        y = torch.ops.fp8inductor.quantized_block_linear(xq, xs, wq, ws, bias.to(DEVICE), torch.bfloat16, tickets)
        assert y.shape == (2, 5, 384) and y.dtype == torch.bfloat16
        torch.testing.assert_close(y.reshape(10, 384).cpu().float(), want.float(), rtol=2**-7, atol=1e-3)
        assert not t.any()  # left zero (checks the GPU split-K launch; the CPU op never touches tickets)
    with pytest.raises(ValueError, match="bias must be"):
        torch.ops.fp8inductor.quantized_block_linear(xq, xs, wq, ws, bias[:5].to(DEVICE), torch.bfloat16)
    with pytest.raises(ValueError, match="tickets must be a contiguous 1-D int32"):
        torch.ops.fp8inductor.quantized_block_linear(xq, xs, wq, ws, None, torch.bfloat16, t.long())
    assert ceil_div(512, 128) == xs.shape[-1]


@pytest.mark.parametrize("m,n,k", [(1, 384, 512), (5, 200, 1000), (17, 130, 384)])
def test_split_k_gemm_on_the_norm_kernels_tickets(m, n, k):
    """The norm kernel's cleared tickets serve a split-K GEMM, which leaves them zero for the next
    one: two launches on one buffer give the result of launches on fresh zeros, bit for bit."""
    from fp8inductor.kernels.block_gemm import CONFIGS, _split_plan, fp8_block_gemm
    from fp8inductor.reference import quantize_weight_ref

    g = torch.Generator().manual_seed(m * n)
    x, r, w = _inputs(m, k, torch.bfloat16, True, seed=m + k)
    cfg = CONFIGS["splitk_16x64"]
    tiles = _split_plan(cfg, m, n, k)[2]
    t = torch.full((tiles + 3,), 7, dtype=torch.int32, device=DEVICE)
    _, xq, xs = rms_norm_quant(x, r, w, 1e-5, zero=t)
    assert not t.any()
    weights = [quantize_weight_ref((torch.randn(n, k, generator=g) / k**0.5).bfloat16()) for _ in range(2)]
    for wq, ws in weights:
        wq, ws = wq.to(DEVICE), ws.to(DEVICE)
        y = fp8_block_gemm(xq, xs, wq, ws, None, torch.bfloat16, config=cfg, tickets=t)
        assert not t.any()
        y_fresh = fp8_block_gemm(xq, xs, wq, ws, None, torch.bfloat16, config=cfg)
        assert torch.equal(y, y_fresh)


def test_division_by_group_scale_is_ieee_division():
    """``_div_by_scale`` (a reciprocal per group, one fma correction per element) against IEEE
    division, bit for bit, on groups whose scales are the quantization's own (amax / 448 of values
    spanning 1e-6 .. 1e4, the 1e-4 floor) and on arbitrary positive scales, plus Inf and NaN scales."""
    g = torch.Generator().manual_seed(7)
    groups = 4096 if DEVICE == "cuda" else 256
    mag = torch.pow(10.0, torch.empty(groups, 1).uniform_(-6, 4, generator=g))
    v = torch.randn(groups, 128, generator=g) * mag
    s = torch.clamp(v.abs().amax(1), min=1e-4) / torch.full((groups,), 448.0)
    s[: groups // 4] = torch.pow(2.0, torch.empty(groups // 4).uniform_(-20, 20, generator=g))  # any scale
    v[: groups // 4] = (torch.rand(groups // 4, 128, generator=g) * 2 - 1) * 448 * s[: groups // 4, None]
    s[-1], s[-2] = float("inf"), float("nan")
    v[-1, :2] = torch.tensor([float("inf"), -float("inf")])
    v[5, :4] = torch.tensor([0.0, -0.0, 1e-45, -1e-45])  # signed zeros and subnormals keep their sign
    out = torch.empty_like(v, device=DEVICE)
    _divide_kernel[(groups // 64,)](v.to(DEVICE), s.to(DEVICE), out, G=64)
    want = v / s[:, None]
    assert torch.equal(out.cpu().view(torch.int32)[~want.isnan()], want.view(torch.int32)[~want.isnan()])
    assert torch.equal(out.cpu().isnan(), want.isnan())
