"""The torch.ops.fp8inductor custom ops: opcheck, public API, bad input.

Runs on the CPU (reference implementations) and, where a GPU is present, on CUDA (Triton kernels):
the CUDA results must be bit-exact (quant) or within bf16 rounding (linear) of the CPU reference.
"""

from __future__ import annotations

import pytest
import torch

import fp8inductor
from fp8inductor import reference as ref
from fp8inductor.testing import assert_fp8_equal, gemm_abs_sum_max, gemm_tolerance

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _inputs(device, m=5, n=200, k=328, dtype=torch.bfloat16, bias=True):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(m, k, generator=g).to(device=device, dtype=dtype)
    w = (torch.randn(n, k, generator=g) / k**0.5).to(device=device, dtype=dtype)
    b = torch.randn(n, generator=g).to(device=device, dtype=dtype) if bias else None
    return x, w, b


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    x, w, b = _inputs(device)
    q, s = fp8inductor.quantize_weight(w)
    torch.library.opcheck(torch.ops.fp8inductor.quantize_activation.default, (x, 128, "float"))
    torch.library.opcheck(torch.ops.fp8inductor.quantize_weight.default, (w, 128, 128, "ue8m0"))
    # opcheck's schema test compares inputs before/after with torch.allclose, which has no float8
    # kernel ("mul_cpu_reduced_float not implemented for Float8_e4m3fn"), so block_linear (fp8
    # inputs) runs the other three tests, and its no-mutation guarantee is checked byte for byte.
    no_schema = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    op = torch.ops.fp8inductor.block_linear.default
    torch.library.opcheck(op, (x, q, s, b, 128, "float"), test_utils=no_schema)
    torch.library.opcheck(op, (x.reshape(1, 5, -1), q, s, None, 128, "ue8m0"), test_utils=no_schema)
    before = [t.clone() for t in (x, q, s, b)]
    op(x, q, s, b, 128, "float")
    for t0, t1 in zip(before, (x, q, s, b)):
        assert torch.equal(t0.view(torch.uint8), t1.view(torch.uint8)), "block_linear must not mutate its inputs"


@pytest.mark.parametrize("device", DEVICES)
def test_block_gemm_op_matches_reference(device):
    """The lowering's extern GEMM choice: same result as the reference GEMM, N-D activations, fp32 out."""
    x, w, b = _inputs(device)
    q, s = fp8inductor.quantize_weight(w)
    x3 = x.reshape(1, 5, -1)
    xq, xs = fp8inductor.quantize_activation(x3)
    op = torch.ops.fp8inductor.block_gemm.default
    no_schema = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    torch.library.opcheck(op, (xq, xs, q, s, torch.float32), test_utils=no_schema)
    y = op(xq, xs, q, s, torch.float32)
    assert y.shape == (1, 5, w.shape[0]) and y.dtype == torch.float32
    want = ref.block_gemm_ref(xq.reshape(5, -1), xs.reshape(5, -1), q, s, None, torch.float32).reshape(1, 5, -1)
    tol = gemm_tolerance(torch.float32, gemm_abs_sum_max(xq.reshape(5, -1), xs.reshape(5, -1), q, s), True)
    torch.testing.assert_close(y, want, **tol)
    with pytest.raises(ValueError, match=r"xs must be float32 \(1, 5, 3\), got torch.float32 \(1, 5, 2\)"):
        op(xq, xs[..., :-1], q, s, torch.float32)
    with pytest.raises(ValueError, match=r"xs must be float32 \(1, 5, 3\), got torch.float64 \(1, 5, 3\)"):
        op(xq, xs.double(), q, s, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_public_api_matches_reference(device, dtype):
    x, w, b = _inputs(device, dtype=dtype)
    q, s = fp8inductor.quantize_weight(w)
    rq, rs = ref.quantize_weight_ref(w.cpu())
    assert_fp8_equal(q.cpu(), rq)
    assert torch.equal(s.cpu(), rs)
    xq, xs = fp8inductor.quantize_activation(x.reshape(5, 1, -1))
    assert xq.shape == (5, 1, 328) and xs.shape == (5, 1, 3)
    y = fp8inductor.block_fp8_linear(x.reshape(1, 5, -1), q, s, b)
    assert y.shape == (1, 5, 200) and y.dtype == dtype
    y_ref = ref.block_fp8_linear_ref(x.cpu(), rq, rs, b.cpu())
    # Same quantized inputs, fp32 accumulation in a different order: equal up to the output's rounding.
    tol = {torch.float32: 1e-5, torch.float16: 2**-10, torch.bfloat16: 2**-7}[dtype]
    torch.testing.assert_close(y.reshape(5, 200).cpu().float(), y_ref.float(), rtol=tol, atol=tol)
    # Independent of the reference GEMM (on the CPU the op is it): the dequantized operands' float64
    # product plus the bias, up to the output rounding (a dropped bias, an unapplied scale or a
    # transposed weight is far outside).
    xd = (xq.double() * xs.double().repeat_interleave(128, -1)[..., :328]).reshape(5, 328).cpu()
    wd = fp8inductor.dequantize_weight(q, s, dtype=torch.float32).double().cpu()
    torch.testing.assert_close(y.reshape(5, 200).cpu().double(), xd @ wd.T + b.cpu().double(), rtol=tol, atol=4 * tol)
    deq = fp8inductor.dequantize_weight(q, s, dtype=torch.float32)
    assert deq.shape == w.shape and ((deq - w.float()).abs() <= 2**-4 * w.float().abs() + 2**-10 * s.max()).all()


@pytest.mark.parametrize("device", DEVICES)
def test_empty_and_noncontiguous_inputs(device):
    x, w, b = _inputs(device, m=6)
    q, s = fp8inductor.quantize_weight(w.t().contiguous().t())  # column-major weight
    y0 = fp8inductor.block_fp8_linear(x[:0], q, s, b)
    assert y0.shape == (0, 200)
    xt = x.t().contiguous().t()  # column-major activation
    torch.testing.assert_close(
        fp8inductor.block_fp8_linear(xt, q, s, b), fp8inductor.block_fp8_linear(x, q, s, b), rtol=0, atol=0
    )
    xs = x[::2]  # row-strided
    torch.testing.assert_close(
        fp8inductor.block_fp8_linear(xs, q, s, b),
        fp8inductor.block_fp8_linear(xs.contiguous(), q, s, b),
        rtol=0,
        atol=0,
    )


@pytest.mark.parametrize("device", DEVICES)
def test_k_zero_gives_the_bias(device):
    """An empty reduction: y = bias (zeros without), at every leading shape; M = 0 too."""
    _, w, b = _inputs(device)
    q, s = fp8inductor.quantize_weight(w[:, :0])
    assert q.shape == (200, 0) and s.shape == (2, 0)
    x = torch.randn(2, 3, 0, device=device, dtype=b.dtype)
    torch.testing.assert_close(fp8inductor.block_fp8_linear(x, q, s, b), b.expand(2, 3, 200), rtol=0, atol=0)
    assert fp8inductor.block_fp8_linear(x, q, s).abs().max() == 0
    assert fp8inductor.block_fp8_linear(x[:0], q, s, b).shape == (0, 3, 200)


def test_bad_block_sizes_and_float64_are_clear_errors():
    x, w, _ = _inputs("cpu")
    q, s = fp8inductor.quantize_weight(w)
    for block in ((0, 128), (128, -1), (128.0, 128)):
        with pytest.raises(ValueError, match=r"weight block\[\d\] must be a positive int"):
            fp8inductor.quantize_weight(w, block=block)
        with pytest.raises(ValueError, match=r"weight block\[\d\] must be a positive int"):
            fp8inductor.dequantize_weight(q, s, block=block)
    for group in (0, -5, True):
        with pytest.raises(ValueError, match="activation group must be a positive int"):
            fp8inductor.quantize_activation(x, group=group)
    with pytest.raises(TypeError, match="must be float32, float16 or bfloat16, got torch.float64"):
        fp8inductor.quantize_weight(w.double())
    with pytest.raises(TypeError, match="must be float32, float16 or bfloat16, got torch.float64"):
        fp8inductor.quantize_activation(x.double())


def test_bad_inputs_are_clear_errors():
    x, w, b = _inputs("cpu")
    q, s = fp8inductor.quantize_weight(w)
    with pytest.raises(ValueError, match="x has K=100"):
        fp8inductor.block_fp8_linear(x[:, :100], q, s, b)
    with pytest.raises(ValueError, match=r"weight_scale_inv has shape \(2, 2\), expected \(2, 3\)"):
        fp8inductor.block_fp8_linear(x, q, s[:, :2], b)
    with pytest.raises(ValueError, match=r"bias must be \[N\]"):
        fp8inductor.block_fp8_linear(x, q, s, b[:10])
    with pytest.raises(TypeError, match="x must be float32, float16 or bfloat16"):
        fp8inductor.block_fp8_linear(x.to(torch.int32), q, s, b)
    with pytest.raises(TypeError, match="FP8 weight must be"):
        fp8inductor.block_fp8_linear(x, w, s, b)


def test_fake_impls_trace_symbolic_m():
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    x, w, b = _inputs("cpu")
    q, s = fp8inductor.quantize_weight(w)
    with FakeTensorMode(shape_env=ShapeEnv()) as mode:
        fx_ = mode.from_tensor(x, symbolic_context=None)
        y = torch.ops.fp8inductor.block_linear(fx_, mode.from_tensor(q), mode.from_tensor(s), mode.from_tensor(b))
        assert y.shape == (5, 200) and y.dtype == torch.bfloat16


def _meta_like_weight(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A [128, 256] FP8 weight and its scales on x's device (meta tensors for the fake implementation)."""
    q, s = fp8inductor.quantize_weight(torch.randn(128, 256))
    return q.to(x.device), s.to(x.device)


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda x: torch.ops.fp8inductor.quantize_activation(x, 0), ValueError, "must be a positive int"),
        (lambda x: torch.ops.fp8inductor.quantize_activation(x, -5), ValueError, "must be a positive int"),
        (lambda x: torch.ops.fp8inductor.quantize_activation(x, 128, "e5m2"), ValueError, "scale_fmt must be one of"),
        (lambda x: torch.ops.fp8inductor.quantize_weight(x, 0, 128), ValueError, "must be a positive int"),
        (lambda x: torch.ops.fp8inductor.quantize_weight(x, 128, 128, "x"), ValueError, "scale_fmt must be one of"),
        (lambda x: torch.ops.fp8inductor.block_linear(x, *_meta_like_weight(x), None, 128, "bogus"), ValueError,
         "scale_fmt must be one of"),  # fmt: skip
        # empty inputs too: the format is checked before the early return (it was accepted there)
        (lambda x: torch.ops.fp8inductor.quantize_activation(x[:0], 128, "bogus"), ValueError, "scale_fmt must be"),
        (lambda x: torch.ops.fp8inductor.quantize_activation(x[:, :0], 128, "bogus"), ValueError, "scale_fmt must be"),
        (lambda x: torch.ops.fp8inductor.block_linear(x[:0], *_meta_like_weight(x), None, 128, "bogus"), ValueError,
         "scale_fmt must be one of"),  # fmt: skip
    ],
)
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_bad_sizes_and_formats_are_clear_errors_in_every_impl(call, error, match, device):
    """The fake (meta) implementations check what the CPU one checks: a traced graph fails with the
    same clear error, not a ZeroDivisionError or a negative-size tensor."""
    with pytest.raises(error, match=match):
        call(torch.randn(4, 256, device=device))


def test_block_linear_group_size_and_dequantize_dtype_are_checked():
    x = torch.randn(2, 256)
    q, s = fp8inductor.quantize_weight(torch.randn(256, 256))
    with pytest.raises(ValueError, match="group_size must be a positive int"):
        torch.ops.fp8inductor.block_linear(x, q, s, None, 0)
    for dtype in (torch.int8, "bfloat16", torch.float8_e4m3fn):
        with pytest.raises(TypeError, match="dtype must be a float torch.dtype"):
            fp8inductor.dequantize_weight(q, s, dtype=dtype)


def test_gemm_ops_refuse_tensors_on_two_devices():
    x = torch.randn(2, 256)
    xq, xs = fp8inductor.quantize_activation(x)
    q, s = fp8inductor.quantize_weight(torch.randn(256, 256))
    with pytest.raises(ValueError, match="block_gemm: all tensors must be on one device"):
        torch.ops.fp8inductor.block_gemm(xq.to("meta"), xs, q, s, torch.bfloat16)
    with pytest.raises(ValueError, match="quantized_block_linear: all tensors must be on one device"):
        torch.ops.fp8inductor.quantized_block_linear(xq, xs, q, s, torch.zeros(256, device="meta"), torch.bfloat16)


def test_block_linear_gradients_are_straight_through():
    """dx = dy @ dequant(W), dbias = sum of dy; the FP8 weight gets none. A model with FP8 modules and
    trainable parameters elsewhere (a norm) compiled with gradients enabled used to fail to compile
    (no autograd formula: AOTAutograd traces the backward); it now matches eager, forward and backward."""
    import warnings

    from fp8inductor.modules import FP8BlockLinear

    torch.manual_seed(0)
    lin = FP8BlockLinear.from_weight(torch.randn(384, 256), bias=torch.randn(384))
    lin.bias.requires_grad_(True)
    x = torch.randn(2, 5, 256, requires_grad=True)
    y = lin(x)
    dy = torch.randn_like(y)
    y.backward(dy)
    w = fp8inductor.dequantize_weight(lin.weight, lin.weight_scale_inv, dtype=torch.float32)
    torch.testing.assert_close(x.grad, dy @ w)
    torch.testing.assert_close(lin.bias.grad, dy.sum((0, 1)))

    # the raw op with group_size 64: its weight blocks are (128, 64) in backward too (backward once
    # dequantized with (128, 128) blocks and refused the [1, 4] scales the forward had taken)
    q, s = fp8inductor.quantize_weight(torch.randn(128, 256), block=(128, 64))  # s: [1, 4]
    x64 = torch.randn(2, 256, requires_grad=True)
    y64 = torch.ops.fp8inductor.block_linear(x64, q, s, None, 64, "float")
    dy64 = torch.randn_like(y64)
    y64.backward(dy64)
    torch.testing.assert_close(
        x64.grad, dy64 @ fp8inductor.dequantize_weight(q, s, block=(128, 64), dtype=torch.float32)
    )

    model = torch.nn.Sequential(torch.nn.LayerNorm(256), FP8BlockLinear.from_weight(torch.randn(384, 256)))
    xs = torch.randn(4, 256)
    model(xs).square().sum().backward()
    want = [p.grad.clone() for p in model[0].parameters()]
    model.zero_grad()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = torch.compile(model, backend="fp8block")(xs)
    torch.testing.assert_close(out, model(xs))
    out.square().sum().backward()
    for p, g in zip(model[0].parameters(), want):  # Inductor's fused LayerNorm backward sums in another order
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-4)


def test_cuda_kernels_run_on_their_tensors_device(monkeypatch):
    """Triton launches on the current CUDA device; a Python CUDA kernel gets no device guard from the
    dispatcher. A layer on cuda:1 with cuda:0 current (device_map="auto") launched on the wrong GPU.
    The ops' CUDA kernels now switch to their first tensor's device when it is not current (checked
    here with the device calls recorded; ``test_ops_on_a_second_gpu`` runs the ops on two GPUs where present)."""
    from fp8inductor.ops import _on_its_device

    calls = []

    class Switch:
        def __init__(self, index):
            self.index = index

        def __enter__(self):
            calls.append(("enter", self.index))

        def __exit__(self, *exc):
            calls.append(("exit", self.index))

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", Switch)
    kernel = _on_its_device(lambda t, *rest, **kw: calls.append(("run", t.device.index, rest, kw)) or "y")
    assert kernel(torch.empty(0, device="meta"), 1, a=2) == "y"  # no device index: no guard
    assert calls == [("run", None, (1,), {"a": 2})]
    calls.clear()

    class OnDevice:  # a stand-in for a CUDA tensor (none on this machine): only .device is read
        def __init__(self, index):
            self.device = torch.device("cuda", index)

    assert kernel(OnDevice(0), 1) == "y"  # already current: no context manager
    assert calls == [("run", 0, (1,), {})]
    calls.clear()
    assert kernel(OnDevice(1), 1, a=2) == "y"
    assert calls == [("enter", 1), ("run", 1, (1,), {"a": 2}), ("exit", 1)]


def test_tma_workspace_allocator_is_set_in_every_thread():
    """Triton keeps its allocator per thread (a ContextVar). It was set once per process: a TMA GEMM in
    another thread (transformers' streaming generate) found none and raised. Every TMA launch sets it."""
    import threading

    from triton.runtime import _allocation

    from fp8inductor.kernels.block_gemm import _ensure_tma_allocator, _tma_workspace

    _ensure_tma_allocator()
    seen = []

    def worker():
        seen.append(_allocation._allocator.get() is _tma_workspace)  # a new thread: Triton's NullAllocator
        _ensure_tma_allocator()
        seen.append(_allocation._allocator.get() is _tma_workspace)
        seen.append(tuple(_allocation._allocator.get()(512, 128, None).shape))

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == [False, True, (512,)]


def test_k_strided_operands_whose_offsets_pass_int32_are_made_contiguous():
    """The GEMM kernels step along K in int32 (rows are int64): a K-strided operand of ~2**31 elements
    wrapped (a crash under the interpreter, wrong reads on a GPU). Such operands are copied row-major;
    row-major ones and small strided ones are passed as they are."""
    from fp8inductor.kernels.block_gemm import _k_offsets_in_int32

    def codes(shape, strides):
        return torch.empty_strided(shape, strides, dtype=ref.FP8_DTYPE, device="meta")

    big = codes((16, 257), (1, 1 << 23))  # a transposed view: K offsets up to 384 * 2**23 > 2**31
    assert _k_offsets_in_int32(big).stride() == (257, 1)
    small = codes((16, 257), (1, 1 << 22))  # 384 * 2**22 < 2**31: fine in int32
    assert _k_offsets_in_int32(small) is small
    rows = codes((1 << 20, 4096), (4096, 1))  # 2**32 elements row-major: rows are int64, K stride 1
    assert _k_offsets_in_int32(rows) is rows


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
@pytest.mark.parametrize("m", [1, 300])  # split-K and a tile/TMA/cuBLAS GEMM
def test_ops_on_a_second_gpu(m):
    """A linear on cuda:1 with cuda:0 current (device_map="auto") gives what it gives on cuda:1 current."""
    torch.manual_seed(0)
    x = torch.randn(m, 512, device="cuda:1", dtype=torch.bfloat16)
    q, s = fp8inductor.quantize_weight(torch.randn(384, 512, device="cuda:1"))
    bias = torch.randn(384, device="cuda:1", dtype=torch.bfloat16)
    with torch.cuda.device(1):
        want = torch.ops.fp8inductor.block_linear(x, q, s, bias, 128, "float")
    with torch.cuda.device(0):
        got = torch.ops.fp8inductor.block_linear(x, q, s, bias, 128, "float")
        q0, s0 = fp8inductor.quantize_weight(torch.randn(384, 512, device="cuda:1"))
    torch.cuda.synchronize(1)
    assert got.device == want.device and torch.equal(got, want)
    assert q0.device.index == 1 and s0.device.index == 1
