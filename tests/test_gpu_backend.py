"""fp8block on the GPU: the compiled models run the Triton kernels (H100 / any cc >= 8.9).

Same comparisons as ``test_models.py``, with everything on CUDA: compiled model vs the eager
emulation (``quantize_`` on a copy, which calls the same Triton kernels eagerly), and CUDA graphs
(``reduce-overhead``) vs plain compile.
"""

from __future__ import annotations

import model_zoo as zoo
import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

import fp8inductor
from fp8inductor.testing import rel_err

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("fresh_dynamo")]


def _on_cuda(builder, dtype):
    torch.manual_seed(0)
    model, inputs, n = builder(dtype)
    return model.cuda(), {k: v.cuda() for k, v in inputs.items()}, n


@pytest.mark.parametrize("name", list(zoo.MODELS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_model_on_cuda_matches_emulation(name, dtype):
    model, inputs, n_linears = _on_cuda(zoo.MODELS[name], dtype)
    with torch.inference_mode():
        y = zoo.main_output(torch.compile(model, backend="fp8block", fullgraph=True)(**inputs))
        report = fp8inductor.last_report()
        emulated = zoo.main_output(zoo.emulated(model)(**inputs))
        plain = zoo.main_output(model(**inputs))
    assert len(report.converted) == n_linears, str(report)
    # Tolerances and their reasons: tests/test_models.py (same kernels eagerly and compiled).
    assert rel_err(y, emulated) < (1e-5 if dtype == torch.float32 else 0.08)
    assert rel_err(y, plain) < 0.15


def test_cuda_graphs_give_the_same_result():
    model, inputs, _ = _on_cuda(zoo.llama, torch.bfloat16)
    with torch.inference_mode():
        y = zoo.main_output(torch.compile(model, backend="fp8block")(**inputs)).clone()
        torch._dynamo.reset()
        f = torch.compile(model, backend="fp8block", mode="reduce-overhead")
        for _ in range(3):  # warm-up, record, replay
            y_graph = zoo.main_output(f(**inputs)).clone()
    assert torch.equal(y, y_graph)


def test_dynamic_m_on_cuda_compiles_once_and_matches_cpu():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(512, 1024), nn.SiLU(), nn.Linear(1024, 384)).to(torch.bfloat16)
    f = torch.compile(m.cuda(), backend="fp8block", dynamic=True)
    with torch.inference_mode():
        for rows in (2, 7, 64, 300, 301):  # 301: cuBLAS (where picked) on 304 padded rows
            x = torch.randn(rows, 512, dtype=torch.bfloat16)
            q0, s0 = fp8inductor.quantize_weight(m[0].weight.cpu())
            q2, s2 = fp8inductor.quantize_weight(m[2].weight.cpu())
            h = torch.nn.functional.silu(fp8inductor.block_fp8_linear(x, q0, s0, m[0].bias.cpu()))
            expect = fp8inductor.block_fp8_linear(h, q2, s2, m[2].bias.cpu())
            assert rel_err(f(x.cuda()).cpu(), expect) < 1e-2
    assert counters["stats"]["unique_graphs"] == 1


def test_batch_one_linears_run_fp8_under_coordinate_descent_tuning():
    """mode="max-autotune" turns coordinate-descent tuning on, whose aten.mm decomposition rewrote an
    M = 1 linear as mul + sum before the FP8 pass (a decode step then ran bf16: H100, 2026-11-25)."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(512, 1024), nn.SiLU(), nn.Linear(1024, 384)).to(torch.bfloat16).cuda()
    x = torch.randn(1, 512, dtype=torch.bfloat16, device="cuda")
    with torch.inference_mode():
        y = torch.compile(m, backend="fp8block", options={"coordinate_descent_tuning": True})(x)
        report = fp8inductor.last_report()
        expect = zoo.emulated(m)(x)
    assert len(report.converted) == 2, str(report)
    assert rel_err(y, expect) < 0.08  # same kernels eagerly and compiled (tests/test_models.py)
