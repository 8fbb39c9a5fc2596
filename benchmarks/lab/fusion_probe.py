"""Which kernels does Inductor emit around a linear? (GPU; lab tool for the template lowering.)

    python benchmarks/lab/fusion_probe.py [--why]

Compiles small MLP blocks (bias + SiLU, gated SiLU * mul, residual add; 2-D and 3-D activations)
with ``fp8block`` and, for comparison, bf16 ``inductor`` max-autotune (Inductor's own mm
templates), and prints the Triton kernels each generated graph launches. ``--why`` turns on
Inductor's fusion log (debug level) to show why an epilogue was not fused.
"""

from __future__ import annotations

import argparse
import re

import torch
import torch.nn.functional as F
from torch import nn
from torch._inductor.utils import run_and_get_code


class Block(nn.Module):
    def __init__(self, gated: bool) -> None:
        super().__init__()
        self.gated = gated
        self.l1 = nn.Linear(512, 768)
        self.l2 = nn.Linear(512, 768, bias=False)
        self.l3 = nn.Linear(768, 512)

    def forward(self, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.l1(x))
        if self.gated:
            h = h * self.l2(x)
        return self.l3(h) + r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--why", action="store_true")
    ap.add_argument("--fp8-only", action="store_true", help="skip the bf16 max-autotune comparison")
    args = ap.parse_args()
    if args.why:
        torch._logging.set_logs(fusion=True)
    runs = [("fp8block", None)] + ([] if args.fp8_only else [("inductor", {"max_autotune": True})])
    for backend, options in runs:
        for gated in (False, True):
            for shape in ((512, 512), (2, 256, 512)):
                torch._dynamo.reset()
                model = Block(gated).cuda().bfloat16()
                x = torch.randn(*shape, device="cuda", dtype=torch.bfloat16)
                r = torch.randn_like(x)
                with torch.inference_mode():
                    _, codes = run_and_get_code(torch.compile(model, backend=backend, options=options), x, r)
                kernels = re.findall(r"(triton_\w+)\.run", codes[0])
                print(f"{backend:9s} gated={gated!s:5s} x{list(shape)}: {kernels}", flush=True)


if __name__ == "__main__":
    main()
