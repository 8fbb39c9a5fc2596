"""Inductor's Triton kernel plan of a compiled graph, made on the CPU (a development tool).

Inductor's Triton codegen also serves CPU tensors (``cpu_backend="triton"``), and its scheduling
decisions (which nodes fuse into one kernel, persistent or looped reductions, what each kernel
reads and writes) are the same as for a GPU: they depend on sizes and layouts, not on the device.
``plan_triton_kernels`` compiles a function that way and records every kernel as its source is
generated, then stops each graph's compile before Triton would need a driver to build it and runs
that graph eagerly, so that the graphs after a graph break are planned too. The tests use it
to check kernel shapes without a GPU (``tests/test_quant_ir.py``); ``benchmarks/lab/plan_traffic.py``
sums the bytes the kernels move.

With ``force_cublas`` every FP8 linear is told that its GEMM runs on cuBLAS (the H100's choice at
prefill sizes), so the lowering emits what a prefill graph on the H100 gets: the IR quantization
with column-major scales and an ``aten._scaled_mm`` call.

Private Inductor and torch APIs, patched for the duration of the call only (checked on torch 2.13
CPU): ``TritonKernel.codegen_kernel``, ``GraphLowering.codegen``, ``torch.utils._triton``'s backend
hash (it asks Triton for a driver).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable
from typing import Any
from unittest import mock

import torch


@dataclasses.dataclass(frozen=True)
class KernelPlan:
    """One Triton kernel: ``reduction`` (it reduces), ``persistent`` (one pass over the reduced
    elements), ``numels`` (``{"x": ..., "r0_": ...}``), and the sizes in bytes of the buffers it
    reads and writes (each counted once; buffers that live only inside the kernel are not)."""

    name_hint: str
    reduction: bool
    persistent: bool
    numels: dict[str, int]
    read_bytes: tuple[int, ...]
    write_bytes: tuple[int, ...]


class _StopAfterCodegen(Exception):
    pass


def plan_triton_kernels(
    fn: Callable[..., Any],
    *args: Any,
    backend: str = "fp8block",
    force_cublas: bool = True,
    options: dict[str, Any] | None = None,
) -> tuple[list[KernelPlan], str]:
    """Compile ``fn(*args)`` (CPU tensors, inference mode) with ``backend`` (and its ``options``) and return the plan of
    every Triton kernel and the generated wrapper code. Caches are off and Dynamo is reset first
    (``torch._dynamo.reset()``: earlier compiled functions recompile), so each call plans afresh."""
    from torch._inductor import config as inductor_config
    from torch._inductor.codegen import triton as triton_codegen
    from torch._inductor.graph import GraphLowering
    from torch._inductor.utils import sympy_product
    from torch._inductor.virtualized import V

    from . import lowering
    from .kernels import block_gemm
    from .kernels.config import CUBLAS

    plans: list[KernelPlan] = []
    codes: list[str] = []
    codegen_kernel = triton_codegen.TritonKernel.codegen_kernel
    codegen_graph = GraphLowering.codegen

    def nbytes(name: str) -> int:
        buf = V.graph.try_get_buffer(name)
        if buf is None or not hasattr(buf, "get_size"):
            return 0
        numel = V.graph.sizevars.optimization_hint(sympy_product(buf.get_size()), fallback=0)
        return numel * buf.get_dtype().itemsize

    def one_per_buffer(names: set[str], kernel) -> list[str]:
        """Names that share one in-place buffer (``buf3 = buf1``: one pointer) count once."""
        inplace = getattr(kernel.args, "inplace_buffers", {})
        physical: dict[str, str] = {}
        for name in sorted(names):
            inner = getattr(inplace.get(name), "inner_name", None)
            physical.setdefault(inner or name, name)
        return sorted(physical.values())

    def record(kernel, *a, **k):
        nodes = list(kernel.features.scheduler_nodes())
        removed = set(V.graph.removed_buffers) | set(getattr(kernel, "removed_buffers", ()))
        written = {dep.name for node in nodes for dep in node.read_writes.writes}
        # A buffer this kernel produces is read from registers by its fused consumers, not from memory.
        read = {dep.name for node in nodes for dep in node.read_writes.reads}
        reads = one_per_buffer(read - removed - written, kernel)
        writes = one_per_buffer(written - removed, kernel)
        plans.append(
            KernelPlan(
                name_hint=",".join(node.get_name() for node in nodes),
                reduction=bool(kernel.inside_reduction),
                persistent=bool(kernel.persistent_reduction),
                numels={
                    str(key): V.graph.sizevars.optimization_hint(v, fallback=0) for key, v in kernel.numels.items()
                },
                read_bytes=tuple(nbytes(n) for n in reads),
                write_bytes=tuple(nbytes(n) for n in writes),
            )
        )
        return codegen_kernel(kernel, *a, **k)

    def stop_after_codegen(graph, *a, **k):
        result = codegen_graph(graph, *a, **k)
        wrapper = result[0] if isinstance(result, tuple) else result
        codes.append(getattr(wrapper, "value", str(wrapper)))
        raise _StopAfterCodegen

    with contextlib.ExitStack() as stack:
        patch = stack.enter_context
        patch(mock.patch.object(triton_codegen.TritonKernel, "codegen_kernel", record))
        patch(mock.patch.object(GraphLowering, "codegen", stop_after_codegen))
        patch(mock.patch("torch.utils._triton.triton_hash_with_backend", lambda: "cpu-plan-only"))
        patch(mock.patch("torch.utils._triton.triton_backend", lambda: None))
        if force_cublas:
            patch(mock.patch.object(lowering, "_fp8_gpu", lambda device: True))
            patch(mock.patch.object(block_gemm, "static_choice", lambda *a, **k: CUBLAS))
        patch(inductor_config.patch({"cpu_backend": "triton", "force_disable_caches": True}))
        patch(torch.inference_mode())
        torch._dynamo.reset()
        compiler = _backend_compiler(backend, options)  # before tracing: importing fp8block turns freezing on
        graphs = []

        def plan_one_graph(gm: torch.fx.GraphModule, example_inputs: list[Any]):
            """Plan this graph, then run it eagerly, so that Dynamo goes on to the graphs after a
            graph break (stopping the whole compile at the first graph's codegen planned only that
            graph, silently, until 2026-12-08)."""
            graphs.append(gm)
            try:
                compiler(gm, example_inputs)
            except Exception as exc:
                stopped = isinstance(exc, _StopAfterCodegen) or "_StopAfterCodegen" in f"{type(exc).__name__}: {exc}"
                if not stopped:
                    raise
                return gm.forward
            raise RuntimeError("plan_triton_kernels: a graph compiled to the end (no Triton kernel codegen?)")

        torch.compile(fn, backend=plan_one_graph)(*args)
    if len(codes) != len(graphs):
        raise RuntimeError(f"plan_triton_kernels: {len(graphs)} graphs, {len(codes)} planned")
    return plans, "\n".join(codes)


def _backend_compiler(backend: str, options: dict | None) -> Callable[[torch.fx.GraphModule, list[Any]], Any]:
    """The named Dynamo backend with ``options`` bound, as ``torch.compile(backend=..., options=...)``
    binds them (Inductor takes them as config patches, other backends as ``options``). Looking it up
    imports it: fp8block's import turns Inductor freezing on, which Dynamo reads while tracing."""
    if backend == "inductor":
        from torch._inductor.compile_fx import compile_fx

        return functools.partial(compile_fx, config_patches=dict(options or {}))
    compiler = torch._dynamo.lookup_backend(backend)
    return functools.partial(compiler, options=options) if options else compiler
