"""``python -m fp8inductor demo``: a small Llama-style model, compiled with fp8block, end to end.

Builds a transformers ``LlamaForCausalLM`` from a small config with seeded random bf16 weights
(nothing is downloaded), compiles it with ``backend="fp8block"`` (dynamic sequence length, so one
compile serves every step), generates a few tokens greedily, and prints the rewrite report, the
error against bf16 and against the eager FP8 emulation (``quantize_``: the same numerics without the
compiler), the next-token agreement with bf16, and the time per step. Runs on the GPU when one with
FP8 (cc >= 8.9) is present, else on the CPU through the reference path.
"""

from __future__ import annotations

import argparse
import copy
import math
import time

import torch

from .testing import rel_err


def build_llama(hidden: int, layers: int, vocab: int, device: str, seed: int = 0) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=hidden * 11 // 4 // 128 * 128,  # Llama's ~2.7x, rounded to 128
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,  # hidden is a multiple of 64 (main checks it)
        num_key_value_heads=math.gcd(hidden // 64, max(1, hidden // 256)),  # ~heads / 4, dividing heads
        vocab_size=vocab,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(device=device, dtype=torch.bfloat16).eval()
    return model


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _greedy(fn, ids: torch.Tensor, steps: int, device: str) -> tuple[torch.Tensor, float]:
    """Greedy decoding by full forward passes (no KV cache); returns ids and the median seconds/step.

    The median leaves out the steps that compile: Inductor's graph cache guards on the alignment
    of the first sequence length, so the second length recompiles once.
    """
    times = []
    for _ in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        logits = fn(ids)
        _sync(device)
        times.append(time.perf_counter() - t0)
        ids = torch.cat([ids, logits[:, -1:].argmax(-1)], dim=1)
    return ids, sorted(times)[len(times) // 2]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fp8inductor demo", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--hidden", type=_positive_int, default=512, help="hidden size (a multiple of 64: heads of 64)")
    p.add_argument("--layers", type=_positive_int, default=2)
    p.add_argument("--vocab", type=_positive_int, default=4096)
    p.add_argument("--prompt-len", type=_positive_int, default=16)
    p.add_argument("--tokens", type=_positive_int, default=8, help="tokens to generate")
    args = p.parse_args(argv)
    if args.hidden < 64 or args.hidden % 64:
        p.error(f"--hidden must be a multiple of 64 (attention heads of 64), got {args.hidden}")
    if args.vocab < 2:
        p.error(f"--vocab must be at least 2 (the agreement compares the two best logits), got {args.vocab}")

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA GPU is visible to this torch (use --device cpu or auto)")
    model = build_llama(args.hidden, args.layers, args.vocab, device)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"model: Llama-style, hidden {args.hidden}, {args.layers} layers, {n_params / 1e6:.1f}M params, bf16, {device}"
    )

    def eager(ids):
        return model(input_ids=ids, use_cache=False).logits

    compiled = torch.compile(model, backend="fp8block", dynamic=True)

    def fast(ids):
        return compiled(input_ids=ids, use_cache=False).logits

    gen = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        prompt = torch.randint(0, args.vocab, (1, args.prompt_len), generator=gen).to(device)
        import fp8inductor

        # The eager FP8 emulation first, while no compiled graph holds FP8 constants: the copy's bf16
        # weights are freed linear by linear as quantize_ swaps them (peak ~2x the bf16 weights).
        emulated = copy.deepcopy(model)
        fp8inductor.quantize_(emulated)  # eager FP8 modules: the same numerics, no compiler
        emu_logits = emulated(input_ids=prompt, use_cache=False).logits
        del emulated
        t0 = time.perf_counter()
        ref_logits = eager(prompt)
        fp8_logits = fast(prompt)
        _sync(device)
        compile_s = time.perf_counter() - t0

        report = fp8inductor.last_report()
        print(report if report is not None else "no report: nothing was compiled")
        print(f"compile + first call: {compile_s:.1f} s")
        print(
            f"logits rel. error fp8block vs bf16 eager: {rel_err(fp8_logits, ref_logits):.4f} "
            f"(the FP8 scheme's own: eager FP8 emulation vs bf16 eager {rel_err(emu_logits, ref_logits):.4f})"
        )

        ids_bf16, s_bf16 = _greedy(eager, prompt, args.tokens, device)
        ids_fp8, s_fp8 = _greedy(fast, prompt, args.tokens, device)
        # Next-token agreement on one sequence (the prompt and bf16's tokens), every position:
        # free-running generations part for good at their first different pick.
        ref_all, fp8_all = eager(ids_bf16)[0].float(), fast(ids_bf16)[0].float()
    top2 = ref_all.topk(2, dim=-1).values
    gap = top2[:, 0] - top2[:, 1]  # bf16's margin between its two best logits, per position
    differ = ref_all.argmax(-1) != fp8_all.argmax(-1)
    logit_err = (fp8_all - ref_all).abs().amax(-1)  # FP8's largest logit error, per position
    new_bf16 = ids_bf16[0, args.prompt_len :].tolist()
    new_fp8 = ids_fp8[0, args.prompt_len :].tolist()
    print(f"generated (bf16 eager): {new_bf16}")
    print(f"generated (fp8block):   {new_fp8}")
    n_pos = differ.numel()
    print(
        f"next-token agreement with bf16 over the {n_pos} positions of the bf16 sequence: "
        f"{n_pos - int(differ.sum())}/{n_pos}"
    )
    if differ.any():
        print(
            f"  where they differ, bf16's two best logits are {gap[differ].median().item():.3f} apart (median; "
            f"{gap.median().item():.3f} over all positions) and FP8's largest logit error is "
            f"{logit_err[differ].median().item():.3f}: random weights make near ties, which any rounding flips"
        )
    print(
        "time per step (median, full forward, no KV cache): "
        f"bf16 eager {s_bf16 * 1e3:.1f} ms, fp8block {s_fp8 * 1e3:.1f} ms"
    )
    if device == "cpu":
        print("note: on the CPU the FP8 linears run through the reference path: correct, not fast.")
    return 0
