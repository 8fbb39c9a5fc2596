"""``kernels/gqa_decode``: split-KV decode attention over grouped KV heads vs its fp32 reference.

On the CPU the Triton interpreter runs the kernels. Tolerance: the kernel rounds the probabilities to
the value dtype before ``p . v`` (as flash attention does) and returns q's dtype, so the output is
within a few roundings of that dtype: 2**-6 relative (bf16, 8 bits) / 2**-8 (fp16) of the fp32
reference's norm.
"""

from __future__ import annotations

import pytest
import torch

from fp8inductor.kernels.gqa_decode import gqa_decode_attention
from fp8inductor.reference import gqa_decode_attention_ref
from fp8inductor.testing import rel_err

TOL = {torch.bfloat16: 2**-6, torch.float16: 2**-8}


def _device():
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _inputs(b, h_q, h_kv, s, d, dtype, mask_kind, seed=0, cache_len=None):
    dev = _device()
    g = torch.Generator().manual_seed(seed)
    cache_len = cache_len or s
    q = torch.randn(b, 1, h_q, d, generator=g).to(dev, dtype).transpose(1, 2)  # [B, H_q, 1, D], strided
    k = torch.randn(b, h_kv, cache_len, d, generator=g).to(dev, dtype)[:, :, :s]  # a view of a longer cache
    v = torch.randn(b, h_kv, cache_len, d, generator=g).to(dev, dtype)[:, :, :s]
    mask = None
    if mask_kind is not None:
        keep = torch.rand(b, 1, 1, s, generator=g) > 0.3
        keep[..., 0] = True
        mask = keep if mask_kind == "bool" else torch.zeros(b, 1, 1, s).masked_fill(~keep, float("-inf"))
        mask = mask.to(dev)
    return q, k, v, mask


@pytest.mark.parametrize(
    ("b", "h_q", "h_kv", "s", "d"),
    [(1, 8, 2, 300, 64), (3, 4, 4, 37, 32), (2, 32, 8, 130, 128), (1, 16, 1, 1, 64), (2, 8, 2, 65, 64)],
)
@pytest.mark.parametrize("mask_kind", [None, "bool", "additive"])
def test_matches_reference(b, h_q, h_kv, s, d, mask_kind):
    q, k, v, mask = _inputs(b, h_q, h_kv, s, d, torch.bfloat16, mask_kind, seed=b * 100 + s)
    got = gqa_decode_attention(q, k, v, mask)
    want = gqa_decode_attention_ref(q, k, v, mask)
    assert got.shape == (b, h_q, 1, d) and got.dtype == q.dtype
    assert rel_err(got.float(), want) < TOL[torch.bfloat16]


def test_nonfinite_input_stays_nan_in_the_rows_that_read_it():
    """A NaN key (or an inf query) makes the output of its head group NaN, in the kernel and the
    reference alike, as SDPA does; the other groups are untouched. A fully masked row stays zeros."""
    q, k, v, mask = _inputs(2, 8, 2, 100, 64, torch.bfloat16, "bool", seed=7)
    k[0, 1, 5, 3] = float("nan")  # batch 0, KV head 1: query heads 4-7
    q[1, 2, 0, 0] = float("inf")  # batch 1, query head 2
    mask[1, ..., :] = True
    for out in (gqa_decode_attention(q, k, v, mask).float(), gqa_decode_attention_ref(q, k, v, mask)):
        nan_heads = out.isnan().any(dim=-1)[..., 0]  # [B, H_q]
        want = torch.zeros(2, 8, dtype=torch.bool, device=out.device)
        want[0, 4:] = True
        want[1, 2] = True
        assert torch.equal(nan_heads, want), nan_heads
        finite = ~want[..., None, None].expand_as(out)
        sdpa = torch.nn.functional.scaled_dot_product_attention(
            q.float(), k.float().repeat_interleave(4, 1), v.float().repeat_interleave(4, 1), attn_mask=mask
        )
        assert rel_err(out[finite], sdpa[finite]) < TOL[torch.bfloat16]


@pytest.mark.parametrize("splits", [1, 3, 7])
def test_split_count_does_not_change_the_result(splits):
    """Any split of the sequence (a split with every key masked included) combines to the same output."""
    q, k, v, mask = _inputs(1, 8, 2, 200, 64, torch.float16, "bool", seed=splits)
    mask[..., 64:192] = False  # whole 64-key blocks masked
    got = gqa_decode_attention(q, k, v, mask, block_s=32, splits=splits)
    assert rel_err(got.float(), gqa_decode_attention_ref(q, k, v, mask)) < TOL[torch.float16]


def test_fully_masked_row_gives_zeros_and_mask_broadcasts():
    q, k, v, mask = _inputs(2, 8, 2, 40, 32, torch.bfloat16, "bool")
    mask[1] = False  # batch 1: every key masked
    got = gqa_decode_attention(q, k, v, mask)
    assert torch.equal(got[1].float(), torch.zeros_like(got[1].float()))
    assert rel_err(got[0].float(), gqa_decode_attention_ref(q, k, v, mask)[0]) < TOL[torch.bfloat16]
    one = mask[:1]  # [1, 1, 1, S]: one mask for every batch row
    assert rel_err(gqa_decode_attention(q, k, v, one).float(), gqa_decode_attention_ref(q, k, v, one)) < 2**-6


def test_finfo_min_additive_mask_keeps_sdpas_value_of_a_fully_masked_row():
    """An additive mask of ``finfo.min`` (what some models build) is finite: a row masked that way
    everywhere gets softmax over equally shifted scores, as SDPA computes, not zeros."""
    q, k, v, _ = _inputs(2, 8, 2, 90, 32, torch.bfloat16, None, seed=3)
    mask = torch.zeros(2, 1, 1, 90, dtype=torch.bfloat16, device=q.device)
    mask[0] = torch.finfo(torch.bfloat16).min  # batch 0: every key "masked" by a finite bias
    mask[1, ..., 50:] = torch.finfo(torch.bfloat16).min
    want = torch.nn.functional.scaled_dot_product_attention(
        q.float(), k.float().repeat_interleave(4, 1), v.float().repeat_interleave(4, 1), attn_mask=mask.float()
    )
    for got in (gqa_decode_attention(q, k, v, mask).float(), gqa_decode_attention_ref(q, k, v, mask)):
        assert got[0].abs().max() > 0.05  # the mean of V's rows, not zeros
        assert rel_err(got, want) < TOL[torch.bfloat16]


def test_bad_inputs_raise():
    q, k, v, _ = _inputs(1, 8, 2, 16, 32, torch.bfloat16, None)
    with pytest.raises(ValueError, match="multiple"):
        gqa_decode_attention(q[:, :7], k, v)
    with pytest.raises(ValueError, match=r"\[B, H_q, 1, D\]"):
        gqa_decode_attention(q.expand(1, 8, 2, 32), k, v)
    with pytest.raises(TypeError, match="bf16 or fp16"):
        gqa_decode_attention(q.float(), k.float(), v.float())
    with pytest.raises(ValueError, match="block_s"):
        gqa_decode_attention(q, k, v, block_s=24)
    with pytest.raises(ValueError, match="splits"):
        gqa_decode_attention(q, k, v, splits=0)
    with pytest.raises(ValueError, match="keys"):
        gqa_decode_attention(q, k, v, torch.ones(1, 1, 1, 17, dtype=torch.bool, device=q.device))
    with pytest.raises(TypeError, match="bool or floating"):
        gqa_decode_attention(q, k, v, torch.ones(1, 1, 1, 16, dtype=torch.int64, device=q.device))
    with pytest.raises(ValueError, match="one device"):
        gqa_decode_attention(q, k, v, torch.ones(1, 1, 1, 16, dtype=torch.bool, device="meta"))
