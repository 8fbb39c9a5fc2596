"""The SiLU(gate) * up + quantization kernel and op vs ``reference.silu_mul_quant_ref``.

Runs natively on CUDA when a GPU is visible, otherwise under the Triton interpreter on CPU tensors.
The reference runs on CPU copies (the spec; see tests/test_kernels.py).

Tolerances, and why: the product y = gate / (exp(-gate) + 1) * up is three fp32 operations whose
last bit may differ between the devices (the GPU's libdevice ``exp`` and Triton's division, which
is the approximate ``div.full.f32`` with up to 2 ulp of error; numpy's ``exp`` under the
interpreter against torch's on the CPU), so y may differ by a few fp32 ulps: a group's amax and scale
by at most that (8 ulps: relative 2**-20), and a code by one e4m3 step (relative 2**-3) where y sits
next to a rounding boundary. The quantization of a given y is bit-exact (tests/test_kernels.py).
"""

from __future__ import annotations

import pytest
import torch

import fp8inductor  # noqa: F401  (registers torch.ops.fp8inductor)
from fp8inductor.kernels.silu_quant import silu_mul_quant
from fp8inductor.reference import SCALE_FMTS, FP8_DTYPE, silu_mul_quant_ref
from fp8inductor.testing import default_device

DEVICE = default_device()
DTYPES = (torch.bfloat16, torch.float16, torch.float32)
SCALE_RTOL = 2**-20

pytestmark = pytest.mark.filterwarnings("ignore:(invalid value|overflow|divide by zero) encountered:RuntimeWarning")


def _inputs(m: int, n: int, dtype: torch.dtype, seed: int, fused: bool = True):
    """gate, up [m, n]: the halves of one [m, 2n] tensor (a fused gate/up GEMM's output, row
    stride 2n) or two tensors."""
    g = torch.Generator().manual_seed(seed)
    gu = torch.cat([torch.randn(m, n, generator=g) * 3, torch.randn(m, n, generator=g)], dim=1)
    if m >= 2:
        gu[1] = 0.0  # an all-zero row: scale 1e-4 / 448, codes 0
    if m >= 3 and n >= 256:
        gu[2, 128:256] *= 1e-3  # a quiet group next to loud ones
    gu = gu.to(dtype).to(DEVICE)
    gate, up = gu[:, :n], gu[:, n:]
    return (gate, up) if fused else (gate.contiguous(), up.contiguous())


def _check(gate, up, scale_fmt="float", **tile):
    q, s = silu_mul_quant(gate, up, scale_fmt, **tile)
    q_ref, s_ref = silu_mul_quant_ref(gate.cpu(), up.cpu(), scale_fmt)
    assert q.shape == q_ref.shape and s.shape == s_ref.shape and q.dtype == FP8_DTYPE
    assert s.stride() == s_ref.stride()  # column-major over the rows, as the GEMM reads it
    if q.numel() == 0:
        return q, s
    torch.testing.assert_close(s.cpu(), s_ref, rtol=SCALE_RTOL, atol=0, equal_nan=True)
    n = gate.shape[-1]
    deq = q.cpu().float() * s.cpu().repeat_interleave(128, dim=-1)[..., :n]
    deq_ref = q_ref.float() * s_ref.repeat_interleave(128, dim=-1)[..., :n]
    torch.testing.assert_close(deq, deq_ref, rtol=2**-3 + 2 * SCALE_RTOL, atol=0, equal_nan=True)
    return q, s


@pytest.mark.parametrize("scale_fmt", SCALE_FMTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mn", [(1, 4096), (3, 384), (5, 200), (33, 1024), (70, 256)])
def test_matches_reference(mn, dtype, scale_fmt):
    m, n = mn
    _check(*_inputs(m, n, dtype, seed=m * 7 + n, fused=m % 2 == 1), scale_fmt=scale_fmt)


@pytest.mark.parametrize("block_m,num_warps", [(8, 4), (16, 8), (64, 8)])
def test_tiles_agree(block_m, num_warps):
    """Every tile of the lab's sweep computes the same bytes (the tile only partitions the work)."""
    gate, up = _inputs(45, 640, torch.bfloat16, seed=4)
    q, s = silu_mul_quant(gate, up)
    q2, s2 = _check(gate, up, block_m=block_m, num_warps=num_warps)
    assert torch.equal(q.view(torch.uint8), q2.view(torch.uint8)) and torch.equal(s, s2)


def test_leading_dims_and_layout():
    gate, up = _inputs(12, 384, torch.bfloat16, seed=1)
    q, s = _check(gate.reshape(3, 4, 384), up.reshape(3, 4, 384))
    assert q.shape == (3, 4, 384) and q.is_contiguous() and s.shape == (3, 4, 3)
    assert s.stride() == (4, 1, 12)  # [M, G] column-major, viewed [3, 4, G]
    _check(gate.t().contiguous().t(), up)  # column-major gate: copied to unit stride along N


def test_nan_and_inf_stay_in_their_group():
    gate, up = _inputs(4, 512, torch.float32, seed=3, fused=False)
    gate[1, 7] = float("nan")
    gate[2, 300] = float("inf")  # silu(inf) * up = +-inf: the group's scale is inf
    gate[3, 130] = float("-inf")  # silu(-inf) = -inf / inf = NaN, as torch's silu
    up[0, 400] = float("inf")
    q, s = _check(gate, up)
    assert s[1, 0].isnan() and q[1, :128].float().isnan().all() and not s[1, 1:].isnan().any()
    assert s[2, 2] == float("inf") and q[2, 300].float().isnan() and (q[2, 256:300].float() == 0).all()
    assert s[3, 1].isnan() and not s[3, [0, 2, 3]].isnan().any()
    assert s[0, 3] == float("inf") and not s[0, :3].isinf().any()


def test_empty_and_errors():
    z = torch.zeros(0, 256, dtype=torch.bfloat16, device=DEVICE)
    q, s = silu_mul_quant(z, z)
    assert q.shape == (0, 256) and s.shape == (0, 2)
    x = torch.randn(2, 256, device=DEVICE).bfloat16()
    with pytest.raises(ValueError, match="one dtype and shape"):
        silu_mul_quant(x, x[:, :128])
    with pytest.raises(ValueError, match="one dtype and shape"):
        silu_mul_quant(x, x.half())
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        silu_mul_quant(x.to(FP8_DTYPE), x.to(FP8_DTYPE))
    with pytest.raises(ValueError, match="scale_fmt"):
        silu_mul_quant(x, x, "e5m2")
    with pytest.raises(ValueError, match="scale_fmt"):
        silu_mul_quant_ref(x.cpu(), x.cpu(), "e5m2")


def test_reference_is_silu_times_up_in_fp32_then_the_activation_quantization():
    """The reference's product is torch's SiLU * up in fp32 to within an ulp (exp(-x) + 1 then a
    division, as Inductor's decomposition, against torch's sigmoid), then ``quantize_activation_ref``."""
    from fp8inductor.reference import quantize_activation_ref, scales_column_major

    g = torch.Generator().manual_seed(5)
    gate, up = (torch.randn(9, 384, generator=g) * 4).bfloat16(), torch.randn(9, 384, generator=g).bfloat16()
    y = torch.nn.functional.silu(gate.float()) * up.float()
    q, s = silu_mul_quant_ref(gate, up)
    q_want, s_want = quantize_activation_ref(y, 128, "float")
    torch.testing.assert_close(s, scales_column_major(s_want), rtol=2**-21, atol=0)
    deq = q.float() * s.repeat_interleave(128, dim=-1)
    torch.testing.assert_close(deq, q_want.float() * s_want.repeat_interleave(128, dim=-1), rtol=2**-3, atol=0)


def test_op_matches_kernel_and_fake():
    from torch._subclasses.fake_tensor import FakeTensorMode

    gate, up = _inputs(6, 384, torch.bfloat16, seed=6)
    q, s = torch.ops.fp8inductor.silu_mul_quant(gate, up, "float")
    q_k, s_k = silu_mul_quant(gate, up) if torch.device(DEVICE).type == "cuda" else silu_mul_quant_ref(gate, up)
    assert torch.equal(q.view(torch.uint8), q_k.view(torch.uint8)) and torch.equal(s, s_k)
    with FakeTensorMode() as mode:
        fq, fs = torch.ops.fp8inductor.silu_mul_quant(mode.from_tensor(gate), mode.from_tensor(up), "ue8m0")
    assert fq.shape == q.shape and fq.dtype == q.dtype and fq.stride() == q.stride()
    assert fs.shape == s.shape and fs.stride() == s.stride()
