"""The fp8block backend on toy modules (CPU: Inductor C++ codegen + the reference ops).

Every compiled result is compared with an eager emulation that applies SPEC numerics through
``fp8inductor.block_fp8_linear`` with reference-quantized weights. Compiled and emulated outputs run
the same quantized GEMMs on the same inputs, so they agree to the output dtype's rounding unless
Inductor computes something around them differently (noted where it does).
"""

from __future__ import annotations

import logging
import math
import os
import warnings

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

import fp8inductor
from fp8inductor.config import FP8BlockConfig
from fp8inductor.passes import FP8BlockPass
from fp8inductor.testing import rel_err

BF16 = torch.bfloat16

pytestmark = pytest.mark.usefixtures("fresh_dynamo")


def fp8_linear(x, w_nk, b=None):
    """Eager SPEC emulation of one converted linear."""
    q, s = fp8inductor.quantize_weight(w_nk)
    return fp8inductor.block_fp8_linear(x, q, s, b)


def compile_fp8(model, **kw):
    return torch.compile(model, backend="fp8block", **kw)


class AllForms(nn.Module):
    """One of each matmul form: Linear(+bias), Linear, x @ W.T, x @ W_kn, Conv1D-style addmm."""

    def __init__(self, k=256, n=384):
        super().__init__()
        self.fc_bias = nn.Linear(k, n)
        self.fc = nn.Linear(n, k, bias=False)
        self.w_nk = nn.Parameter(torch.randn(n, k) / math.sqrt(k))
        self.w_kn = nn.Parameter(torch.randn(n, k) / math.sqrt(n))
        self.conv_w = nn.Parameter(torch.randn(k, n) / math.sqrt(k))  # GPT-2 Conv1D: [K, N]
        self.conv_b = nn.Parameter(torch.randn(n) / 10)

    def forward(self, x):  # x [B, S, K]
        h = torch.relu(self.fc_bias(x))  # addmm_nk
        h = self.fc(h)  # mm_nk
        h = h @ self.w_nk.T  # mm_nk via matmul
        h = torch.relu(h) @ self.w_kn  # mm_kn
        size = h.shape[:-1] + (self.conv_w.shape[1],)
        return torch.addmm(self.conv_b, h.reshape(-1, h.shape[-1]), self.conv_w).view(size)  # addmm_kn

    def emulated(self, x):
        h = torch.relu(fp8_linear(x, self.fc_bias.weight, self.fc_bias.bias))
        h = fp8_linear(h, self.fc.weight)
        h = fp8_linear(h, self.w_nk)
        h = fp8_linear(torch.relu(h), self.w_kn.t())
        return fp8_linear(h, self.conv_w.t(), self.conv_b)


def test_every_matmul_form_is_converted_and_matches_emulation():
    torch.manual_seed(0)
    m = AllForms().to(BF16)
    x = torch.randn(2, 7, 256, dtype=BF16)
    with torch.inference_mode():
        y = compile_fp8(m, fullgraph=True)(x)
        expect = m.emulated(x)
        ref = m(x)
    report = fp8inductor.last_report()
    assert sorted(d.pattern for d in report.converted) == ["addmm_kn", "addmm_nk", "mm_kn", "mm_nk", "mm_nk"]
    assert not report.skipped
    assert {d.weight for d in report.converted} == {"fc_bias.weight", "fc.weight", "w_nk", "w_kn", "conv_w"}
    assert counters["fp8inductor"]["linears_converted"] == 5
    # Same ops on the same inputs; bf16 outputs of each op are rounded identically.
    assert rel_err(y, expect) < 1e-3, rel_err(y, expect)
    # Five stacked FP8 layers vs bf16: e4m3 keeps 3 mantissa bits (~2-3% rms per quantization).
    assert rel_err(y, ref) < 0.15


def test_generated_code_calls_the_fp8_op_and_no_mm():
    from torch._inductor.utils import run_and_get_code

    m = nn.Sequential(nn.Linear(256, 256), nn.GELU(), nn.Linear(256, 128)).to(BF16)
    x = torch.randn(4, 256, dtype=BF16)
    with torch.inference_mode():
        _, codes = run_and_get_code(compile_fp8(m), x)
    # Comments keep the provenance ("Original ATen: [aten.addmm]"): look at code lines only.
    code = "\n".join(line for c in codes for line in c.splitlines() if not line.strip().startswith("#"))
    assert code.count("torch.ops.fp8inductor.block_linear.default(") == 2
    assert "aten.mm" not in code and "aten.addmm" not in code and "mkldnn" not in code


def test_two_same_class_modules_use_their_own_weights():
    torch.manual_seed(0)
    m1 = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256)).to(BF16)
    m2 = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256)).to(BF16)
    x = torch.randn(4, 256, dtype=BF16)
    with torch.inference_mode():
        y1, y2 = compile_fp8(m1)(x), compile_fp8(m2)(x)
        assert rel_err(y1, m1(x)) < 0.1 and rel_err(y2, m2(x)) < 0.1
        assert rel_err(y1, y2) > 0.5, "m2 must not reuse m1's quantized weights"


def test_dynamic_m_compiles_once():
    m = nn.Sequential(nn.Linear(256, 512), nn.SiLU(), nn.Linear(512, 256)).to(BF16)
    f = compile_fp8(m, dynamic=True)
    with torch.inference_mode():
        for rows in (3, 17, 64, 130):
            x = torch.randn(rows, 256, dtype=BF16)
            expect = fp8_linear(torch.nn.functional.silu(fp8_linear(x, m[0].weight, m[0].bias)), m[2].weight, m[2].bias)
            assert rel_err(f(x), expect) < 1e-2
    # One graph for every M >= 2 (Dynamo specializes sizes 0 and 1, as for any backend).
    assert len([r for r in fp8inductor.reports()[-4:] if r.converted]) >= 1
    assert counters["stats"]["unique_graphs"] == 1


def test_mark_dynamic_on_token_dim_3d():
    m = nn.Linear(256, 256).to(BF16)
    f = compile_fp8(m)
    with torch.inference_mode():
        for seq in (5, 9, 33):
            x = torch.randn(2, seq, 256, dtype=BF16)
            torch._dynamo.mark_dynamic(x, 1)
            assert rel_err(f(x), fp8_linear(x, m.weight, m.bias)) < 1e-2
    assert counters["stats"]["unique_graphs"] == 1


def test_grad_enabled_warns_and_stays_high_precision():
    m = nn.Linear(256, 256).to(BF16)
    x = torch.randn(4, 256, dtype=BF16)
    with pytest.warns(UserWarning, match="gradients enabled"):
        y = compile_fp8(m)(x)
    assert torch.allclose(y.float(), m(x).float(), rtol=2e-2, atol=2e-2)
    assert counters["fp8inductor"]["linears_converted"] == 0


def test_every_grad_enabled_compile_warns_and_reports_itself():
    """A second grad-enabled compile warned nothing (a once-per-process cache) and left an earlier
    FP8 graph's report as last_report()."""
    x = torch.randn(4, 256, dtype=BF16)
    with torch.inference_mode():
        compile_fp8(nn.Linear(256, 256).to(BF16))(x)
    assert len(fp8inductor.last_report().converted) == 1
    for n in (384, 512):
        torch._dynamo.reset()
        with pytest.warns(UserWarning, match="gradients enabled"):
            compile_fp8(nn.Linear(256, n).to(BF16))(x)
        r = fp8inductor.last_report()
        assert not r.decisions and "gradients enabled" in r.note


class BufferLinear(nn.Module):
    def __init__(self, device=None):
        super().__init__()
        self.register_buffer("weight", torch.randn(256, 256, device=device))

    def forward(self, x):
        return x @ self.weight.T


@pytest.mark.parametrize("model", [lambda: nn.Linear(256, 256, device="meta"), lambda: BufferLinear("meta")])
def test_meta_device_weights_are_a_clear_error(model):
    with torch.inference_mode(), pytest.raises(Exception, match="weights on the meta device"):
        compile_fp8(model())(torch.randn(4, 256, device="meta"))


class Named(nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = nn.ModuleDict({"gate": nn.Linear(256, 256), "gate_proj": nn.Linear(256, 256)})
        self.lm_head = nn.Linear(256, 512, bias=False)

    def forward(self, x):
        return self.lm_head(self.mlp["gate"](x) + self.mlp["gate_proj"](x))


def test_lm_head_skipped_by_default_and_modules_to_not_convert_uses_components():
    m = Named().to(BF16)
    x = torch.randn(3, 256, dtype=BF16)
    with torch.inference_mode():
        compile_fp8(m)(x)
        r = fp8inductor.last_report()
        assert {d.module for d in r.converted} == {"mlp.gate", "mlp.gate_proj"}
        assert [(d.module, d.reason) for d in r.skipped] == [("lm_head", "modules_to_not_convert entry 'lm_head'")]
        torch._dynamo.reset()
        compile_fp8(m, options={"modules_to_not_convert": ["mlp.gate"]})(x)
        r = fp8inductor.last_report()
        assert {d.module for d in r.converted} == {"mlp.gate_proj", "lm_head"}
        assert [d.module for d in r.skipped] == ["mlp.gate"]


class CondModel(nn.Module):
    """A linear outside a torch.cond, linears inside its branches, and an activation @ activation
    product in a branch (Inductor runs the pass on each branch's subgraph as well)."""

    def __init__(self, k=256):
        super().__init__()
        self.pre = nn.Linear(k, k)
        self.a = nn.Linear(k, k)
        self.b = nn.Linear(k, k, bias=False)

    def forward(self, x, y):  # x [M, K], y [K, K] (an activation)
        h = self.pre(x)
        branch = torch.cond(h.sum() > -1e30, lambda h, y: self.a(h) + h @ y, lambda h, y: self.b(h), (h, y))
        return h, branch


def test_higher_order_op_subgraphs_keep_their_matmuls_and_say_so():
    """Before 2026-12-07 the pass took a branch's placeholders for the forward's parameters: y (an
    activation) was quantized as a weight (FP8 error on h @ y) and the report named the wrong weights."""
    m = CondModel()
    x, y = torch.randn(8, 256), torch.randn(256, 256)
    with torch.inference_mode():
        h, out = compile_fp8(m)(x, y)
        assert rel_err(h, fp8_linear(x, m.pre.weight, m.pre.bias)) < 1e-6, "the forward's own linear converts"
        assert rel_err(out, m.a(h) + h @ y) < 1e-5, "the branch runs in high precision"
    r = fp8inductor.last_report()
    assert [(d.module, d.weight) for d in r.converted] == [("pre", "pre.weight")]
    assert sorted((d.module, d.pattern) for d in r.skipped) == [("a", "subgraph"), ("b", "subgraph")]
    assert all("subgraph" in d.reason for d in r.skipped)


class BreakingLayer(nn.Module):
    def __init__(self, k=256):
        super().__init__()
        self.up = nn.Linear(k, k)
        self.down = nn.Linear(k, k)

    def forward(self, x):
        x = torch.relu(self.up(x))
        if x.sum() > 0:  # data-dependent: a graph break, so Dynamo traces this forward as its own frame
            x = x * 1.0
        return self.down(x)


class BreakingHead(nn.Module):
    def __init__(self, k=256, n=512):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n, k) / 16)

    def forward(self, x):
        x = x * 1.0
        if x.sum() > 0:  # a graph break: the linear after it is a frame of its own
            x = x + 0.0
        return torch.nn.functional.linear(x, self.weight)


class BreakingModel(nn.Module):
    """Every layer and the head compile as frames of their own (Dynamo runs the loop eagerly)."""

    def __init__(self, k=256):
        super().__init__()
        self.layers = nn.ModuleList([BreakingLayer(k), BreakingLayer(k)])
        self.lm_head = BreakingHead(k)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(x)


@pytest.mark.parametrize("options", [None, {"modules_to_not_convert": ["layers.1.down", "lm_head"]}])
def test_names_are_model_paths_across_graph_breaks(options):
    """After a graph break Dynamo names a frame's weights relative to that frame (``down.weight``);
    before 2026-12-07 the default lm_head skip and full-path entries then matched nothing."""
    m = BreakingModel()
    skipped = {"lm_head"} | ({"layers.1.down"} if options else set())
    earlier = {id(r) for r in fp8inductor.reports()}
    with torch.inference_mode():
        compile_fp8(m, options=options)(torch.randn(4, 256))
    decisions = [d for r in fp8inductor.reports() if id(r) not in earlier for d in r.decisions]
    names = {"layers.0.up", "layers.0.down", "layers.1.up", "layers.1.down", "lm_head"}
    assert sorted(d.module for d in decisions) == sorted(names)
    assert {d.weight for d in decisions} == {f"{n}.weight" for n in names}
    assert {d.module for d in decisions if not d.converted} == skipped


def test_names_are_relative_to_the_compiled_model_inside_a_wrapper():
    """A compiled model called from a module that holds it: names stay relative to the compiled
    model (``lm_head``, not ``inner.lm_head``), as without the wrapper."""

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = compile_fp8(BreakingModel())

        def forward(self, x):
            return self.inner(x)

    earlier = {id(r) for r in fp8inductor.reports()}
    with torch.inference_mode():
        Wrapper()(torch.randn(4, 256))
    decisions = [d for r in fp8inductor.reports() if id(r) not in earlier for d in r.decisions]
    names = ["layers.0.down", "layers.0.up", "layers.1.down", "layers.1.up", "lm_head"]
    assert sorted(d.module for d in decisions) == names
    assert [d.module for d in decisions if not d.converted] == ["lm_head"]


def test_modules_passed_as_arguments_keep_apart():
    """Two modules given to a compiled function: Dynamo names both ``0.weight``; the argument's name
    is put in front, so the skip list and the report tell them apart."""
    enc = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256))
    dec = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256))

    def step(enc, dec, x):
        return dec(enc(x))

    with torch.inference_mode():
        compile_fp8(step, options={"modules_to_not_convert": ["dec"]})(enc, dec, torch.randn(4, 256))
    r = fp8inductor.last_report()
    assert [d.module for d in r.converted] == ["enc.0", "enc.2"]
    assert [d.module for d in r.skipped] == ["dec.0", "dec.2"]
    assert r.weight_bytes_before == 2 * 256 * 256 * 4


def test_partial_blocks_and_small_and_tiny_linears():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(328, 200), nn.ReLU(), nn.Linear(200, 64), nn.ReLU(), nn.Linear(64, 300)).to(BF16)
    x = torch.randn(5, 328, dtype=BF16)
    with torch.inference_mode():
        y = compile_fp8(m)(x)
    r = fp8inductor.last_report()
    assert [d.module for d in r.converted] == ["0"]
    assert {d.module: d.reason for d in r.skipped} == {
        "2": "out_features 64 < min_out_features 128",
        "4": "in_features 64 < min_in_features 128",
    }
    # N=200, K=328: partial 128-blocks on both axes; scale grid 2 x 3.
    assert r.converted[0].bytes_after == 200 * 328 + 4 * 2 * 3
    h = torch.relu(fp8_linear(x, m[0].weight, m[0].bias))
    expect = m[4](torch.relu(m[2](h)))
    assert rel_err(y, expect) < 1e-2


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_fp16_and_fp32_models(dtype):
    m = nn.Sequential(nn.Linear(256, 384), nn.Tanh(), nn.Linear(384, 256)).to(dtype)
    x = torch.randn(2, 3, 256, dtype=dtype)
    with torch.inference_mode():
        y = compile_fp8(m)(x)
        expect = fp8_linear(torch.tanh(fp8_linear(x, m[0].weight, m[0].bias)), m[2].weight, m[2].bias)
    assert y.dtype == dtype
    assert len(fp8inductor.last_report().converted) == 2
    # fp32 output: Inductor's fused tanh differs from eager's in the last bits, which can move an fp8
    # rounding of the second layer's input by one step (2^-3 relative) for a few elements.
    assert rel_err(y, expect) < 1e-2


def test_noncontiguous_and_expanded_inputs():
    m = nn.Linear(256, 256).to(BF16)
    base = torch.randn(256, 6, 2, dtype=BF16)
    x = base.permute(2, 1, 0)  # [2, 6, 256], non-contiguous
    x4 = torch.randn(1, 3, 256, dtype=BF16).expand(2, 2, 3, 256)  # 4-D expanded
    with torch.inference_mode():
        f = compile_fp8(m)
        assert rel_err(f(x), fp8_linear(x.contiguous(), m.weight, m.bias)) < 1e-2
        assert rel_err(f(x4), fp8_linear(x4.contiguous(), m.weight, m.bias)) < 1e-2
    assert all(len(r.converted) == 1 for r in fp8inductor.reports()[-2:])


def test_weight_cast_before_matmul_is_reported_unmatched():
    class Cast(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(256, 256, dtype=BF16))

        def forward(self, x):
            return x @ self.w.float().t()

    x = torch.randn(4, 256)
    with torch.inference_mode():
        y = compile_fp8(Cast())(x)
    assert y.dtype == torch.float32
    r = fp8inductor.last_report()
    assert not r.converted
    assert [d.pattern for d in r.skipped] == ["unmatched"] and "convert_element_type" in r.skipped[0].reason


class Derived(nn.Module):
    def __init__(self, form):
        super().__init__()
        self.form = form
        self.lin = nn.Linear(256, 256)
        self.other = nn.Parameter(torch.randn(256, 256))

    def forward(self, x):
        w = self.lin.weight
        if self.form == "scaled":
            w = w * 0.5
        elif self.form == "normalized":
            w = w / w.norm(dim=1, keepdim=True)
        elif self.form == "two_params":
            w = w + self.other
        return x @ w.t()


@pytest.mark.parametrize("form", ["scaled", "normalized", "two_params"])
def test_weights_computed_from_a_parameter_are_reported(form):
    """``x @ (W * 0.5).T`` is left as it is (the weight is computed at run time), and, since
    2026-12-07, reported as unmatched rather than passed over in silence; a weight computed from
    two parameters belongs to neither."""
    with torch.inference_mode():
        compile_fp8(Derived(form))(torch.randn(4, 256))
    r = fp8inductor.last_report()
    assert not r.converted
    if form == "two_params":
        assert not r.skipped
    else:
        assert [(d.weight, d.pattern) for d in r.skipped] == [("lin.weight", "unmatched")]
        assert {"scaled": "mul", "normalized": "div"}[form] in r.skipped[0].reason


def test_matmuls_on_parts_of_a_parameter_are_reported_unmatched():
    """Forms the pass does not convert still get a report entry naming the parameter (they ran in bf16
    with "0 converted, 0 skipped" before): a slice, a chunk, a 3-D einsum against it. (W @ vector is
    not a matmul by the time the pass runs: Inductor decomposed it into mul + sum.) A 1-D parameter
    in a matmul (a rotary embedding's inv_freq, expanded into a bmm) is no linear weight and is not
    reported: it was, on torch 2.11, for every transformers Llama ('model.rotary_emb' skipped)."""

    class Parts(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(512, 256, dtype=BF16) / 16)
            self.inv_freq = nn.Parameter(torch.rand(64), requires_grad=False)

        def forward(self, x):
            a = torch.nn.functional.linear(x, self.w[:256])  # mm(x, permute(slice(w)))
            b = torch.nn.functional.linear(x, self.w.chunk(2)[1])  # getitem(split(w))
            c = torch.einsum("bsk,nk->bsn", x.unsqueeze(0), self.w)  # bmm against a view of w
            pos = torch.arange(16.0).view(1, 2, 8).expand(3, 2, 8)
            d = self.inv_freq.view(32, 2)[None].expand(3, 32, 2) @ pos  # bmm (K = 2) against a 1-D parameter
            return a, b, c, d

    torch.manual_seed(0)
    model = Parts()
    x = torch.randn(4, 256, dtype=BF16)
    with torch.inference_mode():
        out = compile_fp8(model)(x)
        eager = model(x)
    r = fp8inductor.last_report()
    assert not r.converted
    reasons = [d.reason for d in r.skipped]
    assert len(reasons) == 3 and all(d.pattern == "unmatched" and d.weight == "w" for d in r.skipped), reasons
    assert "aten.mm.default(permute <- slice)" in reasons[0], reasons
    assert "aten.mm.default(permute <- getitem <- split)" in reasons[1], reasons
    assert reasons[2].startswith("unsupported form: aten.bmm.default(") and "unsqueeze" in reasons[2], reasons
    for got, want in zip(out, eager):  # left in high precision: eager's result
        assert rel_err(got, want) < 1e-2


def test_moe_experts_behind_another_librarys_matmul_op_are_reported():
    """transformers 5 runs non-bf16 MoE experts under torch.compile through its own custom op
    (``transformers::grouped_mm_fallback``), not ``aten._grouped_mm``: the experts of an fp16 MoE
    (most of its bytes) were missing from the report. Another library's "mm" op taking a parameter is
    now reported as unmatched; it is left as it is."""
    lib = torch.library.Library("fp8inductor_test_foreign", "FRAGMENT")
    lib.define("grouped_mm_fallback(Tensor x, Tensor w) -> Tensor")
    lib.impl(
        "grouped_mm_fallback", lambda x, w: (x.unsqueeze(0) @ w.transpose(-2, -1)).sum(0), "CompositeExplicitAutograd"
    )
    lib.impl("grouped_mm_fallback", lambda x, w: x.new_empty(x.shape[0], w.shape[1]), "Meta")

    class Experts(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_up_proj = nn.Parameter(torch.randn(4, 256, 256, dtype=torch.float16) / 16)

        def forward(self, x):
            return torch.ops.fp8inductor_test_foreign.grouped_mm_fallback(x, self.gate_up_proj)

    model, x = Experts(), torch.randn(8, 256, dtype=torch.float16)
    with torch.inference_mode():
        want = model(x)
        out = compile_fp8(model)(x)
    r = fp8inductor.last_report()
    found = {d.weight: d.reason for d in r.skipped if d.pattern == "unmatched"}
    assert found == {"gate_up_proj": "unsupported form: fp8inductor_test_foreign.grouped_mm_fallback.default(param)"}
    torch.testing.assert_close(out, want)  # left in high precision


def test_moe_experts_3d_weights_are_reported_unmatched():
    """transformers' MoE experts keep their weights as 3-D parameters [E, N, K] and run them with
    ``grouped_mm`` (the default experts implementation) or a ``bmm`` of ``W[expert_ids]``
    (``batched_mm``). Neither converts; both are now reported as unmatched, naming the parameter.
    Before, an MoE model's expert weights (most of its bytes) were missing from the report."""
    if not hasattr(torch, "_grouped_mm"):
        pytest.skip("torch._grouped_mm missing")

    class Experts(nn.Module):
        def __init__(self, e=4, n=256, k=256):
            super().__init__()
            self.grouped = nn.Parameter(torch.randn(e, n, k, dtype=BF16) / 16)
            self.batched = nn.Parameter(torch.randn(e, n, k, dtype=BF16) / 16)

        def forward(self, x, ids, offs):  # x [S, K] sorted by expert; ids [S]; offs [E] int32
            a = torch._grouped_mm(x, self.grouped.transpose(-2, -1), offs=offs)
            b = torch.bmm(self.batched[ids], x.unsqueeze(-1)).squeeze(-1)
            return a, b

    torch.manual_seed(0)
    model = Experts()
    x, ids = torch.randn(8, 256, dtype=BF16), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    offs = torch.tensor([2, 4, 6, 8], dtype=torch.int32)
    try:
        with torch.inference_mode():
            eager = model(x, ids, offs)
    except (RuntimeError, NotImplementedError) as e:
        pytest.skip(f"grouped_mm does not run here: {e}")
    with torch.inference_mode():
        out = compile_fp8(model)(x, ids, offs)
    r = fp8inductor.last_report()
    assert not r.converted
    found = {d.weight: d.reason for d in r.skipped if d.pattern == "unmatched"}
    assert found.keys() == {"grouped", "batched"}, [(d.weight, d.reason) for d in r.skipped]
    assert found["grouped"].startswith("unsupported form: aten._grouped_mm.default("), found
    assert found["batched"].startswith("unsupported form: aten.bmm.default(") and "index" in found["batched"], found
    assert {d.weight_shape for d in r.skipped} == {(4, 256, 256)}  # the parameters' shapes, not N = K = 0
    assert "  [skip] grouped " in str(r) and "unmatched [4x256x256]" in str(r), str(r)
    for got, want in zip(out, eager):  # left in high precision: eager's result
        assert rel_err(got, want) < 1e-2


class ToyTopKRouter(nn.Module):
    """transformers 5's router form (``MixtralTopKRouter``, ``Qwen3MoeTopKRouter``): F.linear on its own weight."""

    def __init__(self, experts=128, k=256):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(experts, k, dtype=BF16) / 16)

    def forward(self, x):
        return torch.nn.functional.linear(x, self.weight)


class ToySparseMoeBlock(nn.Module):
    """Routers of both forms (a router class; transformers 4's ``nn.Linear`` named ``gate`` in an MoE
    block), beside an expert-sized linear; 128 experts: large enough to be eligible by size."""

    def __init__(self):
        super().__init__()
        self.gate = nn.Linear(256, 128, bias=False, dtype=BF16)
        self.router = ToyTopKRouter()
        self.up = nn.Linear(256, 256, bias=False, dtype=BF16)

    def forward(self, x):
        return self.up(x), self.gate(x), self.router(x)


@pytest.mark.parametrize("convert_routers", [False, True])
def test_moe_routers_stay_in_high_precision_unless_asked(convert_routers):
    """An FP8 router changes which experts a token gets (a quarter of the tokens' top-8 sets on a
    random 128-expert Qwen3-MoE); transformers' FP8 loader keeps routers in high precision, and so do
    the backend and ``quantize_`` unless ``convert_routers``. Before, a router with >= 128 experts
    was converted."""
    torch.manual_seed(0)
    model, x = ToySparseMoeBlock(), torch.randn(4, 256, dtype=BF16)
    with torch.inference_mode():
        eager = model(x)
        out = compile_fp8(model, options={"convert_routers": convert_routers})(x)
    r = fp8inductor.last_report()
    decided = {d.module: d for d in r.decisions}
    assert decided.keys() == {"up", "gate", "router"}, decided.keys()
    assert decided["up"].converted
    for name in ("gate", "router"):
        assert decided[name].converted == convert_routers, decided[name]
        if not convert_routers:
            assert decided[name].reason.startswith("MoE router"), decided[name].reason
    for got, want, fp8 in zip(out, eager, (True, convert_routers, convert_routers)):
        err = rel_err(got, want)
        assert (0 < err < 0.1) if fp8 else err == 0, err  # kept: eager's own matmul, bit for bit
    q = ToySparseMoeBlock()
    skipped = fp8inductor.quantize_(q, {"convert_routers": convert_routers})
    assert type(q.up).__name__ == "FP8BlockLinear"
    assert (type(q.gate).__name__ == "FP8BlockLinear") == convert_routers, skipped
    if not convert_routers:
        assert skipped["gate"].startswith("MoE router"), skipped


def test_quantize_lists_moe_experts_left_in_high_precision():
    """``quantize_`` has no FP8 form for 3-D expert weights; its {path: reason} says they stay."""

    class Experts(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_up_proj = nn.Parameter(torch.randn(4, 512, 256, dtype=BF16))
            self.down_proj = nn.Parameter(torch.randn(4, 256, 256, dtype=BF16))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.experts, self.proj = Experts(), nn.Linear(256, 256, dtype=BF16)

    model = Block()
    skipped = fp8inductor.quantize_(model)
    assert type(model.proj).__name__ == "FP8BlockLinear"
    assert skipped.keys() == {"experts"}, skipped
    assert "gate_up_proj [4, 512, 256]" in skipped["experts"] and "down_proj [4, 256, 256]" in skipped["experts"]
    assert model.experts.gate_up_proj.dtype == BF16
    # transformers' FP8Experts: FP8 already (its 3-D float32 scales are no high-precision weights)
    model.experts.gate_up_proj.data = model.experts.gate_up_proj.data.to(torch.float8_e4m3fn)
    model.experts.down_proj.data = model.experts.down_proj.data.to(torch.float8_e4m3fn)
    model.experts.gate_up_proj_scale_inv = nn.Parameter(torch.ones(4, 4, 2), requires_grad=False)
    assert fp8inductor.quantize_(model) == {}


@pytest.mark.parametrize(
    ("path", "classes", "router"),
    [
        ("model.layers.0.mlp.gate", ["MixtralForCausalLM", "MixtralSparseMoeBlock", "MixtralTopKRouter"], True),
        ("model.layers.0.mlp.gate", ["M", "DeepseekV3MoE", "DeepseekV3TopkRouter"], True),
        ("model.layers.0.mlp.router", ["M", "GptOssMLP", "GptOssTopKRouter"], True),
        ("model.layers.0.mlp.gate", ["M", "MoE", "MoEGate"], True),  # DeepSeek's own modeling code
        ("model.layers.0.block_sparse_moe.gate", ["M", "MixtralSparseMoeBlock", "Linear"], True),  # transformers 4
        ("model.layers.0.mlp.gate", ["M", "OlmoeSparseMoeBlock", "Linear"], True),
        ("encoder.block.1.layer.1.mlp.router.classifier", ["M", "SwitchTransformersTop1Router", "Linear"], True),
        ("model.layers.0.mlp.gate.wg", ["M", "HunYuanMoEV1Moe", "HunYuanMoEV1Gate", "Linear"], True),
        ("model.layers.0.mlp.gate.router_mlp.fc1", ["M", "ZayaMoE", "ZayaRouter", "ZayaRouterMLP", "Linear"], True),
        ("model.layers.0.mlp.experts.0.w1", ["TextRouter", "MixtralSparseMoeBlock", "Linear"], False),  # stops at the MoE block
        ("model.layers.0.mlp.gate_proj", ["M", "MixtralSparseMoeBlock", "Linear"], False),
        ("model.layers.0.mlp.gate", ["M", "LlamaMLP", "Linear"], False),  # a dense MLP's "gate": not a router
        ("model.layers.0.mlp.shared_expert_gate", ["M", "Qwen2MoeSparseMoeBlock", "Linear"], False),
        ("gate", ["Linear"], False),
        ("", [], False),
    ],
)
def test_is_moe_router(path, classes, router):
    from fp8inductor.eligibility import is_moe_router

    assert is_moe_router(path, classes) == router


def test_nonfinite_weight_is_skipped_with_reason():
    m = nn.Linear(256, 256).to(BF16)
    with torch.no_grad():
        m.weight[3, 7] = float("nan")
    with torch.inference_mode():
        compile_fp8(m)(torch.randn(2, 256, dtype=BF16))
    assert fp8inductor.last_report().skipped[0].reason == "weight contains NaN or Inf"


def test_report_is_logged_once_per_graph(caplog):
    m = nn.Linear(256, 256).to(BF16)
    f = compile_fp8(m)
    with caplog.at_level(logging.INFO, logger="fp8inductor"), torch.inference_mode():
        for _ in range(3):
            f(torch.randn(4, 256, dtype=BF16))
    lines = [r for r in caplog.records if r.name == "fp8inductor" and "linear(s) converted" in r.getMessage()]
    assert len(lines) == 1
    d = fp8inductor.last_report().to_dict()
    assert d["converted"] == 1 and d["weight_bytes_before"] == 256 * 256 * 2
    assert d["weight_bytes_after"] == 256 * 256 + 4 * 2 * 2


def test_mode_and_options_together_via_options():
    m = nn.Linear(256, 256).to(BF16)
    with torch.inference_mode():
        y = compile_fp8(m, options={"mode": "max-autotune-no-cudagraphs", "scale_fmt": "ue8m0"})(
            torch.randn(4, 256, dtype=BF16)
        )
    assert y.shape == (4, 256) and len(fp8inductor.last_report().converted) == 1


def test_decomposition_table_keeps_a_one_row_mm_under_coordinate_descent_tuning():
    """Inductor's aten.mm decomposition turns a one-row mm into mul + sum when coordinate-descent tuning
    is on (max-autotune) and the device is not a CPU: the FP8 pass would then never see a decode
    step's linears. Meta tensors stand in for CUDA ones (the decomposition only excludes cpu/mps)."""
    from torch._inductor.decomposition import select_decomp_table

    from fp8inductor import _compat

    mm = torch.ops.aten.mm.default
    x, w = torch.empty(1, 256, device="meta"), torch.empty(256, 128, device="meta")
    patches = {"coordinate_descent_tuning": True}
    with torch._inductor.config.patch(patches):
        assert select_decomp_table()[mm](x, w) is not NotImplemented  # what the backend guards against
    with torch._inductor.config.patch(patches):
        table = _compat.select_decomp_table_keeping_mm()
        assert table[mm](x, w) is NotImplemented  # the mm stays an mm
        assert torch._inductor.config.coordinate_descent_tuning  # restored after the call
        outer = torch.empty(64, 1, device="meta"), torch.empty(1, 32, device="meta")
        k1 = table[mm](*outer)
        assert set(table) == set(select_decomp_table())
    with torch._inductor.config.patch(coordinate_descent_tuning=False):
        k1_want = select_decomp_table()[mm](*outer)
    # other mm decompositions kept as Inductor has them: torch 2.13 turns this K = 1 outer product
    # into a mul on non-CPU devices, 2.11 leaves it an mm (NotImplemented; seen on the H100 run)
    assert (k1 is NotImplemented) == (k1_want is NotImplemented)
    if k1_want is not NotImplemented:
        assert k1.shape == k1_want.shape == (64, 32)


@pytest.mark.parametrize(
    "options, tuning",
    [
        ({}, False),
        ({"coordinate_descent_tuning": True}, True),
        ({"mode": "max-autotune-no-cudagraphs"}, True),  # the user's way in: the mode turns the tuning on
    ],
)
def test_trace_uses_the_mm_keeping_table_exactly_under_coordinate_descent(monkeypatch, options, tuning):
    from fp8inductor import _compat

    calls = []
    table = _compat.select_decomp_table_keeping_mm
    monkeypatch.setattr(_compat, "select_decomp_table_keeping_mm", lambda: calls.append(1) or table())
    with torch.inference_mode():
        compile_fp8(nn.Linear(256, 128), options=options)(torch.randn(1, 256))
    assert bool(calls) == tuning
    assert len(fp8inductor.last_report().converted) == 1


def test_coordinate_descent_compiles_use_the_fx_graph_cache(monkeypatch):
    """The table swap under coordinate-descent tuning keeps the FX-graph cache key picklable (handing
    Inductor a decompositions dict made every such compile bypass the cache on torch 2.13)."""
    key = b"cd-cache" + os.urandom(8)  # fresh keys for this test run
    lin, x = nn.Linear(256, 256), torch.randn(1, 256)
    options = {"coordinate_descent_tuning": True}
    for expect in ((0, 1), (1, 0)):
        assert _fx_graph_cache_counts(monkeypatch, lin, x, key, options) == expect
        assert len(fp8inductor.last_report().converted) == 1


def test_bad_option_is_a_clear_error():
    with pytest.raises(Exception, match="unknown fp8block option 'bogus'"), torch.inference_mode():
        compile_fp8(nn.Linear(256, 256), options={"bogus": 1})(torch.randn(2, 256))


def test_pass_uuid_depends_on_config_and_sources(monkeypatch):
    a, b = FP8BlockPass(FP8BlockConfig()), FP8BlockPass(FP8BlockConfig(scale_fmt="ue8m0"))
    assert a.uuid() == FP8BlockPass(FP8BlockConfig()).uuid()
    assert a.uuid() != b.uuid()
    with_cublas = a.uuid()
    monkeypatch.setenv("FP8INDUCTOR_CUBLAS", "0")  # the lowering then never leaves a GEMM to cuBLAS
    assert a.uuid() != with_cublas
    monkeypatch.delenv("FP8INDUCTOR_CUBLAS")
    monkeypatch.setenv("FP8INDUCTOR_QUANT_IR", "0")  # the lowering then keeps the op's quant kernel
    assert a.uuid() != with_cublas
    monkeypatch.delenv("FP8INDUCTOR_QUANT_IR")
    monkeypatch.setenv("FP8INDUCTOR_PDL", "0")  # the lowering then keeps decode-size tiles GEMMs on templates
    assert a.uuid() != with_cublas
    monkeypatch.delenv("FP8INDUCTOR_PDL")
    monkeypatch.setenv("FP8INDUCTOR_CUBLAS_PAD_ROWS", "0")  # M % 4 != 0 then runs the Triton kernels
    assert a.uuid() != with_cublas
    monkeypatch.delenv("FP8INDUCTOR_CUBLAS_PAD_ROWS")
    assert a.uuid() == with_cublas
    from fp8inductor import passes

    passes._source_hash.cache_clear()
    with warnings.catch_warnings():
        assert passes._source_hash() == a.uuid()[: len(passes._source_hash())]


def test_cache_key_covers_every_source_that_shapes_the_graph(tmp_path):
    """Lowering, template, kernels, ops, pass, patterns and tuned tables are all in the pass uuid."""
    import shutil

    from fp8inductor import passes

    def get_hash_for_files(files):
        return passes.hash_files(files)

    files = {os.path.relpath(f, os.path.dirname(os.path.dirname(passes.__file__))) for f in passes.source_files()}
    for must in (
        "fp8inductor/lowering.py",
        "fp8inductor/kernels/template.py",
        "fp8inductor/kernels/block_gemm.py",
        "fp8inductor/kernels/act_quant.py",
        "fp8inductor/ops.py",
        "fp8inductor/passes.py",
    ):
        assert must in files, must
    assert any(f.startswith("fp8inductor/configs/") and f.endswith(".json") for f in files)
    assert any(f.endswith(os.path.join("patterns", "linear.py")) for f in files)
    # An edit to any file changes the hash (tested on a copy of the package).
    copy = tmp_path / "pkg"
    shutil.copytree(os.path.dirname(passes.__file__), copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = get_hash_for_files(passes.source_files([str(copy)]))
    for rel in ("kernels/template.py", "lowering.py", next(f for f in files if f.endswith(".json"))[12:]):
        path = copy / rel
        original = path.read_bytes()
        path.write_bytes(original + b"\n")
        assert get_hash_for_files(passes.source_files([str(copy)])) != before, rel
        path.write_bytes(original)
    assert get_hash_for_files(passes.source_files([str(copy)])) == before


def _fx_graph_cache_counts(monkeypatch, model, x, source_hash: bytes, options=None) -> tuple[int, int]:
    """(hits, misses) of Inductor's FX-graph cache for one fresh fp8block compile of model(x), with
    the pass's source hash set to ``source_hash``."""
    from torch._inductor import config as inductor_config

    from fp8inductor import passes

    monkeypatch.setattr(passes, "_source_hash", lambda: source_hash)
    torch._dynamo.reset()
    counters.clear()
    with torch.inference_mode(), warnings.catch_warnings(), inductor_config.patch(fx_graph_cache=True):
        warnings.simplefilter("ignore")
        compile_fp8(model, options=options)(x)
    return counters["inductor"]["fxgraph_cache_hit"], counters["inductor"]["fxgraph_cache_miss"]


def test_edited_sources_do_not_reuse_a_cached_graph(monkeypatch):
    """End to end through Inductor's FX-graph cache: same sources hit, edited sources miss."""
    lin = nn.Linear(256, 256)
    x = torch.randn(4, 256)
    salt = os.urandom(8)  # fresh keys for this test run
    assert _fx_graph_cache_counts(monkeypatch, lin, x, b"sources-A" + salt) == (0, 1)
    assert _fx_graph_cache_counts(monkeypatch, lin, x, b"sources-A" + salt) == (1, 0)
    assert _fx_graph_cache_counts(monkeypatch, lin, x, b"sources-B" + salt) == (0, 1)  # an edited source: recompiled


def test_lowering_is_gated_off_on_cpu_and_keeps_nd_activations():
    """On the CPU the op stays a FallbackKernel (no Triton codegen there) and takes x [..., K] as is."""
    from torch._inductor.utils import run_and_get_code

    model = nn.Sequential(nn.Linear(256, 384), nn.SiLU())
    x = torch.randn(2, 3, 256)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y, codes = run_and_get_code(compile_fp8(model), x)
    calls = [line for line in codes[0].splitlines() if "fp8inductor.block_linear.default(" in line]
    assert len(calls) == 1 and "reinterpret_tensor" not in calls[0], calls  # the 3-D input, not a 2-D view
    assert "triton_heuristics.template" not in codes[0]
    torch.testing.assert_close(y, model[1](fp8_linear(x, model[0].weight, model[0].bias)), rtol=0, atol=0)
    with pytest.raises(Exception, match="gemm_lowering must be one of"), torch.inference_mode():
        compile_fp8(nn.Linear(256, 256), options={"gemm_lowering": "cutlass"})(torch.randn(2, 256))


@pytest.mark.parametrize(
    "source,fqn",
    [
        ("L['self'].model.layers[0].self_attn.q_proj", "model.layers.0.self_attn.q_proj"),
        ("L['args'][0].model.layers[1].mlp.up_proj", "model.layers.1.mlp.up_proj"),  # transformers 5.24
        ("L['self']._modules['lm_head']", "lm_head"),
        ("L['self'].blocks['attn'].proj", "blocks.attn.proj"),
        ("L['s'].a", "a"),
        ("L['self']", ""),
    ],
)
def test_module_paths_from_dynamo_sources(source, fqn):
    from fp8inductor.passes import normalize_module_path

    assert normalize_module_path(source) == fqn


def test_compiled_graphs_share_one_fp8_copy_per_weight(monkeypatch):
    """Backend-only route: every graph (new shapes, ranks) reuses the first graph's FP8 weight."""
    import weakref

    from fp8inductor import reference as ref

    made = []
    original = ref.quantize_weight_ref

    def counting(w, *args, **kwargs):
        out = original(w, *args, **kwargs)
        made.append(weakref.ref(out[0]))
        return out

    monkeypatch.setattr(ref, "quantize_weight_ref", counting)
    lin = nn.Linear(256, 384)
    fast = compile_fp8(lin)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for shape in [(4, 256), (7, 256), (2, 3, 256)]:  # three graphs (static, dynamic M, 3-D)
            x = torch.randn(*shape)
            torch.testing.assert_close(fast(x), fp8_linear(x, lin.weight, lin.bias), rtol=0, atol=0)
        made_in_compiles = len(made) - 3  # fp8_linear's own eager quantizations are not memoized
    assert made_in_compiles == 1, made_in_compiles
    assert made[0]() is not None  # the graphs hold that very tensor: shared, not copied

    # An in-place change of the weight's bits (no version bump through .data) is seen by the next
    # compile: the fingerprint differs, so it quantizes again instead of reusing the old FP8 copy.
    with torch.no_grad():
        lin.weight.data.mul_(2)
    x = torch.randn(1, 2, 5, 256)  # a new rank: a new graph
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.testing.assert_close(fast(x), fp8_linear(x, lin.weight, lin.bias), rtol=0, atol=0)


def test_weight_memo_only_inside_an_fp8block_compile():
    w = torch.randn(256, 256)
    a, b = fp8inductor.quantize_weight(w), fp8inductor.quantize_weight(w)
    assert a[0] is not b[0]  # eager callers own their outputs
    from fp8inductor.weight_memo import fingerprint

    v = w.clone()
    assert fingerprint(v) == fingerprint(w)
    v[3, 7] = v[3, 7].item() + 1.0
    assert fingerprint(v) != fingerprint(w)
    flat = w.clone().view(-1)
    i, j = 5, 5 + 65521 % flat.numel()  # elements mixed with their positions: swaps and cancelling
    u = flat.clone()  # pairs of changes (which fool linear checksums) change both sums
    u[i], u[j] = flat[j].item(), flat[i].item()
    assert all(a != b for a, b in zip(fingerprint(u), fingerprint(flat)))
    bits = flat.clone().view(torch.int32)
    bits[i] += 1
    bits[j] -= 1
    assert all(a != b for a, b in zip(fingerprint(bits.view(torch.float32)), fingerprint(flat)))
    assert fingerprint(w.t()) == fingerprint(w)  # a permuted view is hashed in place, no copy


def _cpu_lowering(monkeypatch):
    """Turn the lowering's GPU path on for CPU tensors, with the op's GEMM in place of the template
    (Inductor has no Triton codegen on the CPU): exercises everything but the template itself."""
    from torch._inductor import lowering as L

    from fp8inductor import lowering, ops

    def gemm(quantized, wq, ws, lead, n, k, picked):
        xq, xs = quantized()
        return L.fallback_handler(ops.block_gemm, add_to_fallback_set=False)(xq, xs, wq, ws, torch.float32)

    monkeypatch.setattr(lowering, "_fp8_gpu", lambda device: True)
    monkeypatch.setattr(lowering, "_gemm", gemm)


class _TwoReaders(nn.Module):
    """Two linears on one activation; optionally an in-place update of it in between."""

    def __init__(self, mutate: bool) -> None:
        super().__init__()
        self.mutate = mutate
        self.a = nn.Linear(256, 384)
        self.b = nn.Linear(256, 384)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x * 2.0
        ya = self.a(h)
        if self.mutate:
            h[:, 0] = 100.0
        return ya + self.b(h)


@pytest.mark.parametrize("mutate", [False, True])
def test_lowering_shares_activation_quant_and_never_reuses_a_mutated_one(monkeypatch, mutate):
    from torch._inductor import config as inductor_config
    from torch._inductor.utils import run_and_get_code

    _cpu_lowering(monkeypatch)
    model = _TwoReaders(mutate)
    x = torch.randn(2, 5, 256)
    with torch.inference_mode(), warnings.catch_warnings(), inductor_config.patch(force_disable_caches=True):
        warnings.simplefilter("ignore")
        # fuse_siblings off: a and b read the same h and would otherwise be one GEMM (one quant anyway)
        y, codes = run_and_get_code(compile_fp8(model, options={"fuse_siblings": False}), x)
        h = x * 2.0
        want = fp8_linear(h, model.a.weight, model.a.bias)
        if mutate:
            h[:, 0] = 100.0
        want = want + fp8_linear(h, model.b.weight, model.b.bias)
    quants = codes[0].count("fp8inductor.quantize_activation.default(")
    assert quants == (2 if mutate else 1), codes[0]  # shared only when it is the same value
    assert codes[0].count("fp8inductor.block_gemm.default(") == 2
    torch.testing.assert_close(y, want, rtol=2**-7, atol=1e-2)


class _Siblings(nn.Module):
    """q/k/v-like linears on one activation (one with N not a multiple of 128), then an output linear."""

    def __init__(self, n_k: int = 128, bias: bool = False, v_bias: bool | None = None) -> None:
        super().__init__()
        self.q = nn.Linear(256, 256, bias=bias)
        self.k = nn.Linear(256, n_k, bias=bias)
        self.v = nn.Linear(256, 128, bias=bias if v_bias is None else v_bias)
        self.o = nn.Linear(256 + n_k + 128, 256)

    def forward(self, x):
        return self.o(torch.cat([self.q(x), self.k(x) * 2, torch.relu(self.v(x))], -1))


def _run_twice(model, x, **options):
    torch._dynamo.reset()
    counters.clear()
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = torch.compile(model, backend="fp8block", options=options or None)
        return fast(x), fast(x), dict(counters["fp8inductor"])


@pytest.mark.parametrize("shape", [(5, 256), (2, 3, 256)])
@pytest.mark.parametrize("bias", [False, True])
def test_sibling_linears_run_as_one_gemm(shape, bias, monkeypatch):
    """q, k, v read the same x: one block_linear on the concatenated weight, quantized once at
    compile time; the outputs equal one GEMM per linear bit for bit on the CPU reference path."""
    from fp8inductor import reference as ref

    model = _Siblings(bias=bias).eval()
    x = torch.randn(*shape)
    calls = []
    original = ref.quantize_weight_ref
    monkeypatch.setattr(
        ref, "quantize_weight_ref", lambda w, *a, **k: (calls.append(tuple(w.shape)), original(w, *a, **k))[1]
    )
    y, y_again, seen = _run_twice(model, x)
    assert seen["sibling_groups"] == 1 and seen["linears_fused"] == 3 and seen["linears_converted"] == 4
    assert sorted(calls) == [(256, 512), (512, 256)]  # o, and cat(q, k, v) once: at compile time only
    y_sep, _, seen_sep = _run_twice(model, x, fuse_siblings=False)
    assert "sibling_groups" not in seen_sep
    assert torch.equal(y, y_again) and torch.equal(y, y_sep)


def test_siblings_fused_only_where_blocks_align_and_bias_agrees():
    x = torch.randn(4, 256)
    _, _, seen = _run_twice(_Siblings(n_k=200).eval(), x)  # k: N = 200 straddles a weight block
    assert seen["sibling_groups"] == 1 and seen["linears_fused"] == 2
    _, _, seen = _run_twice(_Siblings(bias=True, v_bias=False).eval(), x)  # v has no bias
    assert seen["sibling_groups"] == 1 and seen["linears_fused"] == 2
    with pytest.raises(TypeError, match="fuse_siblings"):
        FP8BlockConfig(fuse_siblings="yes")


class _SiblingWeightReusedElsewhere(nn.Module):
    """q and k read x (a sibling group); q's weight is also applied to another activation, and v,
    on that activation, would pair with q a second time."""

    def __init__(self, with_v: bool) -> None:
        super().__init__()
        self.q = nn.Linear(256, 256, bias=False)
        self.k = nn.Linear(256, 128, bias=False)
        self.v = nn.Linear(256, 128, bias=False) if with_v else None

    def forward(self, x):
        z = x * 2.0
        outs = [self.q(x), self.k(x), nn.functional.linear(z, self.q.weight)]
        return torch.cat(outs + ([self.v(z)] if self.v is not None else []), -1)


@pytest.mark.parametrize("with_v", [False, True], ids=["alone", "second_group"])
@pytest.mark.parametrize("rows", [5, 4096], ids=["fused", "unfused"])
def test_a_sibling_weight_used_elsewhere_is_quantized_once(monkeypatch, rows, with_v):
    """A weight in a sibling group that another matmul also reads (on another activation) reads
    that group's FP8 rows there too: one FP8 copy of it, not two, and the report's bytes say so.
    (It was quantized a second time on its own, or inside a second group with v, while the report
    counted it once.) The results equal the per-linear quantization bit for bit."""
    from fp8inductor import reference as ref

    calls = []
    original = ref.quantize_weight_ref
    monkeypatch.setattr(
        ref, "quantize_weight_ref", lambda w, *a, **k: (calls.append(tuple(w.shape)), original(w, *a, **k))[1]
    )
    model = _SiblingWeightReusedElsewhere(with_v).eval()
    x = torch.randn(rows, 256)
    y, _, seen = _run_twice(model, x)
    assert seen["linears_converted"] == 3 + with_v
    # cat(q, k), and v alone: q is not quantized again, on its own or in a cat(q, v)
    assert sorted(calls) == [(128, 256)] * with_v + [(384, 256)]
    report = fp8inductor.last_report()
    widths = (256, 128, 128) if with_v else (256, 128)
    assert report.weight_bytes_after == sum(n * 256 + 4 * (n // 128) * 2 for n in widths)
    assert report.weight_bytes_before == 4 * 256 * sum(widths)
    y_sep, _, _ = _run_twice(model, x, fuse_siblings=False)
    assert torch.equal(y, y_sep)


def test_report_counts_one_fp8_copy_per_weight_layout():
    """A square weight read as ``x @ W.T`` and as ``x @ W`` needs two FP8 copies (each GEMM reads
    row-major [N, K] codes); the report's bytes count both, and the original weight once."""

    class TwoWays(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(256, 256) / 16)

        def forward(self, x):
            return x @ self.w.t() + x @ self.w

    _run_twice(TwoWays().eval(), torch.randn(4, 256))
    report = fp8inductor.last_report()
    assert sorted(d.weight_layout for d in report.converted) == ["KN", "NK"]
    assert report.weight_bytes_before == 256 * 256 * 4
    assert report.weight_bytes_after == 2 * (256 * 256 + 4 * 2 * 2)


def test_fused_siblings_share_one_fp8_copy_across_graphs(monkeypatch):
    """The concatenated weight is a fresh tensor in every compile; the content-keyed weight memo
    still hands every graph the first graph's FP8 copy."""
    import weakref

    from fp8inductor import reference as ref

    made = []
    original = ref.quantize_weight_ref

    def counting(w, *args, **kwargs):
        out = original(w, *args, **kwargs)
        made.append((tuple(w.shape), weakref.ref(out[0])))
        return out

    monkeypatch.setattr(ref, "quantize_weight_ref", counting)
    model = _Siblings().eval()
    fast = torch.compile(model, backend="fp8block", dynamic=False)  # three static graphs, all fused
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for shape in [(4, 256), (7, 256), (2, 3, 256)]:
            fast(torch.randn(*shape))
    assert counters["fp8inductor"]["sibling_groups"] == 3
    cats = [r for s, r in made if s == (512, 256)]
    assert len(cats) == 1 and cats[0]() is not None


@pytest.mark.parametrize("dynamic", [False, True])
def test_unfused_graphs_use_rows_of_the_same_concatenated_fp8_weight(monkeypatch, dynamic):
    """A graph that does not fuse the GEMM (large or symbolic M) still quantizes cat(W_i) and gives
    each linear its rows: every graph of the model holds one FP8 copy, fused or not, and the
    unfused results equal the per-linear quantization bit for bit."""
    from fp8inductor import reference as ref

    made = []
    original = ref.quantize_weight_ref
    monkeypatch.setattr(
        ref, "quantize_weight_ref", lambda w, *a, **k: (made.append(tuple(w.shape)), original(w, *a, **k))[1]
    )
    model = _Siblings(bias=True).eval()
    fast = torch.compile(model, backend="fp8block", dynamic=dynamic)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        big = torch.randn(200, 256)
        y_big = fast(big)  # M = 200: not fused
        fast(torch.randn(1, 256))  # M = 1 (Dynamo specializes it): fused
    assert sorted(made) == [(256, 512), (512, 256)], made  # o, and cat(q, k, v) once for both graphs
    torch._dynamo.reset()
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y_sep = torch.compile(model, backend="fp8block", options={"fuse_siblings": False})(big)
    assert torch.equal(y_big, y_sep)


def test_linear_chains_and_outputs_leaving_the_graph():
    """o(q(x)) on 2-D x (the second linear's activation is the first's rewritten output), and
    siblings whose outputs are graph outputs: those keep one GEMM each (contiguous outputs)."""
    chain = nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 256)).eval()
    x = torch.randn(4, 256)
    y, _, seen = _run_twice(chain, x)
    torch.testing.assert_close(
        y, fp8_linear(fp8_linear(x, chain[0].weight, chain[0].bias), chain[1].weight, chain[1].bias)
    )

    class TwoOut(_Siblings):
        def forward(self, x):
            return self.q(x), self.k(x)

    model = TwoOut().eval()
    (q, k), _, seen = _run_twice(model, x)
    assert "sibling_groups" not in seen and q.is_contiguous() and k.is_contiguous()
    assert torch.equal(q, fp8_linear(x, model.q.weight)) and torch.equal(k, fp8_linear(x, model.k.weight))
    q.view(-1)


def test_siblings_fused_at_large_m_where_the_gemm_runs_on_cublas(monkeypatch):
    """Above SIBLING_FUSION_MAX_M the group fuses only if its fused GEMM would run on cuBLAS (no
    template epilogue to lose): asked of block_gemm.static_choice with the fused (M, sum N, K)."""
    from fp8inductor.kernels import block_gemm
    from fp8inductor.kernels.config import CONFIGS, CUBLAS
    from fp8inductor.passes import SIBLING_FUSION_MAX_M

    asked = []

    def choice(device, m, n, k, out_dtype, bias_dtype):
        asked.append((m, n, k, out_dtype, bias_dtype))
        return CUBLAS if n == 512 else CONFIGS["tma_128x128"]  # cat(q, k, v): 256 + 128 + 128

    monkeypatch.setattr(block_gemm, "static_choice", choice)
    x = torch.randn(SIBLING_FUSION_MAX_M + 1, 256)
    model = _Siblings(bias=True).eval()
    y, _, seen = _run_twice(model, x)
    assert seen["sibling_groups"] == 1 and seen["linears_fused"] == 3
    assert (SIBLING_FUSION_MAX_M + 1, 512, 256, torch.float32, torch.float32) in asked
    y_sep, _, _ = _run_twice(model, x, fuse_siblings=False)
    assert torch.equal(y, y_sep)  # the CPU reference path: one GEMM per linear gives the same bits
    monkeypatch.setattr(block_gemm, "static_choice", lambda *a: CONFIGS["tma_128x128"])
    _, _, seen = _run_twice(_Siblings().eval(), x)
    assert "sibling_groups" not in seen


def test_siblings_not_fused_for_large_or_symbolic_m():
    from fp8inductor.passes import SIBLING_FUSION_MAX_M

    _, _, seen = _run_twice(_Siblings().eval(), torch.randn(SIBLING_FUSION_MAX_M + 1, 256))
    assert "sibling_groups" not in seen and seen["linears_converted"] == 4
    torch._dynamo.reset()
    counters.clear()
    model = _Siblings().eval()
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = torch.compile(model, backend="fp8block", dynamic=True)
        fast(torch.randn(5, 256))
    assert "sibling_groups" not in counters["fp8inductor"]


def test_quantized_linear_at_pdl_sizes_stays_the_op(monkeypatch):
    """At M <= PDL_MAX_M on an sm_90 GPU a tiles config runs as the op (PDL-launched behind the norm
    kernel), not as a template; split-K, TMA and cuBLAS picks and larger M are unaffected, and
    FP8INDUCTOR_PDL=0 keeps the template. The capability check is patched: this runs on a CPU."""
    from fp8inductor import lowering
    from fp8inductor.kernels import pdl
    from fp8inductor.kernels.config import CONFIGS

    monkeypatch.setattr(pdl, "_capable", lambda device: True)
    monkeypatch.setattr(pdl, "triton_interpreting", lambda: False)
    cuda = torch.device("cuda", 0)
    tiles = next(c for c in CONFIGS.values() if c.kind == "tiles")
    others = [c for c in CONFIGS.values() if c.kind != "tiles"]
    assert {c.kind for c in others} >= {"tma", "splitk"}
    assert lowering._op_overlaps_producer(cuda, 1, tiles) and lowering._op_overlaps_producer(cuda, pdl.PDL_MAX_M, tiles)
    assert not lowering._op_overlaps_producer(cuda, pdl.PDL_MAX_M + 1, tiles)
    assert not any(lowering._op_overlaps_producer(cuda, 1, c) for c in others)
    assert not lowering._op_overlaps_producer(torch.device("cpu"), 1, tiles)
    monkeypatch.setenv("FP8INDUCTOR_PDL", "0")
    assert not lowering._op_overlaps_producer(cuda, 1, tiles)


def test_weights_converted_after_compile_are_refused_not_ignored():
    """model.float() / .half() swap param.data in place: the frozen graph would keep running the old
    bf16 weights (and return bf16). The compiled model says so instead."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(100, 256), nn.Linear(256, 256)).to(BF16).eval()
    ids = torch.randint(0, 100, (2, 8))
    with torch.inference_mode():
        fast = compile_fp8(model)
        assert fast(ids).dtype == BF16
        assert fast(ids).dtype == BF16  # unchanged weights: no complaint
        model.float()
        with pytest.raises(RuntimeError, match=r"changed from torch.bfloat16 on cpu to torch.float32 on cpu"):
            fast(ids)
        fp8inductor.reset()  # what the message asks for: a recompile against the fp32 weights
        out = fast(ids)
        assert out.dtype == torch.float32
        assert rel_err(out, model(ids)) < 0.1


@pytest.mark.parametrize("case", ["fp32 activation", "fp32 bias"])
def test_mixed_dtype_linear_is_a_clear_error(case):
    """Eager rejects both (mat1/mat2, self/mat2 dtypes); Inductor's freezing crashed deep on them."""
    lin = nn.Linear(256, 128).to(BF16).eval()
    x = torch.randn(4, 256, dtype=BF16)
    if case == "fp32 activation":
        x = x.float()
    else:
        lin.bias = nn.Parameter(lin.bias.detach().float())
    with torch.inference_mode():
        with pytest.raises(RuntimeError):
            lin(x)  # eager
        with pytest.raises(Exception, match="rejects mixed dtypes here in eager mode too"):
            compile_fp8(lin)(x)


def test_a_weight_times_weight_product_is_not_quantized_as_an_activation():
    """``F.linear(x, W + B @ A)`` (a merged LoRA): ``B @ A`` is a matmul against a parameter whose
    "activation" B is a parameter too. Quantizing B as an activation put FP8 error into a constant
    that freezing folds in high precision; it stays unconverted (the report lists B and A as unmatched), and the
    linear against W + B @ A, which the pass cannot trace to a parameter, stays high precision."""

    class MergedLora(nn.Module):
        def __init__(self):
            super().__init__()
            self.W = nn.Parameter(torch.randn(256, 256) * 0.05)
            self.B = nn.Parameter(torch.randn(256, 128) * 0.05)
            self.A = nn.Parameter(torch.randn(128, 256) * 0.05)

        def forward(self, x):
            return nn.functional.linear(x, self.W + self.B @ self.A)

    model = MergedLora().eval()
    x = torch.randn(8, 256)
    with torch.inference_mode():
        want = model(x)
        got = torch.compile(model, backend="fp8block")(x)
    report = fp8inductor.last_report()
    assert not any(d.converted for d in report.decisions), report.decisions
    assert {d.weight for d in report.skipped if d.pattern == "unmatched"} == {"B", "A"}, report.decisions
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
