"""Compile every kernel_lab kernel/config for sm_90 on a machine WITHOUT a GPU, and report resources.

    python benchmarks/lab/compile_check.py [--variants v1_naive,v4_tma]

Uses the installed Triton's NVIDIA backend (ptxas ships with the wheel) behind a fake driver: each
launcher of ``benchmarks/kernel_lab.py`` runs on small CPU tensors, and ``kernel[grid](...)`` is
redirected to ``kernel.warmup(...)`` (compile only). For every compiled kernel it prints the shared
memory Triton asks for (> 232448 B fails to launch on an H100), and registers / local-memory
(spill) bytes read from the cubin by ``cuobjdump -res-usage``. Integer arguments are chosen with the
same %16 specialization as the lab's shapes. Timings here are this machine's CPU, not the H100's.
Do not set TRITON_INTERPRET.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime.jit import KernelInterface

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent))

import kernel_lab as lab  # noqa: E402 (after the sys.path inserts)

from fp8inductor.kernels.pdl import triton_interpreting  # noqa: E402
from fp8inductor.reference import quantize_activation_ref, quantize_weight_ref  # noqa: E402

H100_MAX_SHARED = 232448


class FakeCudaDriver:
    """Just enough of a driver for JITFunction.run(warmup=True) to compile for sm_90."""

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

    def get_active_torch_device(self):
        return torch.device("cpu")


COMPILED: list[tuple[str, object, float]] = []


def _warmup_getitem(self, grid):
    def compile_only(*args, **kwargs):
        t = time.time()
        k = self.warmup(*args, grid=grid, **kwargs)
        COMPILED.append((self.fn.__name__, k, time.time() - t))

    return compile_only


def ctas_per_sm(shared: int, regs: int, warps: int) -> int:
    """H100 occupancy bound: 228 KB shared (1 KB reserved per CTA), 64K registers, 64 warps per SM."""
    regs_per_warp = -(-max(regs, 1) * 32 // 256) * 256  # allocated in units of 256 per warp
    return max(0, min(233472 // (shared + 1024), 65536 // (regs_per_warp * warps), 64 // warps))


def resources(kernel) -> str:
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        out = subprocess.run([str(cuobjdump), "-res-usage", f.name], capture_output=True, text=True, check=False).stdout
    m = re.search(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)", out)
    if not m:
        return out.strip()[-120:]
    reg, stack, _, local = m.groups()
    spill = "  SPILLS" if int(local) or int(stack) else ""
    occ = ctas_per_sm(kernel.metadata.shared, int(reg), kernel.metadata.num_warps)
    return f"regs {reg:>3s} stack {stack:>4s}{spill}  CTAs/SM {occ}  {mma_stats(kernel)}"


def mma_stats(kernel) -> str:
    """MMA flavour and the wgmma wait depths in the PTX (wait_group 0 = no MMA left in flight)."""
    ptx = kernel.asm.get("ptx", "")
    n_wgmma = len(re.findall(r"wgmma\.mma_async", ptx))
    if not n_wgmma:
        n_sync = len(re.findall(r"mma\.sync", ptx))
        return f"mma.sync x{n_sync}"
    waits = sorted({int(w) for w in re.findall(r"wgmma\.wait_group\.sync\.aligned\s+(\d+)", ptx)})
    return f"wgmma x{n_wgmma} waits {waits}"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--variants", default="")
    args = p.parse_args()
    if triton_interpreting():
        print("unset TRITON_INTERPRET", file=sys.stderr)
        return 2
    triton.runtime.driver.set_active(FakeCudaDriver())
    KernelInterface.__getitem__ = _warmup_getitem
    lab.NUM_SMS = 132
    wanted = {s for s in args.variants.split(",") if s}
    bad = 0
    # (M, N, K): K and N multiples of 16 as in the suite (N % 128 != 0 like 2112); M = 1 and 64.
    shapes = {"large": (256, 2112, 1024), "small": (1, 2112, 1024)}
    for part, (m, n, k) in shapes.items():
        g = torch.Generator().manual_seed(0)
        xq, xs = quantize_activation_ref(torch.randn(m, k, generator=g))
        wq, ws = quantize_weight_ref(torch.randn(n, k, generator=g))
        bias = torch.randn(n, generator=g).to(torch.bfloat16)
        for v in lab.VARIANTS:
            if v.kind != "fp8" or (wanted and v.name not in wanted):
                continue
            cfgs = v.large if part == "large" else v.small
            for cfg in cfgs:
                for b in (None, bias) if cfg is cfgs[0] else (None,):
                    COMPILED.clear()
                    label = f"{part:5s} {v.name:<10s} {cfg.label + (' +bias' if b is not None else ''):<34s}"
                    try:
                        v.fn(xq, xs, wq, ws, b, cfg)
                    except Exception as exc:  # noqa: BLE001
                        bad += 1
                        msg = " | ".join(s.strip() for s in str(exc).splitlines() if s.strip())
                        print(f"{label} COMPILE FAIL {type(exc).__name__}: {msg[:400]}", flush=True)
                        continue
                    for name, kern, dt in COMPILED:
                        shared = kern.metadata.shared
                        flag = "  SHARED TOO BIG" if shared > H100_MAX_SHARED else ""
                        bad += bool(flag)
                        print(
                            f"{label} {name:<24s} {dt:5.1f}s shared {shared:>6d}  {resources(kern)}{flag}", flush=True
                        )
    print(f"triton {triton.__version__}: {bad} problems", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
