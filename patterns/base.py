"""What a matmul pattern is: an Inductor pattern expression plus the roles of its matched nodes.

Patterns are matched on the *joint* graph (functional ATen, ``joint_custom_pre_pass``), where every
``nn.Linear``/``F.linear``/``x @ W.T``/Conv1D is already a 2-D ``aten.mm`` or ``aten.addmm`` whose
activation arrives through a ``view`` (N-D inputs) and whose weight arrives either through
``permute(W, [1, 0])`` (W stored [N, K]) or directly (W stored [K, N], GPT-2 ``Conv1D``).
The activation is a free argument so that views, clones and dynamic sizes in front of it do not
matter (they differ between graph stages, pytorch#151649).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from torch import fx
from torch._inductor.pattern_matcher import PatternExpr

WeightLayout = Literal["NK", "KN"]


@dataclasses.dataclass(frozen=True)
class MatmulPattern:
    """One matmul-against-a-weight form.

    Attributes:
        name: short name shown in reports and counters.
        expr: the Inductor pattern; keyword args ``x`` (activation [M, K]), ``w`` (weight node),
            and optionally ``bias`` ([N] for addmm).
        weight_layout: "NK" when the matched weight node is stored [N, K] (Linear), "KN" when it
            is stored [K, N] (Conv1D, ``x @ W``).
    """

    name: str
    expr: PatternExpr
    weight_layout: WeightLayout


@dataclasses.dataclass(frozen=True)
class LinearMatch:
    """The nodes of one matched matmul.

    x: activation node, [M, K]; weight: the weight node as stored ([N, K] or [K, N]);
    bias: [N]-shaped node or None; anchor: the mm/addmm node the rewrite replaces.
    """

    pattern: MatmulPattern
    anchor: fx.Node
    x: fx.Node
    weight: fx.Node
    bias: fx.Node | None
