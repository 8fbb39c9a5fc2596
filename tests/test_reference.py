"""SPEC section 2 properties of the reference numerics (``fp8inductor.reference``), by hypothesis."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fp8inductor import reference as ref

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
settings.register_profile("ci", derandomize=True, deadline=None, max_examples=60)
settings.load_profile("ci")


def _tensor(shape, dtype, scale, seed, kind):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * scale
    if kind == "zeros":
        x.zero_()
    elif kind == "sparse":  # mostly zeros: all-zero groups next to non-zero ones
        x = x * (torch.rand(shape, generator=g) < 0.05)
    elif kind == "outliers":  # one huge value per row: the rest of its group goes subnormal
        x[..., 0] = scale * 1e3
    return x.to(dtype)


def _check_round_trip(x: torch.Tensor, q: torch.Tensor, s_expanded: torch.Tensor) -> None:
    """SPEC: |x - q*s| <= 2^-4 |x| + 2^-10 s elementwise (3 mantissa bits; second term: subnormals)."""
    xf = x.float()
    err = (xf - q.float() * s_expanded).abs()
    bound = 2.0**-4 * xf.abs() + 2.0**-10 * s_expanded
    worst = (err - bound).max().item() if err.numel() else 0.0
    assert worst <= 0, f"round-trip bound violated by {worst}"


shapes_2d = st.tuples(st.integers(1, 300), st.integers(1, 300))
kinds = st.sampled_from(["normal", "zeros", "sparse", "outliers"])
scales = st.sampled_from([1e-6, 1e-3, 1.0, 100.0, 3e4])


@given(
    shape=shapes_2d,
    dtype=st.sampled_from(DTYPES),
    scale=scales,
    seed=st.integers(0, 2**16),
    kind=kinds,
    fmt=st.sampled_from(ref.SCALE_FMTS),
)
def test_weight_quant_properties(shape, dtype, scale, seed, kind, fmt):
    w = _tensor(shape, dtype, scale, seed, kind)
    if not torch.isfinite(w).all():  # fp16 overflow of the largest scale: not finite input
        return
    q, s = ref.quantize_weight_ref(w, (128, 128), fmt)
    n, k = shape
    assert q.dtype == torch.float8_e4m3fn and q.shape == (n, k) and q.is_contiguous()
    assert s.dtype == torch.float32 and s.shape == (math.ceil(n / 128), math.ceil(k / 128))
    assert torch.isfinite(q.float()).all() and torch.isfinite(s).all(), "finite input must give finite output"
    assert (s >= ref.SCALE_EPS / 448 * (1 - 1e-6)).all(), "scales are bounded below by eps/448"
    if fmt == "ue8m0":
        m, _ = torch.frexp(s)
        assert (m == 0.5).all(), "ue8m0 scales are powers of two"
    s_full = s.repeat_interleave(128, 0)[:n].repeat_interleave(128, 1)[:, :k]
    _check_round_trip(w, q, s_full)
    assert (q.float().abs() <= 448).all()
    # The scale itself, per block: amax / 448 ("float", bit for bit), or the next power of two up
    # ("ue8m0"); a "float" block's largest code is +-448 (a scale twice too large kept the round trip
    # above within bounds but used half the e4m3 range).
    pad_n, pad_k = -n % 128, -k % 128
    blocks = torch.nn.functional.pad(w.float().abs(), (0, pad_k, 0, pad_n))
    amax = blocks.reshape(s.shape[0], 128, s.shape[1], 128).amax((1, 3)).clamp(min=ref.SCALE_EPS)
    if fmt == "float":
        assert torch.equal(s, amax / 448)
        qmax = torch.nn.functional.pad(q.float().abs(), (0, pad_k, 0, pad_n))
        qmax = qmax.reshape(s.shape[0], 128, s.shape[1], 128).amax((1, 3))
        assert torch.equal(qmax[amax > ref.SCALE_EPS], torch.full_like(qmax[amax > ref.SCALE_EPS], 448))
    else:
        assert (s >= amax / 448).all() and (s / 2 < amax / 448).all()
    deq = ref.dequantize_weight_ref(q, s, (128, 128), torch.float32)
    torch.testing.assert_close(deq, q.float() * s_full, rtol=0, atol=0)


@given(
    lead=st.lists(st.integers(0, 7), min_size=0, max_size=2),
    k=st.integers(1, 400),
    dtype=st.sampled_from(DTYPES),
    scale=scales,
    seed=st.integers(0, 2**16),
    kind=kinds,
    fmt=st.sampled_from(ref.SCALE_FMTS),
)
def test_activation_quant_properties(lead, k, dtype, scale, seed, kind, fmt):
    x = _tensor((*lead, k), dtype, scale, seed, kind)
    if not torch.isfinite(x).all():
        return
    q, s = ref.quantize_activation_ref(x, 128, fmt)
    assert q.shape == x.shape and q.dtype == torch.float8_e4m3fn
    assert s.shape == (*lead, math.ceil(k / 128)) and s.dtype == torch.float32
    assert torch.isfinite(q.float()).all() and torch.isfinite(s).all()
    s_full = s.repeat_interleave(128, -1)[..., :k]
    _check_round_trip(x, q, s_full)


def test_activation_groups_are_independent_and_exact_on_grid():
    # Values exactly on the e4m3 grid times a power-of-two scale round-trip exactly.
    x = torch.zeros(2, 256)
    x[0, :128] = torch.tensor([448.0, -448.0, 1.0, 0.5] * 32) / 448 * 0.25
    x[1, 128:] = 3.0
    q, s = ref.quantize_activation_ref(x)
    assert s[0, 1].item() == pytest.approx(1e-4 / 448) and s[1, 0].item() == pytest.approx(1e-4 / 448)
    torch.testing.assert_close(ref.dequantize_activation_ref(q, s, dtype=torch.float32), x, rtol=2**-4, atol=0)


def test_rne_cast_and_clamp():
    # amax 448 -> scale 1: q is the RNE e4m3 cast of x. 68 is halfway 64|72 -> even mantissa 64;
    # 124.33 -> 128 (carry into the exponent); 449 can't happen (amax sets the scale) but -448 stays.
    x = torch.tensor([[448.0, 68.0, 124.33, -448.0, 0.0, -0.0] + [0.0] * 122])
    q, s = ref.quantize_activation_ref(x)
    assert s.item() == 1.0
    assert q.float()[0, :6].tolist() == [448.0, 64.0, 128.0, -448.0, 0.0, 0.0]


def test_nan_and_inf_stay_in_their_rows():
    x = torch.randn(4, 256)
    x[1, 5] = float("nan")
    x[2, 200] = float("inf")
    q, s = ref.quantize_activation_ref(x)
    assert torch.isnan(s[1, 0]) and torch.isfinite(s[1, 1]), "NaN poisons only its own group's scale"
    assert torch.isinf(s[2, 1]) and torch.isfinite(s[2, 0])
    assert torch.isfinite(s[[0, 3]]).all() and torch.isfinite(q[[0, 3]].float()).all()
    wq, ws = ref.quantize_weight_ref(torch.randn(64, 256) / 16)
    y = ref.block_gemm_ref(q.reshape(4, 256), s, wq, ws, out_dtype=torch.float32)
    assert torch.isnan(y[1]).all() and torch.isnan(y[2]).all()
    assert torch.isfinite(y[[0, 3]]).all(), "NaN/Inf reach only the rows that contain them"


def test_ue8m0_rounds_up_to_power_of_two():
    s = torch.tensor([1.0, 0.75, 2**-20, 3.0 * 2**-30, 1e-4 / 448, float("inf"), float("nan")])
    r = ref.round_scale_ue8m0(s)
    assert r[:5].tolist() == [1.0, 1.0, 2**-20, 2**-28, 2.0 ** math.ceil(math.log2(1e-4 / 448))]
    assert math.isinf(r[5]) and math.isnan(r[6])


def _top_scale_values() -> torch.Tensor:
    """fp32 magnitudes whose ue8m0 scale is 2**120: from just above 448 * 2**119 to fp32's largest,
    with 248 * 2**120 (the RNE tie between the codes 240 and 256) and its neighbours."""
    top = 2.0**120
    fp32_max = torch.finfo(torch.float32).max
    return torch.tensor([449 * 2.0**119, 3.0e38, 244 * top, 247.9 * top, 248 * top, 252 * top, 3.39e38, fp32_max])


@pytest.mark.parametrize("kind", ["activation", "weight"])
def test_ue8m0_top_scale_saturates_at_240(kind):
    """ue8m0 gives these groups the scale 2**120; codes of 256 and above would dequantize to Inf
    (256 * 2**120 = 2**128), so they saturate at 240, and the round trip stays finite and in the
    SPEC's bound. Found 2026-12-06: before, 248 * 2**120 and up dequantized to Inf."""
    values = _top_scale_values()
    x = torch.zeros(len(values), 256)
    x[:, 0] = values
    x[:, 1] = -values  # the negative side too
    x[:, 2] = values / 3  # an ordinary code in the same group
    x[:, 128:] = torch.randn(len(values), 128)  # a normal group beside it: untouched
    if kind == "activation":
        q, s = ref.quantize_activation_ref(x, 128, "ue8m0")
        deq = ref.dequantize_activation_ref(q, s, 128)
        s_top = s[:, 0]
    else:
        x = x.repeat_interleave(128, dim=0)  # each value the amax of its own 128 x 128 block
        q, s = ref.quantize_weight_ref(x, (128, 128), "ue8m0")
        deq = ref.dequantize_weight_ref(q, s, (128, 128))
        s_top = s[:, 0]
    assert (s_top == 2.0**120).all()
    codes = q[:, :128].float()
    assert codes.abs().max() == 240 and (codes[:, 0] > 0).all() and (codes[:, 1] < 0).all()
    assert torch.isfinite(deq).all(), "a finite input dequantized to Inf"
    err = (x - deq).abs()
    scale_per_elem = s.repeat_interleave(128, dim=-1)[:, :256]
    if kind == "weight":
        scale_per_elem = scale_per_elem.repeat_interleave(128, dim=0)
    assert (err <= 2**-4 * x.abs() + 2**-10 * scale_per_elem).all(), "SPEC section 2 round-trip bound"
    rows = torch.arange(x.shape[0]) // (128 if kind == "weight" else 1)  # the value each row holds
    below_tie = values[rows] < 248 * 2.0**120
    unsaturated = torch.clamp(values[rows][below_tie] / 2.0**120, max=448).to(ref.FP8_DTYPE).float()
    assert (codes[below_tie, 0] == unsaturated).all(), "below the tie the codes are the plain RNE ones"
    # The "float" format keeps 448 (its scale is at most 3.4e38 / 448 < 2**120).
    qf, sf = ref.quantize_activation_ref(x[:, :128].contiguous(), 128, "float")
    assert qf.float().abs().max() == 448 and (sf < 2.0**120).all()


@given(
    m=st.integers(1, 40), n=st.integers(1, 300), k=st.integers(1, 300), seed=st.integers(0, 2**16), bias=st.booleans()
)
@settings(max_examples=25)
def test_block_gemm_ref_matches_dequantized_float64(m, n, k, seed, bias):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    w = torch.randn(n, k, generator=g) / math.sqrt(k)
    b = torch.randn(n, generator=g) if bias else None
    xq, xs = ref.quantize_activation_ref(x)
    wq, ws = ref.quantize_weight_ref(w)
    y = ref.block_gemm_ref(xq, xs, wq, ws, b, out_dtype=torch.float32)
    xd = ref.dequantize_activation_ref(xq, xs, dtype=torch.float64)
    wd = ref.dequantize_weight_ref(wq, ws, dtype=torch.float64)
    exact = xd @ wd.t() + (b.double() if bias else 0)
    # fp32 accumulation of products of exact fp8 values: relative error ~ K * 2^-24.
    torch.testing.assert_close(y.double(), exact, rtol=1e-5, atol=1e-5 * exact.abs().max().item())


def test_weight_quant_accepts_strides_and_rejects_bad_input():
    w = torch.randn(300, 200)
    q1, s1 = ref.quantize_weight_ref(w.t().contiguous().t())
    q2, s2 = ref.quantize_weight_ref(w)
    assert torch.equal(q1.view(torch.uint8), q2.view(torch.uint8)) and torch.equal(s1, s2)
    with pytest.raises(ValueError, match="2-D"):
        ref.quantize_weight_ref(torch.randn(2, 3, 4))
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        ref.quantize_weight_ref(torch.ones(4, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="scale_fmt"):
        ref.quantize_activation_ref(torch.randn(4, 4), scale_fmt="e5m2")


def test_check_weight_scale_names_the_tensor():
    q = torch.zeros(200, 300, dtype=torch.float8_e4m3fn)
    with pytest.raises(ValueError, match=r"model\.x: weight_scale_inv has shape \(1, 3\), expected \(2, 3\)"):
        ref.check_weight_scale(q, torch.ones(1, 3), name="model.x")
    with pytest.raises(TypeError, match="model.x: weight_scale_inv must be float32"):
        ref.check_weight_scale(q, torch.ones(2, 3, dtype=torch.bfloat16), name="model.x")
    with pytest.raises(TypeError, match="FP8 weight must be"):
        ref.check_weight_scale(q.float(), torch.ones(2, 3), name="model.x")
