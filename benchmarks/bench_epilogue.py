"""Epilogue fusion, measured: a Llama-3-8B MLP block compiled three ways (GPU).

    python benchmarks/bench_epilogue.py [--out docs/bench_epilogue.json] [--ms 1,16,128,512,2048,8192]

Block: ``y = down(silu(gate(x)) * up(x)) + x`` with x [1, M, 4096], gate/up 4096 -> 14336 and down
14336 -> 4096, bf16 weights (random, scaled 1/sqrt(K)). Rows, each compiled once per M (static shapes):

* ``bf16``: ``torch.compile`` (Inductor default), bf16 cuBLAS GEMMs;
* ``fp8 extern``: ``backend="fp8block"`` with ``gemm_lowering="extern"``: each linear is the opaque op
  (activation quant + GEMM kernels), SiLU * mul and the residual add are separate Inductor kernels;
* ``fp8 template``: ``backend="fp8block"`` (default): the GEMMs are Triton templates whose stores
  carry the SiLU * mul and the residual add.

Timing: ``triton.testing.do_bench_cudagraph`` (median of CUDA-graph replays, so host overhead is out
of the picture, as under ``mode="reduce-overhead"``). Also records the kernels each graph launches.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

import render_docs  # noqa: E402  (the docs-section writer shared by the benchmarks)


class MLPBlock(nn.Module):
    def __init__(self, hidden: int = 4096, inter: int = 14336) -> None:
        super().__init__()
        self.gate = nn.Linear(hidden, inter, bias=False)
        self.up = nn.Linear(hidden, inter, bias=False)
        self.down = nn.Linear(inter, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x)) + x


def _build(seed: int = 0) -> MLPBlock:
    torch.manual_seed(seed)
    block = MLPBlock().to("cuda", torch.bfloat16)
    with torch.no_grad():
        for lin in (block.gate, block.up, block.down):
            lin.weight.normal_(0.0, lin.in_features**-0.5)
    return block.eval()


def _measure(block: MLPBlock, x: torch.Tensor, backend: str, options: dict | None) -> dict:
    import triton
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    compiled = torch.compile(block, backend=backend, options=options)
    with torch.inference_mode():
        y, codes = run_and_get_code(compiled, x)
        ms = triton.testing.do_bench_cudagraph(lambda: compiled(x), rep=100)
    kernels = re.findall(r"(triton_\w+)\.run", codes[0])
    externs = re.findall(r"torch\.ops\.fp8inductor\.(\w+)\.default\(", codes[0])
    return {"ms": ms, "y": y, "kernels": kernels, "fp8inductor_ops": externs}


DOCS_SECTION = "bench_epilogue"  # render_docs markers around the section in docs/benchmarks.md


def render(data: dict) -> str:
    """The docs/benchmarks.md section for a bench_epilogue JSON (between render_docs markers)."""
    begin, end = render_docs.markers(DOCS_SECTION)
    lines = [
        begin,
        "## Epilogue fusion (`benchmarks/bench_epilogue.py`)",
        "",
        f"{data['device']}, torch {data['torch']}, triton {data['triton']}, {data['date']}. Block: "
        f"`{data['block']}`. Time: {data['timing']}, so host overhead is excluded. Each row is compiled "
        "once per M (static shapes); `fp8 extern` is `options={'gemm_lowering': 'extern'}` (the opaque op, "
        "SiLU * mul and the residual add as separate kernels), `fp8 template` the default lowering.",
        "",
        "| M | bf16 µs | fp8 extern µs | fp8 template µs | template vs extern | template vs bf16 | template graph's kernels |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        t = r["fp8 template"]
        kernels = len(t["kernels"]) + len(t["fp8inductor_ops"])
        ops = ", ".join(t["fp8inductor_ops"])
        lines.append(
            f"| {r['M']} | {r['bf16']['us']:.1f} | {r['fp8 extern']['us']:.1f} | {t['us']:.1f} | "
            f"{r['template_vs_extern']:.2f}x | {r['template_vs_bf16']:.2f}x | {kernels} ({len(t['kernels'])} Triton + {ops}) |"
        )
    lines += [
        "",
        "Reading: with the template the whole block is 5 launches at M >= 128 (two activation quantizations, "
        "three GEMM templates carrying SiLU * mul and the residual add). At M <= 16 the down projection "
        "(N = 4096, few output tiles) takes the op's split-K path (its own quantization kernel, then the "
        "split-K GEMM, which since 0e351f6 also reduces), which has no single store to fuse into, so the residual add stays a "
        "separate kernel. The fused epilogue saves the bf16 round trips of the gate/up outputs and of the "
        "down projection's output: 4-6% at M <= 128, nothing measurable at M >= 2048 where the GEMMs "
        "dominate, and at M = 512 the template was 6% slower than the op (the same GEMM config with "
        "the gate product and SiLU in the persistent kernel's store; not profiled yet).",
        end,
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ms", default="1,16,128,512,2048,8192")
    ap.add_argument("--out", default=str(REPO_ROOT / "docs" / "bench_epilogue.json"))
    ap.add_argument("--render", metavar="JSON", help="only write the docs/benchmarks.md section from JSON")
    args = ap.parse_args()
    if args.render:
        section = render(json.loads(Path(args.render).read_text()))
        render_docs.update_docs(REPO_ROOT / "docs" / "benchmarks.md", section, DOCS_SECTION)
        return
    import triton

    import fp8inductor.backend  # noqa: F401  (turns freezing on: applies to the bf16 row too, as a user would see)

    block = _build()
    rows = []
    for m in [int(v) for v in args.ms.split(",")]:
        x = torch.randn(1, m, 4096, device="cuda", dtype=torch.bfloat16)
        res = {
            "bf16": _measure(block, x, "inductor", None),
            "fp8 extern": _measure(block, x, "fp8block", {"gemm_lowering": "extern"}),
            "fp8 template": _measure(block, x, "fp8block", None),
        }
        ref = res["bf16"]["y"].float()
        flops = 2 * m * 4096 * 14336 * 3
        row = {"M": m}
        for name, r in res.items():
            err = float((r["y"].float() - ref).norm() / ref.norm())
            row[name] = {
                "us": r["ms"] * 1e3,
                "tflops": flops / (r["ms"] * 1e-3) / 1e12,
                "rel_err_vs_bf16": err,
                "kernels": r["kernels"],
                "fp8inductor_ops": r["fp8inductor_ops"],
            }
        row["template_vs_extern"] = row["fp8 extern"]["us"] / row["fp8 template"]["us"]
        row["template_vs_bf16"] = row["bf16"]["us"] / row["fp8 template"]["us"]
        rows.append(row)
        print(
            f"M={m:5d}  bf16 {row['bf16']['us']:8.1f} us  extern {row['fp8 extern']['us']:8.1f} us  "
            f"template {row['fp8 template']['us']:8.1f} us  template/extern {row['template_vs_extern']:.2f}x  "
            f"vs bf16 {row['template_vs_bf16']:.2f}x  kernels(template)={len(row['fp8 template']['kernels'])} "
            f"ops={row['fp8 template']['fp8inductor_ops']}",
            flush=True,
        )
    out = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "date": datetime.date.today().isoformat(),
        "block": "y = down(silu(gate(x)) * up(x)) + x; hidden 4096, intermediate 14336, x [1, M, 4096] bf16",
        "timing": "triton.testing.do_bench_cudagraph median (ms -> us)",
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
