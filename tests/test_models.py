"""fp8block on small transformers models (random weights, nothing downloaded), on the CPU.

For each of Llama, Qwen2, GPT-2 (Conv1D) and BERT: the compile has no graph break
(``fullgraph=True``), the report converts every eligible linear (all but the tied or explicit
``lm_head``), and the output matches

* in fp32: the eager emulation of SPEC numerics (``quantize_`` on a copy) to 1e-5 relative
  (measured 0.9e-7 .. 2.1e-7 on 2.13+cpu: only Inductor's fp32 fusion order differs, too little to
  move an fp8 rounding);
* in bf16: plain bf16 to 0.15 relative (measured 0.009 BERT .. 0.07 Llama: e4m3 keeps 3 mantissa
  bits; random-init decoders amplify it), and the emulation to 0.08 (measured 0.008 .. 0.052:
  Inductor and eager round bf16 intermediates differently — 0.004 .. 0.008 between plain Inductor
  and eager — and every such difference can flip an fp8 rounding of the next layer's input).
"""

from __future__ import annotations

import model_zoo as zoo
import pytest
import torch

import fp8inductor
from fp8inductor.testing import rel_err

pytestmark = pytest.mark.usefixtures("fresh_dynamo")


@pytest.mark.parametrize("name", list(zoo.MODELS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_model_converts_every_linear_and_matches_spec(name, dtype):
    torch.manual_seed(0)
    model, inputs, n_linears = zoo.MODELS[name](dtype)
    with torch.inference_mode():
        y = zoo.main_output(torch.compile(model, backend="fp8block", fullgraph=True)(**inputs))
        report = fp8inductor.last_report()
        emulated = zoo.main_output(zoo.emulated(model)(**inputs))
        plain = zoo.main_output(model(**inputs))
    assert len(report.converted) == n_linears, str(report)
    assert {d.module for d in report.skipped} <= {"lm_head"}, str(report)
    # FP8 codes are 1 byte against bf16's 2 and fp32's 4 (+ one fp32 scale per 128x128 block)
    assert report.weight_bytes_after < 0.55 * report.weight_bytes_before * (0.5 if dtype == torch.float32 else 1)
    assert torch.isfinite(y).all()
    if dtype == torch.float32:
        assert rel_err(y, emulated) < 1e-5
    else:
        assert rel_err(y, emulated) < 0.08
    assert rel_err(y, plain) < 0.15
