"""Programmatic dependent launch (PDL) for the small-M linear: activation quant -> GEMM.

On sm_90 a kernel launched with ``launch_pdl=True`` may start while the kernel before it in the
stream is still running, once every program of that kernel has run ``griddepcontrol.launch_dependents``
(or exited). It must then run ``griddepcontrol.wait`` (``tl.extra.cuda.gdc_wait``), which returns when
the previous grid has finished and its memory is visible, before it touches memory that kernel writes
or reads. CUDA graph capture keeps the overlap (a programmatic edge).

Our use, in ``fp8_block_linear`` at small M (decode):

* the activation quant kernel waits first (it reads the producer's output), then lets the GEMM launch;
* the GEMM, launched early, prefetches the first K blocks of its weight tile into L2 (weights are
  never written by a kernel of the graph) and then waits for the quant kernel before it reads xq.

So the GEMM's launch and the start of its weight stream overlap the quant kernel. The fused
RMSNorm + quantization kernel (``kernels/norm_quant.py``), which replaces the quant kernel where the
fp8block pass fuses a norm, does the same.

Measured (H100, torch 2.11, triton 3.6, 2026-11-25, ``benchmarks/lab/pdl_lab.py``: 8 Llama-3-8B
decoder layers of FP8 linears with pointwise kernels between them, one CUDA graph, us per step):

| M | off | PDL, no prefetch | prefetch 1 K block | prefetch 2 | prefetch 4 (= num_stages) |
|---|---|---|---|---|---|
| 1 | 947.5 | 917.9 (1.032x) | 910.1 (1.041x) | 912.2 (1.039x) | 943.5 (1.004x) |
| 8 | 1020.6 | 1027.6 (0.993x) | 1019.7 (1.001x) | 1022.5 (0.998x) | 1052.4 (0.970x) |
| 32 | 1102.0 | 1138.0 (0.968x) | 1156.5 (0.953x) | 1178.1 (0.935x) | 1242.0 (0.887x) |

(Raw data: ``docs/bench_pdl_lab.json``; every config of this chain has num_stages = 4.) Every
variant's output was bit-equal to PDL off. Hence PDL with a one-block prefetch up to
``PDL_MAX_M`` = 8 rows (a gain at M=1, even at M=8), off above (a loss at M=32: GEMM programs
that launched early hold SM slots while they wait).

``FP8INDUCTOR_PDL=0`` turns it off (A/B measurements, or a driver that misbehaves).
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl


@functools.cache
def _capable(device: torch.device) -> bool:
    return torch.cuda.get_device_capability(device)[0] >= 9


PDL_MAX_M = 8  # rows up to which the quant kernel and the GEMM launch with PDL (table above)
PDL_PREFETCH_K_BLOCKS = 1  # weight K blocks a PDL-launched GEMM prefetches into L2 (table above)


def triton_interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter (``TRITON_INTERPRET`` set to any true value)."""
    interpret = getattr(getattr(getattr(triton, "knobs", None), "runtime", None), "interpret", None)  # triton >= 3.4
    if interpret is not None:
        return bool(interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def pdl_enabled(device: torch.device, m: int) -> bool:
    """PDL for a linear of ``m`` rows on ``device``: m <= PDL_MAX_M, a CUDA GPU of compute capability
    >= 9.0, not the Triton interpreter, and ``FP8INDUCTOR_PDL`` not "0" (read at every launch)."""
    if m > PDL_MAX_M or device.type != "cuda" or triton_interpreting() or not env_enabled():
        return False
    return _capable(device)


def env_enabled() -> bool:
    """PDL is allowed unless ``FP8INDUCTOR_PDL=0`` (read on every call). It also steers the Inductor
    lowering (``lowering._op_overlaps_producer``), so the fp8block pass's cache key includes it."""
    return os.environ.get("FP8INDUCTOR_PDL", "1") != "0"


def launch_options(enabled: bool) -> dict:
    """Extra launch keywords of a PDL launch (none otherwise, so that other launches stay as they were)."""
    return {"launch_pdl": True} if enabled else {}


@triton.jit
def prefetch_l2(ptrs):
    """``prefetch.global.L2`` of the line holding each address of ``ptrs`` (any tile of pointers)."""
    tl.inline_asm_elementwise(
        "prefetch.global.L2 [$1]; mov.u32 $0, 0;", "=r,l", [ptrs], dtype=tl.int32, is_pure=False, pack=1
    )
