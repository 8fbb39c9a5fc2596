"""``fp8inductor.gqa_heads``: decode-time grouped-query attention reads the KV heads as they are.

Graph level: aten graphs of ``repeat_kv`` + SDPA (``make_fx``, the CPU flash op that Inductor's
CPU graphs hold) before and after the pass, run on the same inputs. Model level: a Llama decode
step against a static cache with a mask (the form whose ``repeat_kv`` transformers keeps).
Tolerances: the folded call runs the same attention over the same keys, but with other row/head
tiling, so the fp32 softmax sums may add in another order: 1e-5 relative in fp32; bf16 models
compare within a few bf16 roundings of the logits (2e-2 relative, vs FP8's ~5e-2 from eager).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters
from torch.fx.experimental.proxy_tensor import make_fx

import fp8inductor
from fp8inductor.gqa_heads import fold_gqa_heads
from fp8inductor.testing import rel_err

pytestmark = pytest.mark.usefixtures("fresh_dynamo")
aten = torch.ops.aten
_ON = {"fold_gqa_heads": True, "gqa_decode_kernel": False}  # the fold alone (the kernel is on by default)
_SDPA_OPS = {
    aten._scaled_dot_product_flash_attention_for_cpu.default,
    aten._scaled_dot_product_cudnn_attention.default,
    aten._scaled_dot_product_efficient_attention.default,
    aten._scaled_dot_product_flash_attention.default,
}


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """transformers' repeat_kv: [B, H_kv, S, D] -> [B, H_kv * n_rep, S, D] (a copy)."""
    b, h, s, d = x.shape
    return x[:, :, None, :, :].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


def attention(q, k, v, mask, n_rep: int, is_causal: bool = False):
    """q [B, H_q, S_q, D], k/v [B, H_kv, S, D], mask [B', 1 or H_q, S_q, S] additive or None."""
    return F.scaled_dot_product_attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), attn_mask=mask,
                                          is_causal=is_causal)  # fmt: skip


def _inputs(b=2, h_q=8, h_kv=2, s_q=1, s=40, d=32, mask_heads=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, s_q, h_q, d, generator=g).transpose(1, 2)  # [B, H_q, S_q, D], as transformers makes it
    k, v = (torch.randn(b, h_kv, s, d, generator=g) for _ in range(2))
    mask = torch.zeros(b, mask_heads, s_q, s)
    mask.masked_fill_(torch.rand(b, mask_heads, s_q, s, generator=g) < 0.3, float("-inf"))
    mask[..., 0] = 0.0  # every row attends somewhere
    return q, k, v, mask


def _traced(fn, args, mode="fake"):
    return make_fx(fn, tracing_mode=mode)(*args)


def _ops(gm, target):
    return [n for n in gm.graph.nodes if n.target == target]


@pytest.mark.parametrize("mask_heads", [1, 8, None], ids=["mask_b1s", "mask_per_head", "no_mask"])
def test_folds_decode_attention_and_keeps_its_values(mask_heads):
    q, k, v, mask = _inputs(mask_heads=mask_heads or 1)
    mask = None if mask_heads is None else mask
    gm = _traced(lambda q, k, v, m: attention(q, k, v, m, 4), (q, k, v, mask))
    assert len(_ops(gm, aten.expand.default)) == 2
    assert fold_gqa_heads(gm.graph) == 1
    gm.recompile()
    assert not _ops(gm, aten.expand.default), "the repeat_kv copies are still in the graph"
    (sdpa,) = [n for n in gm.graph.nodes if n.target in _SDPA_OPS]
    assert tuple(sdpa.args[0].meta["val"].shape) == (2, 2, 4, 32)  # [B, H_kv, n_rep query rows, D]
    assert tuple(sdpa.args[1].meta["val"].shape) == (2, 2, 40, 32)  # the KV heads as they are
    want = attention(q, k, v, mask, 4)
    got = gm(q, k, v, mask)
    assert got.shape == want.shape
    assert rel_err(got, want) < 1e-5


@pytest.mark.parametrize("case", ["prefill", "causal", "no_gqa", "mask_rows", "batch1"])
def test_leaves_other_attention_alone(case):
    n_rep, kw, causal = 4, {}, False
    if case == "prefill":
        kw = {"s_q": 3}  # more than one query position
    elif case == "batch1":
        kw = {"b": 1}  # a static batch of 1: measured slower folded (gqa_heads docstring)
    elif case == "no_gqa":
        n_rep, kw = 1, {"h_kv": 8}
    q, k, v, mask = _inputs(**kw)
    if case == "causal":
        mask, causal = None, True
    if case == "mask_rows":  # a mask of another form ([S_q, S], broadcast over batch and heads)
        mask = mask[0, 0]
    gm = _traced(lambda q, k, v, m: attention(q, k, v, m, n_rep, causal), (q, k, v, mask))
    before = [n.target for n in gm.graph.nodes]
    assert fold_gqa_heads(gm.graph) == 0
    assert [n.target for n in gm.graph.nodes] == before


@pytest.mark.parametrize("b", [1, 3])
@pytest.mark.parametrize("mask_kind", ["additive", "none"])
def test_decode_kernel_replaces_the_attention(b, mask_kind):
    """``decode_kernel``: one ``gqa_decode_attention`` call on the KV heads as stored, batch 1 too."""
    from fp8inductor import ops

    q, k, v, mask = (t.bfloat16() for t in _inputs(b=b))
    mask = None if mask_kind == "none" else mask
    gm = _traced(lambda q, k, v, m: attention(q, k, v, m, 4), (q, k, v, mask))
    assert fold_gqa_heads(gm.graph, decode_kernel=True) == 1
    gm.recompile()
    (call,) = _ops(gm, ops.gqa_decode_attention)
    assert not _ops(gm, aten.expand.default) and not [n for n in gm.graph.nodes if n.target in _SDPA_OPS]
    assert tuple(call.args[1].meta["val"].shape) == (b, 2, 40, 32)
    assert rel_err(gm(q, k, v, mask).float(), attention(q, k, v, mask, 4).float()) < 2**-7


def test_fold_copies_an_output_it_cannot_view():
    """The memory-efficient op returns [B, H, M, D] with [B, M, H, D] strides: the folded
    [B, H_kv, n_rep, D] output is then copied before its view to [B, H_q, 1, D] (a view would fail
    at compile time). Traced on the meta device: the op has no CPU kernel."""
    q, k, v, mask = (t.to("meta") for t in _inputs())

    def efficient(q, k, v, m):
        return aten._scaled_dot_product_efficient_attention(
            q, repeat_kv(k, 4), repeat_kv(v, 4), m.expand(2, 8, 1, 40), False)[0]  # fmt: skip

    gm = _traced(efficient, (q, k, v, mask))
    assert fold_gqa_heads(gm.graph) == 1
    (sdpa,) = _ops(gm, aten._scaled_dot_product_efficient_attention.default)
    (getitem,) = sdpa.users
    (copy,) = getitem.users
    assert copy.target == aten.clone.default and next(iter(copy.users)).target == aten.view.default
    (out,) = next(n for n in gm.graph.nodes if n.op == "output").all_input_nodes
    assert tuple(out.meta["val"].shape) == (2, 8, 1, 32)


@pytest.mark.parametrize("case", ["mask_over_keys", "value_dim", "strided_q"])
def test_decode_kernel_takes_only_what_it_can(case):
    """Forms the split-KV kernel does not take stay with SDPA: a mask that broadcasts over the keys
    ([B, 1, 1, 1]; folded instead), a value head dim other than the query's (left alone: the fold's
    view would not fit either) and a query whose head dim is strided (folded: the fold copies q)."""
    from fp8inductor import ops

    q, k, v, mask = (t.bfloat16() for t in _inputs())
    op = aten._scaled_dot_product_flash_attention_for_cpu.default
    if case == "mask_over_keys":
        mask = mask[..., :1]
    elif case == "value_dim":
        v = torch.randn(2, 2, 40, 64).bfloat16()
        mask, op = mask.expand(2, 8, 1, 40), aten._scaled_dot_product_efficient_attention.default
        q, k, v, mask = (t.to("meta") for t in (q, k, v, mask))  # no CPU kernel: traced only
    elif case == "strided_q":
        q = torch.randn(2, 32, 8, 1).bfloat16().permute(0, 2, 3, 1)  # [B, H_q, 1, D], D strided

    def call(q, k, v, m):
        if op == aten._scaled_dot_product_efficient_attention.default:
            return op(q, repeat_kv(k, 4), repeat_kv(v, 4), m, False)[0]
        return op(q, repeat_kv(k, 4), repeat_kv(v, 4), attn_mask=m)[0]

    gm = _traced(call, (q, k, v, mask))
    assert fold_gqa_heads(gm.graph, decode_kernel=True) == (0 if case == "value_dim" else 1)
    gm.recompile()
    assert not _ops(gm, ops.gqa_decode_attention)
    if case != "value_dim":  # against fp32 SDPA (called directly, the CPU op returns garbage for the strided q)
        want = attention(q.float(), k.float(), v.float(), mask.float(), 4)
        assert rel_err(gm(q, k, v, mask).float(), want) < 2**-7


def test_layers_share_one_folded_mask():
    q, k, v, mask = _inputs()

    def two_layers(q, k, v, m):
        return attention(q, k, v, m, 4) + attention(q * 2, k, v, m, 4)

    gm = _traced(two_layers, (q, k, v, mask))
    assert fold_gqa_heads(gm.graph) == 2
    gm.recompile()
    assert len(_ops(gm, aten.cat.default)) == 1
    assert rel_err(gm(q, k, v, mask), two_layers(q, k, v, mask)) < 1e-5


def _llama_decode(model, cfg, batch=2, max_cache_len=48, pos=20, seed=1):
    from transformers import StaticCache

    cache = StaticCache(config=cfg, max_cache_len=max_cache_len)
    cache.early_initialization(batch, cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads,
                               torch.bfloat16, "cpu")  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    for layer in cache.layers:
        layer.keys.normal_(generator=g)
        layer.values.normal_(generator=g)
    ids = torch.randint(0, cfg.vocab_size, (batch, 1), generator=g)
    mask = torch.zeros(batch, 1, 1, max_cache_len, dtype=torch.bool)  # [B, 1, 1, S], True = attend
    mask[..., : pos + 1] = True
    mask[0, ..., 3] = False  # the rows differ: a folded row must read its own batch's mask
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True,
                    cache_position=torch.tensor([pos]))  # fmt: skip
    return out.logits.float()


@pytest.mark.slow
def test_llama_decode_step_folds_every_layer():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=8,
                      num_key_value_heads=2, vocab_size=512)  # fmt: skip
    model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    eager = _llama_decode(model, cfg)
    outs = {}
    for fold in (False, True):
        torch._dynamo.reset()
        counters.clear()
        compiled = torch.compile(model, backend="fp8block", options={**_ON, "fold_gqa_heads": fold})
        outs[fold] = _llama_decode(compiled, cfg)
        assert counters["fp8inductor"]["gqa_heads_folded"] == (2 if fold else 0)
    assert rel_err(outs[True], outs[False]) < 2e-2
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend="fp8block")  # the default: the split-KV kernel's op
    # the op's CPU path rounds the attention once from fp32 (SDPA's CPU kernel differs by a bf16
    # rounding), and the FP8 quantization of o_proj's input turns such differences into code flips:
    # 2.7e-2 measured, against ~1 for a wrong attention
    assert rel_err(_llama_decode(compiled, cfg), outs[False]) < 5e-2
    assert counters["fp8inductor"]["gqa_heads_folded"] == 2
    assert counters["fp8inductor"]["gqa_decode_kernels"] == 2
    assert rel_err(outs[True], eager) < 1e-1  # FP8 linears: ~5e-2 from eager bf16 on this model
    assert fp8inductor.FP8BlockConfig(**_ON) != fp8inductor.FP8BlockConfig(fold_gqa_heads=False)  # the cache key


@pytest.mark.parametrize("kernel", [False, True])
def test_symbolic_batch_folds_once_for_every_batch(kernel):
    """One graph with a symbolic batch (``mark_dynamic``): the fold's views infer it, and each
    batch's rows read their own mask rows; or the kernel's op takes the symbolic shapes."""
    options = {**_ON, "gqa_decode_kernel": kernel}
    compiled = torch.compile(lambda q, k, v, m: attention(q, k, v, m, 4), backend="fp8block", options=options)
    dtype, tol = (torch.bfloat16, 2**-7) if kernel else (torch.float32, 1e-5)  # the kernel takes bf16/fp16
    for b in (2, 3, 5):
        q, k, v, mask = (t.to(dtype) for t in _inputs(b=b, seed=b))
        for t in (q, k, v, mask):
            torch._dynamo.mark_dynamic(t, 0)
        with torch.inference_mode():
            got = compiled(q, k, v, mask)
        assert rel_err(got.float(), attention(q, k, v, mask, 4).float()) < tol, b
    assert counters["stats"]["unique_graphs"] == 1
    assert counters["fp8inductor"]["gqa_heads_folded"] == 1
    assert counters["fp8inductor"]["gqa_decode_kernels"] == int(kernel)


@pytest.mark.gpu
@pytest.mark.parametrize(("batch", "s_q", "mask_heads"), [(8, 1, 1), (8, 1, 32), (2, 1, 1), (1, 1, 1), (2, 7, 1)])
def test_cuda_decode_attention_folds_into_the_fused_kernel(batch, s_q, mask_heads):
    """On the GPU the graph holds cuDNN's or the memory-efficient kernel's op (whichever SDPA picks
    for these inputs): folded, it runs 8 KV heads x 4 query rows over the 8 KV heads as stored.
    Batch 1 and prefill stay as they were. bf16 outputs: within 2 bf16 roundings (2**-7 relative)
    of eager's."""
    dev = torch.device("cuda")
    q, k, v, mask = (t.to(dev, torch.bfloat16) for t in _inputs(b=batch, h_q=32, h_kv=8, s_q=s_q, s=520, d=128,
                                                                mask_heads=mask_heads))  # fmt: skip
    compiled = torch.compile(lambda q, k, v, m: attention(q, k, v, m, 4), backend="fp8block", options=_ON)
    with torch.inference_mode():
        got = compiled(q, k, v, mask)
        want = attention(q, k, v, mask, 4)
    assert rel_err(got.float(), want.float()) < 2**-7
    assert counters["fp8inductor"]["gqa_heads_folded"] == (1 if s_q == 1 and batch > 1 else 0)


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [2, 8])
def test_cuda_fold_on_the_memory_efficient_op(batch):
    """The fold alone with SDPA's memory-efficient kernel (its output needs the copy before the view)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dev = torch.device("cuda")
    q, k, v, mask = (t.to(dev, torch.bfloat16) for t in _inputs(b=batch, h_q=32, h_kv=8, s=520, d=128))
    compiled = torch.compile(lambda q, k, v, m: attention(q, k, v, m, 4), backend="fp8block", options=_ON)
    with torch.inference_mode(), sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
        got = compiled(q, k, v, mask)
        want = attention(q, k, v, mask, 4)
    assert counters["fp8inductor"]["gqa_heads_folded"] == 1
    assert rel_err(got.float(), want.float()) < 2**-7


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("batch", "mask_heads", "d"), [(1, 1, 128), (8, 1, 128), (3, 1, 64), (8, 32, 128), (2, 1, 256)]
)
def test_cuda_decode_kernel_matches_eager(batch, mask_heads, d):
    """The default (``gqa_decode_kernel``): the Triton split-KV kernel in the compiled graph, against
    eager SDPA; a per-head mask or a head dim of 256 falls back to the fold (batch > 1)."""
    dev = torch.device("cuda")
    q, k, v, mask = (t.to(dev, torch.bfloat16) for t in _inputs(b=batch, h_q=32, h_kv=8, s=520, d=d,
                                                                mask_heads=mask_heads))  # fmt: skip
    compiled = torch.compile(lambda q, k, v, m: attention(q, k, v, m, 4), backend="fp8block")
    with torch.inference_mode():
        got = compiled(q, k, v, mask)
        want = attention(q, k, v, mask, 4)
    assert counters["fp8inductor"]["gqa_heads_folded"] == 1
    assert counters["fp8inductor"]["gqa_decode_kernels"] == (1 if mask_heads == 1 and d <= 128 else 0)
    assert rel_err(got.float(), want.float()) < 2**-7
