"""MLP in row chunks (``FP8BlockConfig.mlp_chunk_rows``): does keeping the gate/up GEMM's output in L2
speed up SiLU * up + quantization?

    PYTHONPATH=. python benchmarks/lab/mlp_chunk_lab.py [--ms 2048,4096] [--chunks 512,1024] [--out f.json]

Runs on commit 914103d, which has the option and its pass (``fp8inductor/mlp_chunking.py``); both
were removed again after this lab, so on later trees only the unchunked variants run.

Answer (NVIDIA H200, torch 2.11 / triton 3.6, 2026-12-07; ``docs/bench_mlp_chunk_lab_h200.json``):
no. GPU kernel time of the block at M = 2048: 626 us unchunked, 686 us in chunks of 512, 664 in
chunks of 1024 (M = 4096: 1251, 1396, 1322). The chunks' quantization kernels took longer in sum
than the one unchunked kernel (68 against 57 us at M = 2048, C = 512), not shorter, the chunked
gate/up GEMMs 3% longer, and a pointwise kernel of 19 us per 2048 rows came on top. Outputs were
bit-equal to the unchunked graph's. docs/benchmarks.md has the model-level run.

Why: at Llama-3-8B prefill 1 x 2048 the fused gate/up GEMM writes a [2048, 28672] bf16 output
(117 MB, more than the H100's 50 MB L2) and the SiLU * up + quantization kernel reads it back from
HBM at ~2.5 TB/s (64 us per layer against bf16's 54 us; docs/benchmarks.md). In chunks of C rows
(``fp8inductor/mlp_chunking.py``) each chunk's output (29 MB at C = 512) may still be in L2 when
its quantization reads it; the price is the gate/up weight (117 MB fp8) streamed once per chunk and
smaller GEMMs.

The block timed is a Llama-3-8B decoder layer's second half, ``r + mlp(post_attention_layernorm(r))``
(transformers' LlamaRMSNorm and LlamaMLP, random bf16 weights), on M = batch x seq rows: compiled
bf16 (Inductor default) and ``fp8block`` with ``mlp_chunk_rows`` 0 (unchunked) and each C. Times:
GPU kernel time per call (torch.profiler, the sum over kernels; the largest kernels listed) and
``do_bench_cudagraph`` medians. Output difference against the unchunked fp8block output (the
gate/up GEMM may pick another cuBLAS algorithm for C rows).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys

import torch
import triton
import triton.testing
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

import fp8inductor  # noqa: F401  (registers the backend and the ops)
from fp8inductor.config import FP8BlockConfig

HIDDEN, INTER = 4096, 14336


class MlpHalf(nn.Module):
    """The second half of a Llama decoder layer: residual + MLP(RMSNorm(residual))."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = LlamaMLP(config)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return r + self.mlp(self.norm(r))


def kernel_us(fn) -> tuple[float, dict[str, float]]:
    """GPU kernel time per call (us) and the 8 largest kernels' times (quant_fusion_lab's profile)."""
    from quant_fusion_lab import kernel_us_per_kernel  # this directory: sys.path[0]

    total, per_kernel = kernel_us_per_kernel(fn)
    return total, dict(sorted(((n[:70], t) for n, t in per_kernel.items()), key=lambda kv: -kv[1])[:8])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ms", default="2048,4096", help="comma list of rows M (as [1, M, 4096])")
    ap.add_argument("--chunks", default="512,1024", help="comma list of mlp_chunk_rows to try")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dev = torch.device("cuda")
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=HIDDEN, intermediate_size=INTER, rms_norm_eps=1e-5)
    model = MlpHalf(config).to(dev, torch.bfloat16).eval()
    with torch.no_grad():
        for lin in (model.mlp.gate_proj, model.mlp.up_proj, model.mlp.down_proj):
            lin.weight.normal_(0, lin.in_features**-0.5)
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}
    rows = []
    with torch.inference_mode():
        for m in [int(v) for v in args.ms.split(",")]:
            r = torch.randn(1, m, HIDDEN, device=dev, dtype=torch.bfloat16)
            row: dict = {"m": m}
            variants = [("compile_bf16", "inductor", None), ("fp8block", "fp8block", {})]
            if "mlp_chunk_rows" in FP8BlockConfig.__dataclass_fields__:  # commit 914103d only
                variants += [
                    (f"fp8block_chunk{c}", "fp8block", {"mlp_chunk_rows": c}) for c in map(int, args.chunks.split(","))
                ]
            base = None
            for name, backend, options in variants:
                torch._dynamo.reset()
                compiled = torch.compile(model, backend=backend, options=options or None)
                out = compiled(r)
                call = functools.partial(compiled, r)
                total, kernels = kernel_us(call)
                entry = {
                    "kernel_us": total,
                    "graph_us": triton.testing.do_bench_cudagraph(call, rep=200) * 1e3,
                    "kernels": kernels,
                }
                if name == "fp8block":
                    base = out
                elif base is not None:
                    entry["max_abs_diff_vs_unchunked"] = float((out.float() - base.float()).abs().max())
                    entry["equal_to_unchunked"] = bool(torch.equal(out, base))
                row[name] = entry
                print(
                    f"m={m} {name:22s} kernels {total:8.1f} us  graph {entry['graph_us']:8.1f} us  "
                    f"diff {entry.get('max_abs_diff_vs_unchunked', '-')}"
                )
                print("     ", {n: round(t, 1) for n, t in kernels.items()})
                sys.stdout.flush()
            rows.append(row)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
