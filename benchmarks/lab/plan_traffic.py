"""Plan-traffic lab: the bytes Inductor's Triton kernels move in a Llama prefill graph compiled with
fp8block, planned on the CPU (no GPU needed; ``fp8inductor/plan.py``).

    PYTHONPATH=. python benchmarks/lab/plan_traffic.py [--hidden 1024 --inter 3584 --layers 4 --tokens 1024]

A transformers ``LlamaForCausalLM`` with Llama-3's proportions (heads of 128, 4:1 grouped KV) at the
given size is compiled as a prefill graph on the H100 would be (every FP8 linear on cuBLAS), once per
variant, and every Triton kernel's plan is recorded: how many, persistent or looped reductions,
bytes read and written (each buffer once per kernel; a looped reduction reads its input twice, which
this does not count). The GEMMs (cuBLAS) and attention (SDPA) are not Triton kernels and are not in
the sums. Variants:

* ``ir``: the default, the activation quantization as Inductor IR fused into its producer;
* ``op``: ``FP8INDUCTOR_QUANT_IR=0``: the quantization runs inside the opaque linear, whose bytes are
  added analytically (bf16 x read, fp8 codes and fp32 scales written, per quantized activation:
  q/k/v's and gate/up's fused, o_proj's, down_proj's);
* ``ir, realize_reads_threshold=1``: Inductor realizes every multi-reader value that reads more than
  one buffer (the residual stream every layer instead of a sum of up to 5 linear outputs).

Answered on 2026-11-25 (hidden 1024, 4 layers, 1024 tokens; torch 2.13 CPU; docs/plan_traffic_lab.json):
ir 327.8 MiB in 61 kernels, every quantization a persistent reduction; op 302.1 MiB + 78.8 MiB inside
the op = 380.9 MiB; ir with threshold 1 319.7 MiB. The IR moves 14% fewer bytes than the op;
realizing the residual stream every layer would save 2.5% more.
"""

from __future__ import annotations

import argparse
import json
import os
import warnings

import torch

from fp8inductor.plan import plan_triton_kernels

MIB = 2**20


def build(hidden: int, inter: int, layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    heads = hidden // 128
    cfg = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 4),
        vocab_size=1024,
        max_position_embeddings=8192,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).to(torch.bfloat16).eval()


def op_quant_bytes(hidden: int, inter: int, layers: int, tokens: int) -> int:
    """Bytes the opaque linears' own quantization moves: 4 quantized activations per layer."""
    per_element = 2 + 1 + 4 / 128  # bf16 read, fp8 code written, one fp32 scale per 128
    return int(layers * tokens * (3 * hidden + inter) * per_element)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--inter", type=int, default=3584)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from torch._inductor import config as inductor_config

    model = build(args.hidden, args.inter, args.layers)
    ids = torch.randint(0, 1024, (1, args.tokens))
    rows = []
    variants = (
        ("ir", "1", {}),
        ("op", "0", {}),
        ("ir, realize_reads_threshold=1", "1", {"realize_reads_threshold": 1}),
    )
    for name, quant_ir, patches in variants:
        os.environ["FP8INDUCTOR_QUANT_IR"] = quant_ir
        with inductor_config.patch(patches):
            plans, _ = plan_triton_kernels(lambda ids: model(ids, logits_to_keep=1), ids)
        read, write = sum(sum(p.read_bytes) for p in plans), sum(sum(p.write_bytes) for p in plans)
        extra = op_quant_bytes(args.hidden, args.inter, args.layers, args.tokens) if quant_ir == "0" else 0
        row = {
            "variant": name,
            "kernels": len(plans),
            "looped_reductions": sum(p.reduction and not p.persistent for p in plans),
            "read_mib": read / MIB,
            "write_mib": write / MIB,
            "op_quant_mib": extra / MIB,
            "total_mib": (read + write + extra) / MIB,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    os.environ.pop("FP8INDUCTOR_QUANT_IR", None)
    if args.out:
        meta = {"torch": torch.__version__, **vars(args)}
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
