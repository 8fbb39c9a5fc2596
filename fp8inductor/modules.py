"""``FP8BlockLinear`` and ``quantize_``: FP8 block-quantized linears as eager modules.

``quantize_(model)`` swaps every eligible ``nn.Linear`` and GPT-2 ``Conv1D`` in place for an
``FP8BlockLinear`` holding ``weight`` (float8_e4m3fn [N, K]) and ``weight_scale_inv`` (float32
[ceil(N/128), ceil(K/128)]) — the tensor names of the FineGrainedFP8 checkpoint format — and
frees the high-precision weight. Its forward calls ``torch.ops.fp8inductor.block_linear``, so it
runs eagerly (CPU reference, CUDA Triton kernels) and under ``backend="fp8block"``, which sees the
op and does not quantize again. Eligibility is the backend's (``fp8inductor.eligibility``).
"""

from __future__ import annotations

import torch
from torch import nn

from . import ops
from .config import FP8BlockConfig
from .eligibility import skip_reason
from .reference import check_weight_scale


class FP8BlockLinear(nn.Module):
    """y = block_linear(x, weight, weight_scale_inv, bias); x [..., in_features] -> y [..., out_features]."""

    def __init__(
        self,
        weight: torch.Tensor,
        weight_scale_inv: torch.Tensor,
        bias: torch.Tensor | None = None,
        scale_fmt: str = "float",
    ) -> None:
        """weight: [N, K] float8_e4m3fn; weight_scale_inv: [ceil(N/128), ceil(K/128)] float32; bias: [N]."""
        super().__init__()
        check_weight_scale(weight, weight_scale_inv, (128, 128), name="FP8BlockLinear")
        self.out_features, self.in_features = weight.shape
        self.scale_fmt = scale_fmt
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale_inv", weight_scale_inv)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    @classmethod
    def from_weight(
        cls, weight_nk: torch.Tensor, bias: torch.Tensor | None = None, config: FP8BlockConfig | None = None
    ) -> FP8BlockLinear:
        """Quantize a high-precision weight [N, K] (SPEC numerics) into a new module."""
        config = config or FP8BlockConfig()
        q, s = ops.quantize_weight(weight_nk.detach(), *config.weight_block_size, config.scale_fmt)
        return cls(q, s, None if bias is None else bias.detach().clone(), config.scale_fmt)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.block_linear(x, self.weight, self.weight_scale_inv, self.bias, 128, self.scale_fmt)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, scale_fmt={self.scale_fmt}"
        )


def _linear_weight_nk(module: nn.Module) -> torch.Tensor | None:
    """The module's weight as [N, K] (a view for Conv1D, stored [K, N]), or None if not a linear."""
    if isinstance(module, nn.Linear):
        return module.weight
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf") and getattr(module, "weight", None) is not None:
        return module.weight.t()  # transformers' GPT-2 Conv1D stores [K, N]
    return None


def quantize_(model: nn.Module, config: FP8BlockConfig | None = None) -> dict[str, str]:
    """Swap eligible linears of ``model`` in place for ``FP8BlockLinear``; returns {path: skip reason}.

    The high-precision weights of converted modules are dropped from the model (their storage is
    freed once nothing else references it; tied weights stay alive through their other user).
    """
    config = config or FP8BlockConfig()
    skipped: dict[str, str] = {}
    for path, module in list(model.named_modules()):
        w = _linear_weight_nk(module)
        if w is None:
            continue
        n, k = w.shape
        reason = skip_reason(config, [path], n, k, w.dtype, w)
        if reason is not None:
            skipped[path] = reason
            continue
        new = FP8BlockLinear.from_weight(w, module.bias, config)
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, name, new)
    return skipped
