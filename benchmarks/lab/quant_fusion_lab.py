"""Quant-fusion lab: the activation quantization as the op's Triton kernel after its producer, or
as Inductor IR fused into the producer (``fp8inductor/quant_ir.py``).

    PYTHONPATH=. python benchmarks/lab/quant_fusion_lab.py [--out results.json]

For each producer of a Llama-3-8B prefill (1 x 2048 tokens) linear input, compiled with the
fp8block backend as ``quantize_activation(producer(...))``:

* ``op``: ``gemm_lowering="extern"``: Inductor's producer kernel writes the bf16 activation, the
  op's Triton kernel (``act_quant_1x128``) reads it back and writes codes and scales;
* ``ir``: the default: one Inductor kernel computes the producer and quantizes it (no bf16 round trip);

timed in one process as GPU kernel time per call (torch.profiler over 20 calls: the kernels alone,
what a model with the GPU kept busy pays) and as ``triton.testing.do_bench`` of the whole call
(median, ms; includes the host's launch time, which dominates at these sizes), and checked: ``ir``'s codes and
scales against the op's kernel on the fp32 producer value (bit-equal but for the sign of zero and
NaN codes; Inductor keeps a fused producer in fp32).

Producers: SiLU(gate) * up (down_proj's input, [2048, 14336] from the gate/up GEMM's [2048, 28672]
output), RMSNorm with the residual add (q/k/v's and gate/up's input, [2048, 4096]), and the
attention output's transpose ([1, 32, 2048, 128] -> [2048, 4096], o_proj's input).
"""

from __future__ import annotations

import argparse
import functools
import json
import os

import torch
import torch.nn.functional as F
import triton.testing

import fp8inductor  # noqa: F401  (registers the backend and the ops)
from fp8inductor.kernels.act_quant import act_quant_1x128

QUANT = torch.ops.fp8inductor.quantize_activation
TOKENS, HIDDEN, INTER, HEADS = 2048, 4096, 14336, 32


def silu_mul(gate_up):
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def silu_mul_fp32(gate_up):
    gate, up = gate_up.float().chunk(2, dim=-1)
    return F.silu(gate) * up


def add_rmsnorm(h, r, w):
    """transformers' LlamaRMSNorm of h + r (the residual stream; the sum is also returned)."""
    s = h + r
    v = s.float()
    v = v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-5)
    return w * v.to(s.dtype), s


def add_rmsnorm_fp32(h, r, w):
    s = h + r
    v = s.float()
    return w.float() * (v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-5))


def attn_transpose(o):
    return o.transpose(1, 2).reshape(o.shape[0] * o.shape[2], -1)


def cases(dev):
    g = torch.Generator(device=dev).manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, device=dev, dtype=torch.bfloat16, generator=g)

    h, r, w = randn(TOKENS, HIDDEN), randn(TOKENS, HIDDEN), randn(HIDDEN) * 0.1 + 1
    return {
        "silu_mul -> quant [2048, 14336]": (lambda gu: QUANT(silu_mul(gu), 128, "float"), (randn(TOKENS, 2 * INTER),), silu_mul_fp32),
        "add + rmsnorm -> quant [2048, 4096]": (
            lambda h, r, w: (QUANT(add_rmsnorm(h, r, w)[0], 128, "float"), add_rmsnorm(h, r, w)[1]),
            (h, r, w),
            None,  # the norm's fp32 order of operations is Inductor's: checked against the op's bf16 path instead
        ),
        "attention transpose -> quant [2048, 4096]": (
            lambda o: QUANT(attn_transpose(o), 128, "float"),
            (randn(1, HEADS, TOKENS, HIDDEN // HEADS),),
            lambda o: attn_transpose(o).float(),
        ),
    }  # fmt: skip


def kernel_us(fn, calls: int = 20) -> tuple[float, list[str]]:
    """GPU kernel time per call (us) and the kernel names of one call, by torch.profiler."""
    total, per_kernel = kernel_us_per_kernel(fn, calls)
    return total, sorted(per_kernel)


def kernel_us_per_kernel(fn, calls: int = 20) -> tuple[float, dict[str, float]]:
    """GPU kernel time per call (us), in all and per kernel name, by torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    per_kernel: dict[str, float] = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            per_kernel[e.name] = per_kernel.get(e.name, 0.0) + e.device_time / calls
    return sum(per_kernel.values()), per_kernel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    dev = torch.device("cuda")
    rows = []
    with torch.inference_mode():
        for name, (fn, inputs, fp32_value) in cases(dev).items():
            times, outs, kernels = {}, {}, {}
            for variant, options in (("op", {"gemm_lowering": "extern"}), ("ir", {})):
                torch._dynamo.reset()
                compiled = torch.compile(fn, backend="fp8block", options=options)
                outs[variant] = compiled(*inputs)
                call = functools.partial(compiled, *inputs)
                times[variant] = triton.testing.do_bench(call, warmup=25, rep=200)
                times[variant + "_kernel_us"], kernels[variant] = kernel_us(call)
            q_ir, s_ir = outs["ir"][0] if isinstance(outs["ir"][0], tuple) else outs["ir"]
            if fp32_value is not None:
                q_want, s_want = act_quant_1x128(fp32_value(*inputs).reshape(-1, q_ir.shape[-1]))
                check = "codes/scales vs the op's kernel on eager's fp32 producer"
            else:
                q_want, s_want = outs["op"][0] if isinstance(outs["op"][0], tuple) else outs["op"]
                check = "codes/scales vs the op's kernel on Inductor's bf16 producer"
            bits, bits_want = q_ir.view(torch.uint8), q_want.view(torch.uint8)
            differ = ((bits & 0x7F) != (bits_want & 0x7F)) | ((bits != bits_want) & ((bits & 0x7F) % 0x7F != 0))
            s_equal = torch.equal(s_ir.reshape(s_want.shape).view(torch.int32), s_want.view(torch.int32))
            row = {
                "case": name,
                "op_kernel_us": times["op_kernel_us"],
                "ir_kernel_us": times["ir_kernel_us"],
                "kernel_speedup": times["op_kernel_us"] / times["ir_kernel_us"],
                "op_call_ms": times["op"],
                "ir_call_ms": times["ir"],
                "op_kernels": kernels["op"],
                "ir_kernels": kernels["ir"],
                "check": check,
                "codes_differing": int(differ.sum()),
                "scales_bit_equal": s_equal,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    write_results(args.out, rows)


def write_results(out: str | None, rows: list[dict]) -> None:
    """{"meta": device and versions, "rows": rows} as JSON to ``out`` (nothing when None)."""
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}
    meta["git"] = os.environ.get("FP8_BENCH_GIT_SHA")
    if out:
        with open(out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
