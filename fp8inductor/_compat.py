"""The one place where differences between torch versions (2.11 .. 2.14) are handled.

Checked: torch 2.11.0+cu130 (GPU machine) and 2.13.0+cpu (CI).

* ``compile_fx``: 2.13 added ``compile_region_name``; we pass only ``config_patches``, which both take.
* ``TritonTemplate``: ``store_output`` needs ``val_shape`` on 2.11 ("TritonCSEVariable must have
  shape"); both versions take it (``fp8inductor.kernels.template``).
* ``ops.div_rn`` (IEEE fp32 division in Inductor IR) has a Triton codegen in 2.13, not in 2.11 (whose
  Triton ``/`` is the approximate ``div.full.f32``); ``fp8inductor.quant_ir`` uses
  ``ops.inline_asm_elementwise`` (``div.rn.f32``), which both have, instead.
* ``select_decomp_table`` (private): Inductor's decompositions; under ``coordinate_descent_tuning``
  (``mode="max-autotune"``) its ``aten.mm`` decomposition turns an M = 1 matmul into ``mul`` + ``sum``
  before any joint-graph pass sees it, in both versions; ``compile_fx(..., keep_one_row_mm=True)`` keeps the mm.
* ``PyCodeCache`` (private): Inductor's in-memory output modules, cleared by
  ``forget_inductor_output_modules``; same API in 2.11 and 2.13.
"""

from __future__ import annotations

from typing import Any

import torch

TORCH_VERSION = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])


def compile_fx(
    gm: torch.fx.GraphModule, example_inputs: list[Any], config_patches: dict[str, Any], keep_one_row_mm: bool = False
):
    """Inductor's ``compile_fx``. ``keep_one_row_mm``: trace with ``select_decomp_table_keeping_mm``
    instead of Inductor's own table (only matters under coordinate-descent tuning).

    The table is swapped through ``compile_fx``'s module global, not its ``decompositions`` argument:
    on 2.13 that argument rides into the FX-graph cache key as an unpicklable object, and every such
    compile bypassed the cache (measured in CI, 2026-11-25); a module-level function pickles by name.
    Both 2.11 and 2.13 look the global up inside ``compile_fx``.
    """
    import contextlib
    import importlib
    from unittest import mock

    compile_fx_module = importlib.import_module("torch._inductor.compile_fx")  # the module, not the function
    table = (
        mock.patch.object(compile_fx_module, "select_decomp_table", select_decomp_table_keeping_mm)
        if keep_one_row_mm
        else contextlib.nullcontext()
    )
    with table:
        return compile_fx_module.compile_fx(gm, example_inputs, config_patches=config_patches)


def select_decomp_table_keeping_mm() -> dict[Any, Any]:
    """Inductor's decomposition table (``select_decomp_table``, under the current config) with
    ``aten.mm``'s decomposition run as if ``coordinate_descent_tuning`` were off.

    With it on (``mode="max-autotune"`` sets it), Inductor rewrites ``mm(x, w)`` with one row (or one
    column) as ``(x.unsqueeze(2) * w.unsqueeze(0)).sum(1)`` in fp32 while AOTAutograd traces, so the
    FP8 pass, which runs on the traced joint graph, never sees a decode step's linears: measured on
    the H100 (2026-11-25, ``bench_model.py`` row ``fp8block_max_autotune``), batch-1 decode ran in
    bf16 (logits error 1.2e-2, the bf16 level) at 295 tok/s, while batch 8 and 32 ran FP8. The other
    mm decompositions (K = 1 outer products, CPU special cases) are kept as they are.
    """
    import functools

    from torch._inductor import config as inductor_config
    from torch._inductor.decomposition import select_decomp_table

    def keep_gemv(decomp):
        @functools.wraps(decomp)
        def decompose(*args, **kwargs):
            with inductor_config.patch(coordinate_descent_tuning=False):
                return decomp(*args, **kwargs)

        return decompose

    table = dict(select_decomp_table())
    for op, decomp in list(table.items()):
        if getattr(op, "overloadpacket", None) is torch.ops.aten.mm:
            table[op] = keep_gemv(decomp)
    return table


def forget_inductor_output_modules() -> None:
    """Drop Inductor's in-memory references to the output modules it loaded (files stay on disk).

    ``torch.compiler.reset()`` clears Dynamo's caches, but ``PyCodeCache`` (and ``sys.modules``)
    keep each loaded output module, whose globals hold a frozen graph's constants (FP8 weights).
    """
    import sys

    from torch._inductor.codecache import PyCodeCache

    names = [m.__name__ for m in getattr(PyCodeCache, "modules", ())]
    PyCodeCache.cache_clear()
    for name in names:
        sys.modules.pop(name, None)
