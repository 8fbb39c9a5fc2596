"""Reference numerics: the executable form of SPEC section 2, and the CPU implementation.

Every other implementation (Triton kernels, the custom ops' CUDA paths) is tested against the
functions in this module: quantized bytes and scales bit-exact, GEMMs within bf16 rounding of
``block_gemm_ref`` on the same quantized inputs.

The scheme (DeepSeek-V3 fine-grained FP8, transformers ``FineGrainedFP8Config``):

* weights ``W [N, K]`` in blocks of ``128 x 128``; the last block row/column may be partial
  (padded with zeros for the amax, never read out of bounds);
* activations ``x [..., K]`` in groups of 128 consecutive elements of ``K`` per token;
* per block/group ``s = max(amax, 1e-4) / 448`` (fp32), ``q = rne_e4m3(clamp(v / s, -448, 448))``;
  with ``scale_fmt="ue8m0"`` the scale is then rounded *up* to a power of two, and where that gives
  ``s = 2**120`` the clamp is to +-240 (``q * s`` must stay finite: ``code_bound``);
* the scale is a *multiplier*: ``v ~= q * s`` (it is stored as ``weight_scale_inv`` in checkpoints);
* GEMM: ``y[m, n] = sum_kb s_x[m, kb] * s_w[n // 128, kb] * sum_{k in kb} q_x[m, k] q_w[n, k]``
  with fp32 accumulation, then ``+ bias[n]``, output in the activation's dtype.

Arithmetic details that the kernels must reproduce exactly:

* the amax and the division ``v / s`` are done in fp32 (inputs upcast exactly), the division is
  IEEE round-to-nearest (``tl.math.div_rn`` in Triton, not the approximate ``/``);
* ``s = amax_clamped / 448`` is also an IEEE fp32 division;
* the fp32 -> e4m3 cast is round-to-nearest-even, saturated by the clamp before it;
* NaN in a group gives a NaN scale and NaN codes for that group (so NaN reaches only the rows
  that contain it); Inf in a group gives an Inf scale, NaN for the Inf element, 0 elsewhere.
"""

from __future__ import annotations

import math

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_E4M3_MAX = 448.0  # largest finite float8_e4m3fn
E8M0_DTYPE = getattr(torch, "float8_e8m0fnu", None)  # how transformers 5 stores ue8m0 scales (None: older torch)


def widen_e8m0(scale: torch.Tensor) -> torch.Tensor:
    """float8_e8m0fnu scales (powers of two) as a new float32 tensor, exactly; any other tensor as it is."""
    return scale.float() if E8M0_DTYPE is not None and scale.dtype == E8M0_DTYPE else scale


SCALE_EPS = 1e-4  # lower bound on the amax, so all-zero groups get a finite, non-zero scale
SCALE_FMTS = ("float", "ue8m0")
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # high-precision dtypes the ops take


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _check_scale_fmt(scale_fmt: str) -> None:
    if scale_fmt not in SCALE_FMTS:
        raise ValueError(f"scale_fmt must be one of {SCALE_FMTS}, got {scale_fmt!r}")


def round_scale_ue8m0(s: torch.Tensor) -> torch.Tensor:
    """``2 ** ceil(log2(s))`` for positive normal fp32 ``s``, computed exactly.

    ``frexp`` writes ``s = m * 2**e`` with ``m`` in [0.5, 1): ``s`` is a power of two iff ``m == 0.5``.
    NaN and Inf pass through unchanged.
    """
    mantissa, exponent = torch.frexp(s)
    up = torch.ldexp(torch.ones_like(s), exponent)
    exact = torch.ldexp(torch.ones_like(s), exponent - 1)
    out = torch.where(mantissa == 0.5, exact, up)
    return torch.where(torch.isfinite(s), out, s)


def amax_to_scale(amax: torch.Tensor, scale_fmt: str = "float") -> torch.Tensor:
    """fp32 amax -> fp32 multiplier scale ``max(amax, 1e-4) / 448`` (ue8m0: rounded up to 2**k).

    NaN amax stays NaN (``torch.clamp`` propagates it), so NaN input never gets a finite scale.
    """
    _check_scale_fmt(scale_fmt)
    # Divide by a tensor, not the Python scalar: torch on CUDA turns `t / 448.0` into a multiply by
    # the rounded reciprocal (1 ulp off the IEEE quotient for some amax; seen on the H100).
    s = torch.clamp(amax.float(), min=SCALE_EPS) / torch.full_like(amax, FP8_E4M3_MAX, dtype=torch.float32)
    if scale_fmt == "ue8m0":
        s = round_scale_ue8m0(s)
    return s


# The one scale whose product with the largest codes overflows: ue8m0 rounds an amax of at least
# 448 * 2**119 up to s = 2**120, and 448 * 2**120 (indeed 256 * 2**120 = 2**128) is past fp32's maximum.
# Such a group's codes saturate at 240 = 1.875 * 2**7, the largest e4m3 value c with c * 2**120 finite.
# (A "float" scale is at most 3.4e38 / 448 < 2**120; a larger ue8m0 scale means an Inf amax.)
TOP_SCALE = 2.0**120
TOP_SCALE_CODE_MAX = 240.0


def code_bound(scale: torch.Tensor) -> torch.Tensor:
    """Per-group saturation bound of the codes: 448, or 240 where ``scale == 2**120`` (so that
    ``q * s`` stays finite; see TOP_SCALE). Same shape as ``scale``; NaN scales get 448."""
    return torch.where(scale == TOP_SCALE, TOP_SCALE_CODE_MAX, FP8_E4M3_MAX).to(torch.float32)


def _cast_e4m3(v: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    # clamp keeps finite values in range (e4m3fn has no Inf: 480+ would round to NaN); NaN stays NaN.
    # bound: code_bound(scale), broadcast against v.
    return torch.clamp(v, -bound, bound).to(FP8_DTYPE)


def _check_float(t: torch.Tensor, what: str) -> None:
    if t.dtype not in FLOAT_DTYPES:  # float64 too: the GPU path and the fake impls reject it
        raise TypeError(f"{what} must be float32, float16 or bfloat16, got {t.dtype}")


def check_one_device(what: str, *tensors: torch.Tensor | None) -> None:
    """A clear error when the given tensors (None skipped) are not all on one device."""
    devices = {t.device for t in tensors if t is not None}
    if len(devices) > 1:
        raise ValueError(f"{what}: all tensors must be on one device, got {sorted(map(str, devices))}")


def check_block_size(size, what: str) -> int:
    """A block or group size: a positive int (a bool, 0 or a negative would divide by zero or
    reshape to nonsense further in)."""
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ValueError(f"{what} must be a positive int, got {size!r}")
    return size


def check_weight_block(block) -> tuple[int, int]:
    """(block_n, block_k), each a positive int; else a ValueError (not a ZeroDivisionError further in)."""
    if not isinstance(block, (tuple, list)) or len(block) != 2:
        raise ValueError(f"weight block must be a pair (block_n, block_k), got {block!r}")
    return tuple(check_block_size(b, f"weight block[{i}]") for i, b in enumerate(block))


def quantize_weight_ref(
    w: torch.Tensor, block: tuple[int, int] = (128, 128), scale_fmt: str = "float"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise weight quantization.

    Args:
        w: [N, K] float32/float16/bfloat16, any strides.
        block: (block_n, block_k).
    Returns:
        q: [N, K] float8_e4m3fn, contiguous.
        scale_inv: [ceil(N / block_n), ceil(K / block_k)] float32, contiguous (a multiplier).
    """
    _check_float(w, "weight")
    if w.dim() != 2:
        raise ValueError(f"weight must be 2-D [N, K], got shape {tuple(w.shape)}")
    bn, bk = check_weight_block(block)
    n, k = w.shape
    nb, kb = ceil_div(n, bn), ceil_div(k, bk)
    wf = w.float()
    # Zero padding to whole blocks: zeros never raise the amax and are cut off afterwards.
    padded = wf.new_zeros(nb * bn, kb * bk)
    padded[:n, :k] = wf
    blocks = padded.view(nb, bn, kb, bk)
    amax = blocks.abs().amax(dim=(1, 3))  # [nb, kb]
    scale = amax_to_scale(amax, scale_fmt)
    bound = code_bound(scale)[:, None, :, None]
    q = _cast_e4m3(blocks / scale[:, None, :, None], bound).view(nb * bn, kb * bk)[:n, :k].contiguous()
    return q, scale.contiguous()


def quantize_activation_ref(
    x: torch.Tensor, group: int = 128, scale_fmt: str = "float"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token, per-group activation quantization.

    Args:
        x: [..., K] float32/float16/bfloat16, any strides.
    Returns:
        q: [..., K] float8_e4m3fn, contiguous.
        scale: [..., ceil(K / group)] float32, contiguous (a multiplier: x ~= q * scale).
    """
    _check_float(x, "activation")
    check_block_size(group, "activation group")
    _check_scale_fmt(scale_fmt)  # before the empty-input return: a bad format is an error at any size
    if x.dim() == 0:
        raise ValueError("activation must have at least one dimension")
    *lead, k = x.shape
    kb = ceil_div(k, group)
    if k == 0 or x.numel() == 0:
        return torch.empty(x.shape, dtype=FP8_DTYPE, device=x.device), x.new_empty((*lead, kb), dtype=torch.float32)
    xf = x.float().reshape(-1, k)
    padded = xf.new_zeros(xf.shape[0], kb * group)
    padded[:, :k] = xf
    groups = padded.view(-1, kb, group)
    amax = groups.abs().amax(dim=2)
    scale = amax_to_scale(amax, scale_fmt)  # [M, kb]
    q = _cast_e4m3(groups / scale[:, :, None], code_bound(scale)[:, :, None]).view(-1, kb * group)[:, :k]
    return q.reshape(*lead, k).contiguous(), scale.reshape(*lead, kb).contiguous()


def dequantize_weight_ref(
    q: torch.Tensor,
    scale_inv: torch.Tensor,
    block: tuple[int, int] = (128, 128),
    dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """Inverse of ``quantize_weight_ref``: ``q * scale_inv`` blockwise, in fp32, then cast to ``dtype``.

    Args:
        q: [N, K] float8_e4m3fn.
        scale_inv: [ceil(N / block_n), ceil(K / block_k)] float32 (multiplier), or float8_e8m0fnu
            (ue8m0 scales, widened exactly).
    Returns:
        [N, K] ``dtype``.
    """
    bn, bk = check_weight_block(block)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point or dtype.itemsize < 2:
        raise TypeError(f"dequantize_weight: dtype must be a float torch.dtype of 16 bits or more, got {dtype!r}")
    scale_inv = widen_e8m0(scale_inv)
    check_weight_scale(q, scale_inv, block, name="weight")
    n, k = q.shape
    s = scale_inv.float().repeat_interleave(bn, dim=0)[:n].repeat_interleave(bk, dim=1)[:, :k]
    return (q.float() * s).to(dtype)


def dequantize_activation_ref(
    q: torch.Tensor, scale: torch.Tensor, group: int = 128, dtype: torch.dtype = torch.bfloat16
) -> torch.Tensor:
    """Inverse of ``quantize_activation_ref``. q: [..., K] fp8; scale: [..., ceil(K / group)] fp32."""
    k = q.shape[-1]
    s = scale.float().repeat_interleave(group, dim=-1)[..., :k]
    return (q.float() * s).to(dtype)


def check_weight_scale(
    q: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int] = (128, 128), name: str = "weight"
) -> None:
    """Clear errors for a malformed (FP8 weight, block scale) pair; ``name`` says which tensor."""
    if q.dtype != FP8_DTYPE:
        raise TypeError(f"{name}: FP8 weight must be {FP8_DTYPE}, got {q.dtype}")
    if q.dim() != 2:
        raise ValueError(f"{name}: FP8 weight must be 2-D [N, K], got shape {tuple(q.shape)}")
    if scale_inv.dtype != torch.float32:
        raise TypeError(f"{name}: weight_scale_inv must be float32, got {scale_inv.dtype}")
    n, k = q.shape
    want = (ceil_div(n, block[0]), ceil_div(k, block[1]))
    if tuple(scale_inv.shape) != want:
        raise ValueError(
            f"{name}: weight_scale_inv has shape {tuple(scale_inv.shape)}, expected {want} "
            f"for a [{n}, {k}] weight in {block[0]}x{block[1]} blocks"
        )


def block_gemm_ref(
    xq: torch.Tensor,
    xs: torch.Tensor,
    wq: torch.Tensor,
    ws: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
    block: tuple[int, int] = (128, 128),
) -> torch.Tensor:
    """Block-scaled FP8 GEMM with fp32 accumulation (one scale product per 128-wide K block).

    Args:
        xq: [M, K] float8_e4m3fn activations.
        xs: [M, ceil(K / block_k)] float32 activation scales (multipliers).
        wq: [N, K] float8_e4m3fn weights.
        ws: [ceil(N / block_n), ceil(K / block_k)] float32 weight scales (multipliers).
        bias: [N] or None; added in fp32 after the scaled sum.
    Returns:
        [M, N] ``out_dtype``.
    """
    bn, bk = block
    m, k = xq.shape
    n = wq.shape[0]
    kb = ceil_div(k, bk)
    acc = torch.zeros(m, n, dtype=torch.float32, device=xq.device)
    ws_rows = ws.float().repeat_interleave(bn, dim=0)[:n]  # [N, kb]
    for b in range(kb):
        lo, hi = b * bk, min(k, (b + 1) * bk)
        # fp32 partial sum of one K block, then one scale product per (row, K block), as the kernels do.
        part = xq[:, lo:hi].float() @ wq[:, lo:hi].float().t()
        acc += part * (xs[:, b : b + 1].float() * ws_rows[None, :, b])
    if bias is not None:
        acc += bias.float()
    return acc.to(out_dtype)


def block_fp8_linear_ref(
    x: torch.Tensor,
    wq: torch.Tensor,
    ws: torch.Tensor,
    bias: torch.Tensor | None = None,
    group: int = 128,
    scale_fmt: str = "float",
) -> torch.Tensor:
    """Quantize ``x`` per group, block-scaled GEMM against (wq, ws), add bias; y in x.dtype.

    Args:
        x: [..., K] float32/float16/bfloat16.
        wq: [N, K] float8_e4m3fn; ws: [ceil(N/128), ceil(K/128)] float32.
        bias: [N] or None.
    Returns:
        [..., N] in x.dtype.
    """
    *lead, k = x.shape
    if wq.shape[1] != k:
        raise ValueError(f"x has K={k} but the weight is {tuple(wq.shape)} ([N, K])")
    xq, xs = quantize_activation_ref(x.reshape(math.prod(lead), k), group, scale_fmt)  # not -1: K may be 0
    y = block_gemm_ref(xq, xs, wq, ws, bias, out_dtype=x.dtype, block=(128, group))
    return y.reshape(*lead, wq.shape[0])


def scales_column_major(s: torch.Tensor) -> torch.Tensor:
    """s [..., G] (any layout) -> the same values laid out column-major over the flattened rows:
    [M, G] with strides (1, M) viewed as [..., G] (the layout cuBLAS blockwise reads)."""
    *lead, g = s.shape
    flat = s.reshape(-1, g)
    out = torch.empty((g, flat.shape[0]), dtype=s.dtype, device=s.device).t()
    out.copy_(flat)
    return out.view(*lead, g)


def rms_norm_quant_ref(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float,
    scale_fmt: str = "float",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Residual add +) RMSNorm as transformers' ``LlamaRMSNorm`` computes it, then the 1x128
    activation quantization of the normalized output.

    Per row of ``h = x + residual`` (added and rounded in x.dtype, as eager does), or ``h = x``:

        n = weight * (h.float() * rsqrt(mean(h.float() ** 2) + eps)).to(x.dtype)   # in x.dtype
        q, s = quantize_activation_ref(n, 128, scale_fmt)

    The same operations in the same order as the model's own modules, so on the same device the
    codes and scales are those of ``quantize_activation_ref`` on the model's normalized output.

    Args:
        x: [..., K] float32/float16/bfloat16, any strides.
        residual: [..., K] in x's dtype, or None.
        weight: [K] in x's dtype.
    Returns:
        h: [..., K] x.dtype, contiguous (``x + residual``); a [0]-shaped tensor without residual.
        q: [..., K] float8_e4m3fn, contiguous.
        s: [..., ceil(K/128)] float32, column-major over the flattened rows (``scales_column_major``).
    """
    check_rms_norm_args(x, residual, weight)
    h = x + residual if residual is not None else x
    hf = h.float()
    n = weight * (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    q, s = quantize_activation_ref(n, 128, scale_fmt)
    h_out = h.contiguous() if residual is not None else x.new_empty(0)
    return h_out, q, scales_column_major(s)


def check_rms_norm_args(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor) -> None:
    """Clear errors for ``rms_norm_quant``'s inputs (shared by the reference, the op and its fake)."""
    _check_float(x, "rms_norm_quant: x")
    if x.dim() < 1:
        raise ValueError("rms_norm_quant: x must have at least one dimension [..., K]")
    k = x.shape[-1]
    if weight.dtype != x.dtype or tuple(weight.shape) != (k,):
        raise ValueError(f"rms_norm_quant: weight must be [{k}] {x.dtype}, got {tuple(weight.shape)} {weight.dtype}")
    if residual is not None and (residual.dtype != x.dtype or residual.shape != x.shape):
        raise ValueError(
            f"rms_norm_quant: residual must be {tuple(x.shape)} {x.dtype}, got {tuple(residual.shape)} {residual.dtype}"
        )
    check_one_device("rms_norm_quant", x, residual, weight)


def gqa_decode_attention_ref(q, k, v, mask=None, scale=None) -> torch.Tensor:
    """The same attention in fp32, SDPA's math on each KV head's group of query heads (no ``repeat_kv``
    copy); [B, H_q, 1, D] fp32. A row with every key masked gives zeros (PyTorch's SDPA does; plain
    softmax would give NaN); a NaN or inf in q, k or v stays NaN in the rows that read it."""
    b, h_q, _, d = q.shape
    h_kv = k.shape[1]
    q_g = q.float().reshape(b, h_kv, h_q // h_kv, d)  # [B, H_kv, n_rep, D]: a group's query heads as rows
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    scores = (q_g @ k.float().transpose(-1, -2)) * scale  # [B, H_kv, n_rep, S]
    if mask is not None:  # [B or 1, 1, 1, S] broadcasts over the groups' rows
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
    every_key_masked = (scores == float("-inf")).all(dim=-1, keepdim=True)
    p = torch.softmax(scores, dim=-1).masked_fill(every_key_masked, 0.0)
    return (p @ v.float()).reshape(b, h_q, 1, d)
