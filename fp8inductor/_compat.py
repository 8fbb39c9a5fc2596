"""The one place where differences between torch versions (2.11 .. 2.14) are handled.

Checked: torch 2.11.0+cu130 (GPU machine) and 2.13.0+cpu (CI).

* ``compile_fx``: 2.13 added ``compile_region_name``; we pass only ``config_patches``, which both take.
* ``TritonTemplate`` / pattern-matcher signatures differ too but are not used yet.
"""

from __future__ import annotations

from typing import Any

import torch

TORCH_VERSION = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])


def compile_fx(gm: torch.fx.GraphModule, example_inputs: list[Any], config_patches: dict[str, Any]):
    from torch._inductor.compile_fx import compile_fx as _compile_fx

    return _compile_fx(gm, example_inputs, config_patches=config_patches)
