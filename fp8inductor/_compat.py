"""The one place where differences between torch versions (2.11 .. 2.14) are handled.

Checked: torch 2.11.0+cu130 (GPU machine) and 2.13.0+cpu (CI).

* ``compile_fx``: 2.13 added ``compile_region_name``; we pass only ``config_patches``, which both take.
* ``TritonTemplate``: ``store_output`` needs ``val_shape`` on 2.11 ("TritonCSEVariable must have
  shape"); both versions take it (``fp8inductor.kernels.template``).
* ``ops.div_rn`` (IEEE fp32 division in Inductor IR) has a Triton codegen in 2.13, not in 2.11 (whose
  Triton ``/`` is the approximate ``div.full.f32``); ``fp8inductor.quant_ir`` uses
  ``ops.inline_asm_elementwise`` (``div.rn.f32``), which both have, instead.
* ``PyCodeCache`` (private): Inductor's in-memory output modules, cleared by
  ``forget_inductor_output_modules``; same API in 2.11 and 2.13.
"""

from __future__ import annotations

from typing import Any

import torch

TORCH_VERSION = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])


def compile_fx(gm: torch.fx.GraphModule, example_inputs: list[Any], config_patches: dict[str, Any]):
    from torch._inductor.compile_fx import compile_fx as _compile_fx

    return _compile_fx(gm, example_inputs, config_patches=config_patches)


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
