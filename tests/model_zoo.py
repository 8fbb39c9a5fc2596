"""Small transformers models with random weights (nothing downloaded) for backend tests.

Each entry builds a model from a small config and returns (model, example inputs, number of
linears the backend must convert with the default config).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from fp8inductor.modules import quantize_


def _ids(batch: int, seq: int, vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))


def llama(dtype=torch.bfloat16):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        max_position_embeddings=256,
    )
    return LlamaForCausalLM(cfg).to(dtype).eval(), {"input_ids": _ids(2, 12, 512)}, 2 * 7


def qwen2(dtype=torch.bfloat16):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        max_position_embeddings=256,
    )
    return Qwen2ForCausalLM(cfg).to(dtype).eval(), {"input_ids": _ids(2, 12, 512)}, 2 * 7


def gpt2(dtype=torch.bfloat16):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_embd=256, n_layer=2, n_head=4, vocab_size=512, n_positions=128)
    return GPT2LMHeadModel(cfg).to(dtype).eval(), {"input_ids": _ids(2, 12, 512)}, 2 * 4


def bert(dtype=torch.bfloat16):
    from transformers import BertConfig, BertModel

    cfg = BertConfig(
        hidden_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=512,
        vocab_size=512,
        max_position_embeddings=128,
    )
    return BertModel(cfg).to(dtype).eval(), {"input_ids": _ids(2, 12, 512)}, 2 * 6 + 1  # + pooler


MODELS: dict[str, Callable] = {"llama": llama, "qwen2": qwen2, "gpt2": gpt2, "bert": bert}


def main_output(out) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") and out.logits is not None else out.last_hidden_state


def emulated(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` with every eligible linear swapped for the eager FP8 module (SPEC numerics)."""
    model = copy.deepcopy(model)
    quantize_(model)
    return model
