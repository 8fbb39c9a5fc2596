"""``fp8inductor.trig_tables``: a sin/cos table read by several kernels is computed once, on the CPU.

Inductor's CPU code names every ``cos``/``sin`` it evaluates (``.cos()`` on a vector, ``std::cos``
on a scalar), so the generated code shows whether each reader evaluates the table again. Values:
the table rounded to the activation dtype once, as eager rounds it (Inductor inlining keeps it fp32).
"""

from __future__ import annotations

import math
import re

import pytest
import sympy
import torch
from torch import nn
from torch._dynamo.utils import counters
from torch._inductor.utils import run_and_get_code

import fp8inductor
from fp8inductor import trig_tables
from fp8inductor.testing import rel_err

pytestmark = pytest.mark.usefixtures("fresh_dynamo")
_TRIG_CALL = re.compile(r"\.(cos|sin)\(\)|std::(cos|sin)\(")


class Rope(nn.Module):
    """q, k [B, H, S, D] rotated by one cos/sin table [S, D] (transformers' Llama form)."""

    def __init__(self, dim: int = 64):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim)), persistent=False)

    @staticmethod
    def _rotate_half(x):
        x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
        return torch.cat((-x2, x1), dim=-1)

    def forward(self, q, k, positions):
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = (emb.cos() * 1.0).to(q.dtype), (emb.sin() * 1.0).to(q.dtype)
        q = q * cos + self._rotate_half(q) * sin
        k = k * cos + self._rotate_half(k) * sin
        return q, k


class SinActivation(nn.Module):
    """A sin read by two readers of its own size: no reader broadcasts it (a buffer would add a
    write and a read where the inlined readers only read x)."""

    def forward(self, x):
        y = torch.sin(x) * 2.0
        return y + x, y * x


class OneReader(nn.Module):
    """A cos table [S, D] that one reader broadcasts over heads: q [B, H, S, D] * table."""

    def forward(self, q, positions):
        table = torch.cos(positions.float()[:, None] * torch.arange(1, q.shape[-1] + 1)[None, :]).to(q.dtype)
        return q * table


def _compile(model, *args, **options):
    compiled = torch.compile(model, backend="fp8block", options=options or None)
    with torch.inference_mode():
        out, code = run_and_get_code(compiled, *args)
    return out, "\n".join(code)


def _rope_inputs(heads: int, seq: int, dim: int = 64):
    """q with ``heads`` heads, k with a quarter of them (GQA: two loops of their own in the code)."""
    torch.manual_seed(0)
    q = torch.randn(1, heads, seq, dim, dtype=torch.bfloat16)
    k = torch.randn(1, heads // 4, seq, dim, dtype=torch.bfloat16)
    return q, k, torch.arange(seq) + 7


def test_shared_table_is_computed_once_and_nearer_eager():
    args = _rope_inputs(heads=16, seq=1024)  # readers: 1M + 256K elements of a 64K table
    model = Rope()
    (q_on, k_on), code_on = _compile(model, *args)
    assert counters["fp8inductor"]["trig_tables_realized"] == 2
    counters.clear()
    (q_off, k_off), code_off = _compile(model, *args, trig_tables_once=False)
    assert counters["fp8inductor"]["trig_tables_realized"] == 0
    # one loop evaluates each table (one cos, one sin call) instead of each reader evaluating it again
    assert len(_TRIG_CALL.findall(code_on)) == 2, _TRIG_CALL.findall(code_on)
    assert len(_TRIG_CALL.findall(code_off)) > 2
    with torch.inference_mode():
        q_eager, k_eager = model(*args)
    # Not bit-identical to the inlined version: Inductor keeps an inlined table in fp32 where eager
    # (and a realized table) rounds it to bf16, so the realized one is the nearer to eager. Eager
    # rounds q * cos, rotate_half(q) * sin and their sum to bf16 where Inductor rounds once: each
    # rounding is within 2**-9 relative, measured 2.7e-3 (on) and 3.1e-3 (off) here.
    for on, off, eager in ((q_on, q_off, q_eager), (k_on, k_off, k_eager)):
        assert rel_err(on, eager) <= rel_err(off, eager) < 4e-3


def _elements(plan) -> int:
    """A kernel's pointwise elements: the product of its non-reduction numels (torch 2.11 tiles the
    table's kernel as y x x = 2048 x 128; 2.13 as one x = 262144)."""
    return math.prod(n for key, n in plan.numels.items() if not key.startswith("r"))


def test_triton_plan_computes_the_tables_in_one_table_sized_kernel():
    """The GPU's codegen (Inductor's Triton plan, made on the CPU: ``fp8inductor.plan``) at Llama-3-8B
    prefill sizes: one kernel of the table's size evaluates cos and sin and writes both tables, which
    the q and k kernels then read; without the pass the cos/sin are in the q and k kernels themselves."""
    from fp8inductor.plan import plan_triton_kernels

    q, k, pos = _rope_inputs(heads=32, seq=2048, dim=128)
    table = 2048 * 128
    trig_kernel = re.compile(r"(triton_\w*(?:cos|sin)\w*)\.run\(")
    plans, code = plan_triton_kernels(Rope(dim=128), q, k, pos, options={"trig_tables_once": True})
    assert len(set(trig_kernel.findall(code))) == 1, code
    writers = [p for p in plans if _elements(p) == table]
    assert len(writers) == 1 and writers[0].write_bytes == (table * 2, table * 2), plans
    readers = [p for p in plans if _elements(p) in (q.numel(), k.numel())]
    assert len(readers) == 2 and all(p.read_bytes.count(table * 2) == 2 for p in readers), plans

    plans, code = plan_triton_kernels(Rope(dim=128), q, k, pos, options={"trig_tables_once": False})
    assert len(set(trig_kernel.findall(code))) == 2, code  # the q kernel's and the k kernel's
    assert not [p for p in plans if _elements(p) == table], plans


def test_small_static_readers_and_lone_sin_stay_inlined():
    """A decode-sized rotation (readers below ``MIN_RECOMPUTED`` elements) and a sin whose readers
    have its own size (static and symbolic) keep Inductor's inlining."""
    args = _rope_inputs(heads=4, seq=8)
    assert (4 + 1) * 8 * 64 < trig_tables.MIN_RECOMPUTED
    _compile(Rope(), *args)
    x = torch.randn(4096, 512, dtype=torch.bfloat16)
    out, _ = _compile(SinActivation(), x)
    torch.testing.assert_close(out, SinActivation()(x), rtol=2e-2, atol=2e-2)
    torch._dynamo.mark_dynamic(x, 0)
    with torch.inference_mode():
        torch.compile(SinActivation(), backend="fp8block")(x)
    assert counters["fp8inductor"]["trig_tables_realized"] == 0


def test_symbolic_shapes_realize_a_table_with_several_readers():
    model = Rope()
    compiled = torch.compile(model, backend="fp8block")
    with torch.inference_mode():
        for seq in (40, 97):
            q, k, pos = _rope_inputs(heads=4, seq=seq)
            for t in (q, k):
                torch._dynamo.mark_dynamic(t, 2)
            torch._dynamo.mark_dynamic(pos, 0)
            got, want = compiled(q, k, pos), model(q, k, pos)
            for g, w in zip(got, want, strict=True):
                torch.testing.assert_close(g, w, rtol=2e-2, atol=2e-2)
    assert counters["fp8inductor"]["trig_tables_realized"] == 2
    assert counters["stats"]["unique_graphs"] == 1
    # one broadcasting reader: the chain ends at the table (same symbolic size), not in the reader
    counters.clear()
    q, _, pos = _rope_inputs(heads=4, seq=40)
    torch._dynamo.mark_dynamic(q, 2)
    torch._dynamo.mark_dynamic(pos, 0)
    with torch.inference_mode():
        got = torch.compile(OneReader(), backend="fp8block")(q, pos)
    torch.testing.assert_close(got, OneReader()(q, pos), rtol=2e-2, atol=2e-2)
    assert counters["fp8inductor"]["trig_tables_realized"] == 1


def test_llama_tables_once_and_logits_as_accurate():
    """transformers' Llama: its rotary embedding's cos and sin tables, read by every layer's q and k,
    are computed once per forward; the logits are as accurate as without the pass."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=300,
    )  # fmt: skip
    model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    ids = torch.randint(0, 300, (1, 2048))  # the q/k readers: 1.6M elements of each 128K table
    on, code_on = _compile(model, ids)
    assert counters["fp8inductor"]["trig_tables_realized"] == 2
    off, code_off = _compile(model, ids, trig_tables_once=False)
    assert len(_TRIG_CALL.findall(code_on)) == 2 < len(_TRIG_CALL.findall(code_off))
    with torch.inference_mode():
        eager = model(ids).logits
    # the FP8 linears (the CPU reference) quantize q/k-dependent activations that differ by bf16
    # roundings (first test); the logits are as near eager's as without the pass
    assert rel_err(on.logits, eager) < 1.25 * rel_err(off.logits, eager) + 1e-3


def test_option_is_validated():
    with pytest.raises(TypeError, match="trig_tables_once must be a bool"):
        fp8inductor.FP8BlockConfig(trig_tables_once=1)


@pytest.mark.gpu
def test_gpu_triton_kernels_evaluate_the_table_once():
    """On the GPU: one Triton kernel evaluates each table (``cos(``/``sin(`` once in the code); the
    readers load it. Without the pass each reader's kernel evaluates it again."""
    q, k, pos = (t.cuda() for t in _rope_inputs(heads=32, seq=2048, dim=128))
    model = Rope(dim=128).cuda()
    (q_on, k_on), code_on = _compile(model, q, k, pos)
    (q_off, k_off), code_off = _compile(model, q, k, pos, trig_tables_once=False)
    gpu_trig = re.compile(r"\b(cos|sin)\(")
    assert len(gpu_trig.findall(code_on)) == 2, gpu_trig.findall(code_on)
    assert len(gpu_trig.findall(code_off)) > 2
    with torch.inference_mode():
        q_eager, k_eager = model(q, k, pos)
    for on, off, eager in ((q_on, q_off, q_eager), (k_on, k_off, k_eager)):
        assert rel_err(on, eager) <= rel_err(off, eager) < 4e-3


class LastRow(nn.Module):
    """Only the last position's row of an [S, D] table is read (a slice: fewer elements than the table)."""

    def forward(self, q, positions):
        # arguments up to ~6.6 rad: Inductor's vectorized cos/sin and ATen's agree closely there
        freqs = positions.float()[:, None] * torch.linspace(0, 1e-4, q.shape[-1])[None, :]
        return q * freqs.cos()[-1:] + q * freqs.sin()[-1:]


class SplitReader(nn.Module):
    """The table read through ``split``: each half broadcast over heads."""

    def forward(self, q, positions):
        freqs = positions.float()[:, None] * torch.linspace(0, 1e-3, q.shape[-1])[None, :]  # <= ~1 rad
        c1, c2 = freqs.cos().split(q.shape[-1] // 2, -1)
        half = q.shape[-1] // 2
        return torch.cat((q[..., :half] * c1, q[..., half:] * c2), -1)


@pytest.mark.parametrize("dynamic", [None, True], ids=["static", "dynamic"])
def test_slice_readers_stay_and_split_readers_count(dynamic):
    """A reader of one row of a 64K-row table computes 64 elements, not the table's 4M: the table
    stays inlined (dynamic too, where the ratio is 1/S). A table read through ``split`` (a list whose
    getitems are the views) is realized."""
    torch.manual_seed(0)
    q, pos = torch.randn(8, 1, 64), torch.arange(65536)
    with torch.inference_mode():
        got = torch.compile(LastRow(), backend="fp8block", dynamic=dynamic)(q, pos)
    torch.testing.assert_close(got, LastRow()(q, pos), rtol=1e-5, atol=1e-5)
    assert counters["fp8inductor"]["trig_tables_realized"] == 0
    q, pos = torch.randn(16, 1024, 64), torch.arange(1024)
    with torch.inference_mode():
        got = torch.compile(SplitReader(), backend="fp8block", dynamic=dynamic)(q, pos)
    torch.testing.assert_close(got, SplitReader()(q, pos), rtol=1e-5, atol=1e-5)
    assert counters["fp8inductor"]["trig_tables_realized"] == 1


def test_broadcast_factor_of_symbolic_counts():
    s0, s1 = sympy.symbols("s0 s1", positive=True, integer=True)
    assert trig_tables._broadcast_factor(sympy.Integer(32))
    assert not trig_tables._broadcast_factor(sympy.Integer(1))
    assert not trig_tables._broadcast_factor(sympy.Rational(1, 2))
    assert trig_tables._broadcast_factor(32 * s0)  # B x H x S x D over S x D
    assert trig_tables._broadcast_factor(s0 / 2)  # half the width over s0 heads
    assert not trig_tables._broadcast_factor(1 / s1)  # one row of an s1-row table
    assert not trig_tables._broadcast_factor(s0 / s1)
