"""Model-level benchmark: a Llama-3-8B-shaped decoder (fewer layers) in eager bf16, torch.compile bf16 and fp8block.

    PYTHONPATH=. python benchmarks/bench_model.py [--rows eager_bf16,compile_bf16,...] [--layers 8]
        [--phases prefill,decode] [--out docs/bench_model.json] [--merge] [--quick] [--budget-s S]

The driver runs every row in its own subprocess (``bench_model.py --row NAME ...``) so that compile
caches, Inductor config (importing fp8inductor's backend turns ``torch._inductor.config.freezing`` on
for the whole process) and memory statistics do not leak between rows; each row starts with fresh,
empty ``TORCHINDUCTOR_CACHE_DIR`` / ``TRITON_CACHE_DIR`` (compile times are cold) unless
``--keep-caches``. The rows' JSON goes to ``--out`` after every row (``--merge`` keeps the rows of an
existing file that this run does not redo, so the rows can be split over several runs).

Model: transformers ``LlamaForCausalLM`` with Llama-3-8B's dimensions (hidden 4096, intermediate
14336, 32 heads, 8 KV heads, vocab 128256, rope theta 500000) but ``--layers`` decoder layers (8 by
default, of Llama-3-8B's 32), random bf16 weights made on the GPU (linears ``randn / sqrt(K)``,
embeddings ``randn``, seeded), SDPA attention, ``eval()``, under ``torch.inference_mode()``.

Phases and metrics (see ``render_docs.MODEL_METHOD``): prefill (one forward of the whole prompt, no
cache, logits of the last position only through ``logits_to_keep=1``) at 1x2048 and 8x512; decode
(one step of B new tokens against a transformers ``StaticCache`` of 1024 positions, at position 512,
captured as a CUDA graph: Inductor's CUDA graphs via mode "reduce-overhead" for the compiled rows, a
manual ``torch.cuda.CUDAGraph`` for eager) at batch 1, 8, 32; compile time and peak memory of each
phase; steady-state memory; relative error of the logits against eager bf16 of the same model.

``--quick``: a tiny model (2 layers, hidden 512) for a smoke test, also on a CPU (there: rows
eager_bf16 and fp8block by default, no CUDA graphs, perf_counter timings, meaningless numbers).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
for _p in (str(REPO_ROOT), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import render_docs  # (no torch import: the driver process stays torch-free)
from provenance import git_meta, package_version  # noqa: E402

DEFAULT_OUT = REPO_ROOT / "docs" / "bench_model.json"
ERROR_NOTE_CHARS = 600
REL_ERR_FLAG = 0.1  # a row whose logits differ from eager bf16 by more than this (relative Frobenius) is flagged


# ---------------------------------------------------------------------------------------------- rows
@dataclasses.dataclass(frozen=True)
class RowSpec:
    """How one row builds and runs the model.

    backend: None (eager), "inductor" or "fp8block". prefill_mode / decode_mode: torch.compile mode
    (for fp8block passed as options={"mode": ...}, since torch.compile refuses mode= with options=).
    quantize: fp8inductor's ``quantize_(model)`` before compiling (the FP8 weights live in the model).
    """

    name: str
    backend: str | None
    prefill_mode: str | None
    decode_mode: str | None
    quantize: bool = False
    fp8: bool = False  # the row's linears are FP8 (its logits error is checked against REL_ERR_FLAG)
    optional: bool = False
    label: str = ""
    convert_lm_head: bool = False  # FP8 lm_head too (modules_to_not_convert=[]; the default skips it)


ROW_SPECS: dict[str, RowSpec] = {
    s.name: s
    for s in (
        RowSpec("eager_bf16", None, None, None, label="eager bf16"),
        RowSpec("compile_bf16", "inductor", None, "reduce-overhead", label="torch.compile bf16"),
        RowSpec(
            "compile_bf16_max_autotune",
            "inductor",
            "max-autotune-no-cudagraphs",
            "max-autotune",
            label="torch.compile bf16 max-autotune",
        ),
        RowSpec("fp8block", "fp8block", None, "reduce-overhead", fp8=True, label="fp8block (bf16 model)"),
        RowSpec(
            "fp8block_lm_head",
            "fp8block",
            None,
            "reduce-overhead",
            fp8=True,
            optional=True,
            convert_lm_head=True,
            label="fp8block (bf16 model), lm_head FP8 too",
        ),
        RowSpec(
            "fp8block_quantized",
            "fp8block",
            None,
            "reduce-overhead",
            quantize=True,
            fp8=True,
            label="fp8block after quantize_",
        ),
        RowSpec(
            "fp8block_quantized_lm_head",
            "fp8block",
            None,
            "reduce-overhead",
            quantize=True,
            fp8=True,
            optional=True,
            convert_lm_head=True,
            label="fp8block after quantize_, lm_head FP8 too",
        ),
        RowSpec(
            "fp8block_max_autotune",
            "fp8block",
            "max-autotune-no-cudagraphs",
            "max-autotune",
            fp8=True,
            optional=True,
            label="fp8block max-autotune",
        ),
    )
}
ROW_ORDER = list(ROW_SPECS)
DEFAULT_ROWS = [n for n, s in ROW_SPECS.items() if not s.optional]
CPU_DEFAULT_ROWS = ["eager_bf16", "fp8block"]
BASELINE_ROW = "compile_bf16"


# ---------------------------------------------------------------------------------------------- config
@dataclasses.dataclass(frozen=True)
class ModelShape:
    """The transformers LlamaConfig fields that differ from its defaults, and the benchmark's shapes."""

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    rope_theta: float
    prefill_shapes: tuple[tuple[int, int], ...]  # (batch, prompt length)
    decode_batches: tuple[int, ...]
    decode_cache_len: int  # StaticCache max_cache_len
    decode_pos: int  # the position the timed step writes (positions 0..decode_pos are attended)

    def hf_kwargs(self, layers: int) -> dict[str, Any]:
        return {
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "vocab_size": self.vocab_size,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": False,
        }


LLAMA3_8B = ModelShape(
    hidden_size=4096,
    intermediate_size=14336,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
    rope_theta=500000.0,
    prefill_shapes=((1, 2048), (8, 512)),
    decode_batches=(1, 8, 32),
    decode_cache_len=1024,
    decode_pos=512,
)
QUICK = ModelShape(
    hidden_size=512,
    intermediate_size=1408,
    num_attention_heads=8,
    num_key_value_heads=2,
    vocab_size=4096,
    rope_theta=500000.0,
    prefill_shapes=((1, 64), (2, 32)),
    decode_batches=(1, 2),
    decode_cache_len=128,
    decode_pos=64,
)
DEFAULT_LAYERS, QUICK_LAYERS = 8, 2
LLAMA3_8B_LAYERS = 32


def prefill_key(b: int, s: int) -> str:
    return f"prefill_{b}x{s}"


def decode_key(b: int) -> str:
    return f"decode_b{b}"


# ---------------------------------------------------------------------------------------------- helpers
_T0 = time.perf_counter()


def log(msg: str, row: str | None = None) -> None:
    now = datetime.datetime.now().strftime("%H:%M:%S")
    tag = f" [{row}]" if row else ""
    print(f"[{now} +{time.perf_counter() - _T0:7.1f}s]{tag} {msg}", flush=True)


def short_error(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}"[:ERROR_NOTE_CHARS]


def write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def parse_rows(text: str | None, on_cpu: bool) -> list[str]:
    if not text:
        return list(CPU_DEFAULT_ROWS if on_cpu else DEFAULT_ROWS)
    if text == "all":
        return list(ROW_ORDER)
    rows = [r.strip() for r in text.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROW_SPECS]
    if unknown:
        raise SystemExit(f"unknown row(s) {unknown}; known: {ROW_ORDER}")
    return rows


def parse_phases(text: str) -> list[str]:
    phases = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in phases if p not in ("prefill", "decode")]
    if bad or not phases:
        raise SystemExit(f"--phases takes a comma list of prefill, decode; got {text!r}")
    return phases


def parse_decode_batches(text: str) -> tuple[int, ...]:
    """--decode-batches: a comma list of distinct positive batch sizes, e.g. "1" or "1,8,32"."""
    try:
        batches = tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"a comma list of positive integers, got {text!r}") from None
    if not batches or min(batches) < 1 or len(set(batches)) != len(batches):
        raise argparse.ArgumentTypeError(f"a comma list of distinct positive integers, got {text!r}")
    return batches


def parse_prefill_shapes(text: str) -> tuple[tuple[int, int], ...]:
    """--prefill-shapes: a comma list of distinct BATCHxLENGTH, e.g. "1x2048,8x512" or "1x2047"."""
    try:
        shapes = tuple(tuple(int(v) for v in item.lower().split("x")) for item in text.split(",") if item.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"a comma list of BATCHxLENGTH, got {text!r}") from None
    if not shapes or any(len(s) != 2 or min(s) < 1 for s in shapes) or len(set(shapes)) != len(shapes):
        raise argparse.ArgumentTypeError(f"a comma list of distinct positive BATCHxLENGTH, got {text!r}")
    return shapes


def model_shape(args: argparse.Namespace) -> ModelShape:
    """The shape this run measures: Llama-3-8B's (or --quick's), with --decode-batches and
    --prefill-shapes applied."""
    shape = QUICK if args.quick else LLAMA3_8B
    if args.decode_batches is not None:
        shape = dataclasses.replace(shape, decode_batches=args.decode_batches)
    if args.prefill_shapes is not None:
        shape = dataclasses.replace(shape, prefill_shapes=args.prefill_shapes)
    return shape


def parse_fp8_options(text: str) -> dict[str, Any]:
    """--fp8-options: a JSON object of FP8BlockConfig fields and Inductor config keys (what
    ``torch.compile(backend="fp8block", options=...)`` takes), checked here as the backend checks it."""
    try:
        options = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(options, dict):
        raise argparse.ArgumentTypeError(f"a JSON object of FP8BlockConfig fields, got {text!r}")
    from fp8inductor.config import split_options

    try:
        split_options(options)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return options


def merge_reports(old: dict | None, new: dict) -> dict:
    """new's meta and rows over old's rows (rows keyed by name, in ROW_ORDER). Refuses different setups."""
    if old is None:
        return new
    defaults = {"fp8_options": {}}  # files from before the option have none
    for key in ("layers", "quick", "shapes", "fp8_options", "fp8inductor_pdl", "torchinductor_enable_pdl"):
        if old["meta"].get(key, defaults.get(key)) != new["meta"].get(key, defaults.get(key)):
            raise SystemExit(
                f"--merge: the existing file has {key}={old['meta'].get(key)!r}, this run {new['meta'].get(key)!r}; "
                "use another --out or drop --merge"
            )
    rows = {**old.get("rows", {}), **new.get("rows", {})}
    meta = {**old["meta"], **new["meta"]}
    meta["runs"] = [*old["meta"].get("runs", []), *new["meta"].get("runs", [])]
    return {"meta": meta, "rows": order_rows(rows)}


MIN_TIMED_CALLS = 50  # fewer gave prefill medians of 8-19 calls, p20-p80 spread ~5% (2026-12-06 review)


def summarize_times(times: list[float]) -> dict[str, float | int]:
    """Median, 20th and 80th percentile (ms) and the count of per-call times."""
    q = statistics.quantiles(times, n=5) if len(times) > 1 else [times[0]] * 4
    return {"median_ms": statistics.median(times), "p20_ms": q[0], "p80_ms": q[-1], "n": len(times)}


def order_rows(rows: dict[str, dict]) -> dict[str, dict]:
    known = [r for r in ROW_ORDER if r in rows]
    return {r: rows[r] for r in known + [r for r in rows if r not in ROW_SPECS]}


# ---------------------------------------------------------------------------------------------- the row (child)
class RowRunner:
    """Everything one row does, in its own process. Writes its partial results after each measurement."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        self.torch = torch
        self.args = args
        self.spec = ROW_SPECS[args.row]
        self.shape = model_shape(args)
        self.layers = args.layers
        want_cpu = args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available())
        self.device = torch.device("cpu" if want_cpu else "cuda")
        self.cuda = self.device.type == "cuda"
        self.out_path = Path(args.row_out) if args.row_out else None
        self.result: dict[str, Any] = {
            "row": self.spec.name,
            "label": self.spec.label,
            "status": "running",
            "backend": self.spec.backend or "eager",
            "prefill_mode": self.spec.prefill_mode,
            "decode_mode": self.spec.decode_mode if self.cuda else None,
            "quantized": self.spec.quantize,
            "fp8": self.spec.fp8,
            "fp8_lm_head": self.spec.convert_lm_head,
            "flags": [],
        }

    # ---- bookkeeping
    def log(self, msg: str) -> None:
        log(msg, self.spec.name)

    def save(self) -> None:
        if self.out_path is not None:
            write_json_atomic(self.out_path, self.result)

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def mem(self) -> int | None:
        if not self.cuda:
            return None
        gc.collect()
        return self.torch.cuda.memory_allocated()

    def reset_peak(self) -> None:
        if self.cuda:
            gc.collect()
            self.torch.cuda.reset_peak_memory_stats()

    def peak(self) -> int | None:
        return self.torch.cuda.max_memory_allocated() if self.cuda else None

    def env(self) -> dict[str, Any]:
        torch = self.torch
        import torch._inductor.config as inductor_config

        try:
            import triton

            triton_version = triton.__version__
        except ImportError:
            triton_version = None
        return {
            "device": torch.cuda.get_device_name(self.device) if self.cuda else "CPU",
            "torch": torch.__version__,
            "triton": triton_version,
            "cuda": torch.version.cuda,
            "transformers": package_version("transformers"),
            "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "inductor_freezing": bool(inductor_config.freezing),
            "fp8inductor_imported": "fp8inductor" in sys.modules,
            "inductor_cache_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR"),
            **git_meta(),
        }

    # ---- timing
    def time_fn(self, fn: Callable[[], Any]) -> dict[str, float | None]:
        """Median (p20, p80) ms and the number of timed calls: do_bench on a GPU (one CUDA event pair per
        call; at least ``MIN_TIMED_CALLS`` calls: a 10 ms prefill fits only ~20 into --rep-ms),
        perf_counter on a CPU."""
        if not self.cuda:
            for _ in range(self.args.cpu_warmup):
                fn()
            times = []
            for _ in range(self.args.cpu_reps):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
            return summarize_times(times)
        import triton.testing

        times = list(triton.testing.do_bench(fn, warmup=self.args.warmup_ms, rep=self.args.rep_ms, return_mode="all"))
        if len(times) < MIN_TIMED_CALLS:  # more calls of the same kind, timed the same way
            rep = self.args.rep_ms * (MIN_TIMED_CALLS - len(times)) / len(times) * 1.1
            times += triton.testing.do_bench(fn, warmup=0, rep=rep, return_mode="all")
        return summarize_times(times)

    def timed_call(self, fn: Callable[[], Any]) -> tuple[Any, float]:
        self.sync()
        t0 = time.perf_counter()
        out = fn()
        self.sync()
        return out, time.perf_counter() - t0

    # ---- model
    def build_model(self):
        """LlamaForCausalLM, bf16, made on the device, seeded random weights; returns (model, byte counts)."""
        torch = self.torch
        from torch import nn
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(**self.shape.hf_kwargs(self.layers))
        config._attn_implementation = "sdpa"
        torch.manual_seed(self.args.seed)
        with torch.device(self.device):
            model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
        gen = torch.Generator(device=self.device).manual_seed(self.args.seed)
        linear_bf16 = lm_head = embed = other = 0
        with torch.no_grad():
            for path, mod in model.named_modules():
                if isinstance(mod, nn.Linear):
                    k = mod.in_features
                    mod.weight.normal_(0.0, 1.0 / math.sqrt(k), generator=gen)  # [N, K]
                    nbytes = mod.weight.numel() * mod.weight.element_size()
                    if path.split(".")[-1] == "lm_head":
                        lm_head += nbytes
                    else:
                        linear_bf16 += nbytes
                elif isinstance(mod, nn.Embedding):
                    mod.weight.normal_(0.0, 1.0, generator=gen)
                    embed += mod.weight.numel() * mod.weight.element_size()
        total = self.tensor_bytes(model)
        other = total - linear_bf16 - lm_head - embed
        model.eval()
        info = {
            "params": sum(p.numel() for p in model.parameters()),
            "linear_bf16_bytes": linear_bf16,  # the decoder layers' linears (the ones FP8 converts), in bf16
            "lm_head_bytes": lm_head,  # bf16, left unconverted by fp8block's default
            "embed_bytes": embed,
            "other_bytes": other,  # norms, rotary buffers
            "model_tensor_bytes": total,  # all parameters and buffers (distinct storages)
        }
        return model, info

    def tensor_bytes(self, model) -> int:
        seen, total = set(), 0
        for t in list(model.parameters()) + list(model.buffers()):
            key = (t.untyped_storage().data_ptr(), t.device)
            if key in seen:
                continue
            seen.add(key)
            total += t.untyped_storage().nbytes()
        return total

    def fp8_config_options(self) -> dict[str, Any]:
        """FP8BlockConfig fields of this row: --fp8-options, then the row's own lm_head setting (which wins)."""
        lm_head = {"modules_to_not_convert": []} if self.spec.convert_lm_head else {}
        return {**self.args.fp8_options, **lm_head}

    def compile(self, model, mode: str | None):
        torch = self.torch
        spec = self.spec
        if spec.backend is None:
            return model
        if spec.backend == "fp8block":
            options = {**self.fp8_config_options(), **({"mode": mode} if mode else {})}
            return torch.compile(model, backend="fp8block", options=options or None, dynamic=False)
        return torch.compile(model, backend="inductor", mode=mode, dynamic=False)

    def fp8_reports(self, since: int) -> list[dict]:
        if self.spec.backend != "fp8block":
            return []
        import fp8inductor

        out = []
        for rep in fp8inductor.reports()[since:]:
            d = rep.to_dict()
            d.pop("decisions", None)
            out.append(d)
        return out

    def fp8_counters(self) -> dict:
        """fp8inductor's pass counters so far in this process (linears converted, norms fused,
        attentions folded, ...): a phase records its own by difference."""
        from torch._dynamo.utils import counters

        return dict(counters["fp8inductor"])

    def counters_since(self, before: dict) -> dict:
        return {k: v - before.get(k, 0) for k, v in self.fp8_counters().items() if v != before.get(k, 0)}

    def n_fp8_reports(self) -> int:
        if self.spec.backend != "fp8block":
            return 0
        import fp8inductor

        return len(fp8inductor.reports())

    # ---- inputs
    def prefill_ids(self, b: int, s: int):
        gen = self.torch.Generator(device="cpu").manual_seed(1000 + 7 * b + s)
        return self.torch.randint(0, self.shape.vocab_size, (b, s), generator=gen).to(self.device)

    def make_cache(self, b: int):
        """A StaticCache for batch b, initialized and filled with seeded random keys/values."""
        torch = self.torch
        from transformers import StaticCache

        cfg = self.model.config
        cache = StaticCache(config=cfg, max_cache_len=self.shape.decode_cache_len)
        head_dim = cfg.head_dim if getattr(cfg, "head_dim", None) else cfg.hidden_size // cfg.num_attention_heads
        cache.early_initialization(b, cfg.num_key_value_heads, head_dim, torch.bfloat16, self.device)
        gen = torch.Generator(device=self.device).manual_seed(2000 + b)
        lens = []
        for layer in cache.layers:
            layer.keys.normal_(0.0, 1.0, generator=gen)  # [B, H_kv, max_cache_len, D]
            layer.values.normal_(0.0, 1.0, generator=gen)
            lens.append(layer.cumulative_length)
        kv_bytes = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
        return cache, lens, kv_bytes

    def decode_inputs(self, b: int):
        torch = self.torch
        gen = torch.Generator(device="cpu").manual_seed(3000 + b)
        ids = torch.randint(0, self.shape.vocab_size, (b, 1), generator=gen).to(self.device)
        # 4-D boolean mask [B, 1, 1, max_cache_len] (True = attend): transformers uses a 4-D mask as it is, so
        # eager and compiled rows run the same masked SDPA over the static cache, positions 0..decode_pos.
        mask = torch.zeros(b, 1, 1, self.shape.decode_cache_len, dtype=torch.bool, device=self.device)
        mask[..., : self.shape.decode_pos + 1] = True
        pos = torch.tensor(self.shape.decode_pos, dtype=torch.int64, device=self.device)
        return ids, mask, pos

    def decode_step(self, fn, cache, lens, ids, mask, pos, mark_step: bool) -> Callable[[], Any]:
        """One decode step at the fixed position decode_pos: the cache's length counters are reset first
        (StaticCache advances them in place on every step), one small _foreach_copy_ launch."""
        torch = self.torch
        pos_list = [pos] * len(lens)

        def step():
            torch._foreach_copy_(lens, pos_list)
            if mark_step:
                torch.compiler.cudagraph_mark_step_begin()
            return fn(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True).logits

        return step

    def capture_eager(self, step: Callable[[], Any]) -> Callable[[], Any]:
        """Capture one eager step (reset included) in a torch.cuda.CUDAGraph; returns its replay."""
        torch = self.torch
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                step()
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = step()

        def replay():
            graph.replay()
            return out

        self._graphs.append(graph)  # keep alive
        return replay

    # Kernel name -> category of a profile (first match wins; names as Triton/cuBLAS emit them).
    PROFILE_CATEGORIES = (
        ("fp8 activation quant", ("_act_quant_1x128_kernel",)),
        ("fp8 GEMM, op kernels", ("_fp8_gemm_splitk_kernel", "_fp8_gemm_tiles_kernel", "_fp8_gemm_tma_kernel")),
        ("Triton GEMM templates (+ fused epilogue)", ("triton_tem",)),
        ("cuBLAS GEMM", ("gemm", "gemv", "nvjet", "xmma", "cutlass", "cublas")),
        ("attention", ("flash", "fmha", "attention", "sdpa", "efficient")),
        ("Inductor pointwise / reductions", ("triton_",)),
        ("copies, fills", ("memcpy", "memset", "copy", "fill", "elementwise")),
    )

    # Kernels kept per profile, longest first. 15 (until 2026-11-25) hid a third of a 1x2048 prefill's
    # Inductor kernels (the norms' statistics and quantizations, 20-40 µs each).
    PROFILE_TOP_KERNELS = 40

    def profile_step(self, step: Callable[[], Any], steps: int = 20) -> dict:
        """GPU kernel time of one step (a decode step, a prefill forward) by category (torch.profiler
        over ``steps`` calls)."""
        torch = self.torch
        from torch.profiler import ProfilerActivity, profile

        for _ in range(3):
            step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                step()
            torch.cuda.synchronize()
        cats: dict[str, dict[str, float]] = {}
        kernels: list[tuple[str, float, float]] = []
        for avg in prof.key_averages():
            us = float(getattr(avg, "device_time_total", None) or getattr(avg, "cuda_time_total", 0.0))
            if us <= 0:
                continue
            name = avg.key
            low = name.lower()
            cat = next((c for c, pats in self.PROFILE_CATEGORIES if any(p.lower() in low for p in pats)), "other")
            slot = cats.setdefault(cat, {"us_per_step": 0.0, "kernels_per_step": 0.0})
            slot["us_per_step"] += us / steps
            slot["kernels_per_step"] += avg.count / steps
            kernels.append((name[:120], us / steps, avg.count / steps))
        kernels.sort(key=lambda t: -t[1])
        return {
            "steps": steps,
            "gpu_busy_us_per_step": sum(v["us_per_step"] for v in cats.values()),
            "categories": dict(sorted(cats.items(), key=lambda kv: -kv[1]["us_per_step"])),
            "top_kernels": [
                {"name": n, "us_per_step": u, "calls_per_step": c} for n, u, c in kernels[: self.PROFILE_TOP_KERNELS]
            ],
        }

    def log_profile(self, key: str, prof: dict, step_us: float | None = None) -> None:
        for cat, v in prof["categories"].items():
            self.log(f"{key} profile: {cat}: {v['us_per_step']:.1f} us/step, {v['kernels_per_step']:g} kernels")
        busy = prof["gpu_busy_us_per_step"]
        idle = f" of {step_us:.1f} us timed ({busy / step_us:.0%})" if step_us else ""
        self.log(f"{key} profile: GPU busy {busy:.1f} us/step{idle}")

    @staticmethod
    def rel_err(y, ref) -> float:
        y, ref = y.float().cpu(), ref.float().cpu()
        return ((y - ref).norm() / ref.norm()).item()

    def check_err(self, key: str, entry: dict, y, ref, same_weights_ref=None, field: str = "rel_err") -> None:
        """entry[field] = rel. error of y vs eager bf16, flagged when not finite or above REL_ERR_FLAG.
        field "rel_err": the first call's logits; "rel_err_replay": a call of the graph that is timed
        (for CUDA-graph rows the first call is the warm-up run, not the recorded graph)."""
        err = self.rel_err(y, ref)
        entry[field] = err
        what = key if field == "rel_err" else f"{key} (replayed graph)"
        if same_weights_ref is not None:
            entry["rel_err_same_weights"] = self.rel_err(y, same_weights_ref)
        if not math.isfinite(err):
            # a wrong output, not an accuracy question: the tables show no speed for it and the run fails
            self.result["flags"].append(f"{what}: WRONG OUTPUT: logits not finite (rel. error {err}) vs eager bf16")
            self.result["wrong_output"] = True
        elif err > REL_ERR_FLAG and (field == "rel_err" or err > 1.1 * entry.get("rel_err", 0.0)):
            self.result["flags"].append(f"{what}: logits rel. error {err:.3g} vs eager bf16 (> {REL_ERR_FLAG})")

    def eager_refs(self, phases: Sequence[str]) -> tuple[dict, dict]:
        """Eager logits of self.model ({(b, s): prefill last-position logits}, {b: first decode step logits}), CPU."""
        refs_prefill, refs_decode = {}, {}
        if "prefill" in phases:
            for b, s in self.shape.prefill_shapes:
                out = self.model(input_ids=self.prefill_ids(b, s), use_cache=False, logits_to_keep=1)
                refs_prefill[(b, s)] = out.logits.float().cpu()
        if "decode" in phases:
            for b in self.shape.decode_batches:
                cache, lens, _ = self.make_cache(b)
                ids, mask, pos = self.decode_inputs(b)
                refs_decode[b] = self.decode_step(self.model, cache, lens, ids, mask, pos, False)().float().cpu()
                del cache, lens
        return refs_prefill, refs_decode

    # ---- the run
    def run(self) -> None:
        torch = self.torch
        args, spec = self.args, self.spec
        self._graphs: list = []
        self.refs_same_weights: tuple[dict, dict] = ({}, {})
        t_row = time.perf_counter()
        if spec.backend == "fp8block":
            import fp8inductor.backend  # noqa: F401  (turns Inductor freezing on, as the entry point does)
        dyn = torch._dynamo.config
        for attr in ("recompile_limit", "cache_size_limit"):
            if hasattr(dyn, attr):
                setattr(dyn, attr, 64)  # prefill shapes + decode batches, two compiled wrappers
        self.result["env"] = self.env()
        phases = args.phases
        # The model is built outside inference mode (ordinary parameters, as a loaded model has them).
        self.model, info = self.build_model()
        self.sync()
        info["mem_after_build_bytes"] = self.mem()
        self.result["model"] = info
        self.log(
            f"built LlamaForCausalLM: {self.layers} layers, {info['params'] / 1e9:.2f} B params, "
            f"{info['model_tensor_bytes'] / 2**30:.2f} GiB on {self.device}"
        )
        grad_ctx = torch.inference_mode() if args.grad_mode == "inference_mode" else torch.no_grad()
        with grad_ctx:
            # eager bf16 references (before quantize_ / compile)
            refs_prefill, refs_decode = self.eager_refs(phases)
            self.log("eager bf16 reference logits computed")
            if spec.quantize:
                t0 = time.perf_counter()
                from fp8inductor.modules import quantize_

                quantize = getattr(sys.modules.get("fp8inductor"), "quantize_", None) or quantize_
                from fp8inductor.config import split_options

                qoptions = self.fp8_config_options()
                qconfig = split_options(qoptions)[0] if qoptions else None  # its FP8BlockConfig fields
                skipped = quantize(self.model, qconfig)
                self.sync()
                info["quantize_s"] = time.perf_counter() - t0
                info["quantize_skipped"] = skipped
                info["model_tensor_bytes_quantized"] = self.tensor_bytes(self.model)
                info["mem_after_quantize_bytes"] = self.mem()
                self.log(
                    f"quantize_: {info['quantize_s']:.1f} s, model tensors now "
                    f"{info['model_tensor_bytes_quantized'] / 2**30:.2f} GiB; skipped: {list(skipped)}"
                )
                # Eager logits of the quantized model (FP8BlockLinear, no compile): the same FP8 weights, so
                # the compiled row's difference from these is compile noise, not quantization error.
                self.refs_same_weights = self.eager_refs(phases)
                self.log("eager logits of the quantized model computed (reference with the same FP8 weights)")
            self.save()
            if "prefill" in phases:
                self.run_prefill(refs_prefill)
            if "decode" in phases:
                self.run_decode(refs_decode)
        self.result["wall_s"] = time.perf_counter() - t_row
        self.result["status"] = "ok" if not self.result.get("errors") else "error"
        self.save()
        self.log(f"done in {self.result['wall_s']:.0f} s")

    def _error(self, where: str, exc: BaseException) -> None:
        traceback.print_exc()
        self.result.setdefault("errors", {})[where] = short_error(exc)
        self.save()

    def run_prefill(self, refs) -> None:
        torch = self.torch
        res = self.result
        n_rep, counted = self.n_fp8_reports(), self.fp8_counters()
        fn = self.compile(self.model, self.spec.prefill_mode)
        res["prefill"] = {}
        compile_s = 0.0
        self.reset_peak()
        # compile (first call of each shape), checked against eager bf16
        for b, s in self.shape.prefill_shapes:
            key = prefill_key(b, s)
            entry = res["prefill"].setdefault(key, {"batch": b, "seq": s, "tokens": b * s})
            ids = self.prefill_ids(b, s)
            try:
                logits, first = self.timed_call(
                    lambda ids=ids: fn(input_ids=ids, use_cache=False, logits_to_keep=1).logits
                )
            except Exception as exc:  # noqa: BLE001 -- a failing phase is a result
                self._error(key, exc)
                continue
            entry["first_call_s"] = first
            compile_s += first
            self.check_err(key, entry, logits, refs[(b, s)], self.refs_same_weights[0].get((b, s)))
            del logits
            same = entry.get("rel_err_same_weights")
            same_note = f", vs eager with the same FP8 weights {same:.2e}" if same is not None else ""
            self.log(f"{key}: first call {first:.1f} s, rel. err vs eager bf16 {entry['rel_err']:.2e}{same_note}")
        res["prefill_compile_s"] = compile_s
        res["prefill_compile_peak_bytes"] = self.peak()
        res["prefill_fp8_graphs"] = self.fp8_reports(n_rep)
        res["prefill_fp8_counters"] = self.counters_since(counted)
        self.save()
        for b, s in self.shape.prefill_shapes:
            key = prefill_key(b, s)
            entry = res["prefill"][key]
            if "first_call_s" not in entry:
                continue
            ids = self.prefill_ids(b, s)
            try:
                t = self.time_fn(lambda ids=ids: fn(input_ids=ids, use_cache=False, logits_to_keep=1))
            except Exception as exc:  # noqa: BLE001
                self._error(key + " (timing)", exc)
                continue
            entry.update(t)
            entry["tokens_per_s"] = b * s / (t["median_ms"] * 1e-3)
            self.log(f"{key}: {t['median_ms']:.2f} ms, {entry['tokens_per_s']:,.0f} tok/s")
            if self.args.profile_prefill and self.cuda:
                entry["profile"] = self.profile_step(lambda ids=ids: fn(input_ids=ids, use_cache=False, logits_to_keep=1))
                self.log_profile(key, entry["profile"], t["median_ms"] * 1e3)
            self.save()
        res["steady_prefill_bytes"] = self.mem()  # model + compiled graphs' constants, no activations
        self.save()
        if self.cuda:
            torch.cuda.empty_cache()

    def run_decode(self, refs) -> None:
        torch = self.torch
        res, spec = self.result, self.spec
        n_rep, counted = self.n_fp8_reports(), self.fp8_counters()
        mode = spec.decode_mode if self.cuda else None
        fn = self.compile(self.model, mode)
        inductor_graphs = spec.backend is not None and mode is not None  # reduce-overhead / max-autotune
        res["decode"] = {}
        res["decode_setup"] = {
            "cache_len": self.shape.decode_cache_len,
            "pos": self.shape.decode_pos,
            "graph": (
                "Inductor CUDA graphs (cudagraph trees)"
                if inductor_graphs
                else ("torch.cuda.CUDAGraph, manual capture" if self.cuda else "none (CPU)")
            ),
        }
        kv_total = 0
        compile_s = 0.0
        self.reset_peak()
        self._caches = []
        for b in self.shape.decode_batches:
            key = decode_key(b)
            entry = res["decode"].setdefault(key, {"batch": b})
            try:
                cache, lens, kv_bytes = self.make_cache(b)
                self._caches.append(cache)
                kv_total += kv_bytes
                entry["kv_cache_bytes"] = kv_bytes
                ids, mask, pos = self.decode_inputs(b)
                step = self.decode_step(fn, cache, lens, ids, mask, pos, mark_step=inductor_graphs)
                logits, first = self.timed_call(step)
                entry["first_call_s"] = first
                self.check_err(key, entry, logits, refs[b], self.refs_same_weights[1].get(b))
                del logits
                if spec.backend is None and self.cuda:
                    try:
                        step, cap = self.timed_call(lambda step=step: self.capture_eager(step))
                        entry["capture_s"] = cap
                    except Exception as exc:  # noqa: BLE001 -- fall back to plain eager, say so
                        traceback.print_exc()
                        torch.cuda.synchronize()
                        entry["graph"] = f"none (eager: capture failed: {short_error(exc)[:200]})"
                elif inductor_graphs:
                    # cudagraph trees: the first call warms up, the next records, later calls replay
                    _, cap = self.timed_call(lambda step=step: (step(), step()))
                    entry["capture_s"] = cap
                entry["setup_s"] = first + entry.get("capture_s", 0.0)
                compile_s += entry["setup_s"]
                logits = step()
                self.check_err(key, entry, logits, refs[b], field="rel_err_replay")
                del logits
                cap_note = f", capture {entry['capture_s']:.1f} s" if "capture_s" in entry else ""
                self.log(
                    f"{key}: first call {first:.1f} s{cap_note}, "
                    f"rel. err vs eager bf16 {entry['rel_err']:.2e} (after setup {entry['rel_err_replay']:.2e})"
                    + (
                        f", vs eager with the same FP8 weights {entry['rel_err_same_weights']:.2e}"
                        if "rel_err_same_weights" in entry
                        else ""
                    )
                )
                self.save()
                t = self.time_fn(step)
                entry.update(t)
                entry["tokens_per_s"] = b / (t["median_ms"] * 1e-3)
                self.log(f"{key}: {t['median_ms'] * 1e3:.0f} us/step, {entry['tokens_per_s']:,.0f} tok/s")
                if self.args.profile_decode and self.cuda and b == self.shape.decode_batches[0]:
                    entry["profile"] = self.profile_step(step)
                    self.log_profile(key, entry["profile"])
                self.save()
            except Exception as exc:  # noqa: BLE001
                self._error(key, exc)
                if self.cuda:
                    with contextlib.suppress(Exception):
                        torch.cuda.synchronize()
        res["decode_compile_s"] = compile_s
        res["decode_compile_peak_bytes"] = self.peak()
        res["decode_fp8_graphs"] = self.fp8_reports(n_rep)
        res["decode_fp8_counters"] = self.counters_since(counted)
        if res["decode_fp8_counters"]:
            self.log(f"decode: fp8inductor passes {res['decode_fp8_counters']}")
        res["kv_cache_bytes"] = kv_total
        res["steady_decode_bytes"] = self.mem()  # model + graphs + CUDA graph pools + all KV caches
        self.save()


def run_row(args: argparse.Namespace) -> int:
    runner = RowRunner(args)
    runner.log(f"start (pid {os.getpid()}, device {runner.device}, layers {runner.layers}, phases {args.phases})")
    try:
        runner.run()
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        runner.result["status"] = "error"
        runner.result.setdefault("errors", {})["row"] = short_error(exc)
        runner.save()
        return 1
    return 0 if runner.result["status"] == "ok" else 1


# ---------------------------------------------------------------------------------------------- driver
def run_meta(args: argparse.Namespace, rows: Sequence[str], shape: ModelShape) -> dict[str, Any]:
    """Meta of this run (the device and library versions are filled in from the rows' own records)."""
    date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    git = git_meta()
    command = " ".join([Path(sys.executable).name, *sys.argv])
    return {
        "benchmark": "bench_model",
        "date": date,
        "layers": args.layers,
        "full_layers": LLAMA3_8B_LAYERS,
        "quick": args.quick,
        "model": {**shape.hf_kwargs(args.layers), "attn_implementation": "sdpa", "dtype": "bfloat16"},
        "shapes": {
            "prefill": [list(p) for p in shape.prefill_shapes],
            "decode_batches": list(shape.decode_batches),
            "decode_cache_len": shape.decode_cache_len,
            "decode_pos": shape.decode_pos,
        },
        "phases": args.phases,
        "logits_to_keep": 1,
        "grad_mode": args.grad_mode,
        "timer": {"warmup_ms": args.warmup_ms, "rep_ms": args.rep_ms},
        "caches": "kept (warm)" if args.keep_caches else "fresh per row (cold compile)",
        "seed": args.seed,
        "rel_err_flag": REL_ERR_FLAG,
        "fp8_options": args.fp8_options,
        "fp8inductor_pdl": os.environ.get("FP8INDUCTOR_PDL"),  # "0": programmatic dependent launch off
        "torchinductor_enable_pdl": os.environ.get("TORCHINDUCTOR_ENABLE_PDL"),  # "1": Inductor's own kernels too
        **git,
        "runs": [{"date": date, "rows": list(rows), "command": command, **git}],
    }


def fill_env_meta(report: dict) -> None:
    """Device and versions at the top level, from the rows (the last row that has them)."""
    for row in report["rows"].values():
        env = row.get("env") or {}
        for key in ("device", "torch", "triton", "cuda", "transformers", "python"):
            if env.get(key) is not None:
                report["meta"][key] = env[key]


def child_command(args: argparse.Namespace, row: str, row_out: Path) -> list[str]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--row",
        row,
        "--row-out",
        str(row_out),
        "--layers",
        str(args.layers),
        "--phases",
        ",".join(args.phases),
        "--device",
        args.device,
        "--grad-mode",
        args.grad_mode,
        "--warmup-ms",
        str(args.warmup_ms),
        "--rep-ms",
        str(args.rep_ms),
        "--seed",
        str(args.seed),
    ]
    if args.quick:
        cmd.append("--quick")
    if args.decode_batches is not None:
        cmd += ["--decode-batches", ",".join(map(str, args.decode_batches))]
    if args.prefill_shapes is not None:
        cmd += ["--prefill-shapes", ",".join(f"{b}x{t}" for b, t in args.prefill_shapes)]
    if args.profile_decode:
        cmd.append("--profile-decode")
    if args.profile_prefill:
        cmd.append("--profile-prefill")
    if args.fp8_options:
        cmd += ["--fp8-options", json.dumps(args.fp8_options)]
    return cmd


def run_child(cmd: list[str], env: dict[str, str], timeout_s: float | None) -> tuple[int | None, bool]:
    """Runs one row process (its own process group, output inherited); (return code, timed out)."""
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        return proc.wait(timeout=timeout_s), False
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the row and its compile workers (a session of its own)
        proc.wait()
        return None, True


def drive(args: argparse.Namespace) -> dict:
    on_cpu = args.device == "cpu" or (args.device == "auto" and not _cuda_visible())
    rows = parse_rows(args.rows, on_cpu)
    shape = model_shape(args)
    out = Path(args.out)
    old = json.loads(out.read_text()) if args.merge and out.exists() else None
    report = {"meta": run_meta(args, rows, shape), "rows": {}}
    merge_reports(old, report)  # refuse an incompatible --merge before spending any time
    log(
        f"bench_model: rows {rows}, {args.layers} layers (of Llama-3-8B's {LLAMA3_8B_LAYERS}), phases {args.phases}, "
        f"{'quick, ' if args.quick else ''}out {out}{' (merge)' if old else ''}"
    )
    t_start = time.perf_counter()
    longest = 0.0
    for row in rows:
        elapsed = time.perf_counter() - t_start
        remaining = None if args.budget_s is None else args.budget_s - elapsed
        if remaining is not None and (remaining < 30 or remaining < 0.5 * longest):
            log(f"skipping {row}: {remaining:.0f} s of the budget left (longest row so far {longest:.0f} s)")
            report["meta"]["runs"][-1].setdefault("skipped", []).append(row)
            continue
        tmp = Path(tempfile.mkdtemp(prefix=f"bench_model_{row}_"))
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        if not args.keep_caches:
            env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp / "inductor")
            env["TRITON_CACHE_DIR"] = str(tmp / "triton")
        row_out = tmp / "row.json"
        log(f"--- {row}: starting its process" + (f" (at most {remaining:.0f} s)" if remaining else ""))
        t_row = time.perf_counter()
        rc, timed_out = run_child(child_command(args, row, row_out), env, remaining)
        dt = time.perf_counter() - t_row
        longest = max(longest, dt)
        result = json.loads(row_out.read_text()) if row_out.exists() else {"row": row, "flags": []}
        if timed_out:
            result["status"] = "timeout"
            result.setdefault("errors", {})["row"] = f"killed after {dt:.0f} s (the --budget-s ran out)"
        elif rc != 0 and result.get("status") in (None, "running", "ok"):
            result["status"] = "error"
            result.setdefault("errors", {})["row"] = f"row process exited with code {rc}"
        result["process_wall_s"] = dt
        result["run_date"] = report["meta"]["date"]  # which run measured it: ratios only within one run
        shutil.rmtree(tmp, ignore_errors=True)
        report["rows"][row] = result
        merged = merge_reports(old, report)
        fill_env_meta(merged)
        write_json_atomic(out, merged)
        log(f"--- {row}: {result.get('status')} in {dt:.0f} s; wrote {out}")
    merged = merge_reports(old, report)
    fill_env_meta(merged)
    merged["meta"]["complete"] = all(r.get("status") == "ok" for r in merged["rows"].values())
    write_json_atomic(out, merged)
    print()
    print(render_docs.model_text_report(merged))
    return merged


def _cuda_visible() -> bool:
    """Whether a CUDA device is there, without importing torch in the driver (a child answers)."""
    code = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"
    return subprocess.run([sys.executable, "-c", code], check=False, capture_output=True).returncode == 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--rows",
        default=None,
        help=f"comma list of {ROW_ORDER} or 'all' (default: {DEFAULT_ROWS}; CPU: {CPU_DEFAULT_ROWS})",
    )
    ap.add_argument(
        "--layers", type=int, default=None, help=f"decoder layers (default {DEFAULT_LAYERS}; --quick: {QUICK_LAYERS})"
    )
    ap.add_argument("--phases", default="prefill,decode", help="comma list of prefill, decode")
    ap.add_argument(
        "--decode-batches",
        type=parse_decode_batches,
        default=None,
        help=f"comma list of decode batch sizes (default {','.join(map(str, LLAMA3_8B.decode_batches))}; "
        f"--quick: {','.join(map(str, QUICK.decode_batches))})",
    )
    ap.add_argument(
        "--prefill-shapes",
        type=parse_prefill_shapes,
        default=None,
        help="comma list of prefill BATCHxLENGTH (default "
        f"{','.join(f'{b}x{t}' for b, t in LLAMA3_8B.prefill_shapes)}; e.g. 1x2047: a length cuBLAS pads)",
    )
    ap.add_argument("--out", default=str(DEFAULT_OUT), help=f"JSON to write (default {DEFAULT_OUT})")
    ap.add_argument(
        "--merge", action="store_true", help="keep the rows of an existing --out that this run does not redo"
    )
    ap.add_argument("--quick", action="store_true", help="tiny model (hidden 512, 2 layers) for a smoke test; CPU too")
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="wall budget of the whole run: later rows are skipped, a row past it is killed",
    )
    ap.add_argument(
        "--keep-caches",
        action="store_true",
        help="use the usual Inductor/Triton caches (warm compile) instead of fresh ones per row",
    )
    ap.add_argument("--grad-mode", choices=("inference_mode", "no_grad"), default="inference_mode")
    ap.add_argument("--warmup-ms", type=float, default=25.0, help="do_bench warmup per measurement")
    ap.add_argument("--rep-ms", type=float, default=200.0, help="do_bench repetition budget per measurement")
    ap.add_argument("--cpu-warmup", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--cpu-reps", type=int, default=3, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--profile-decode",
        action="store_true",
        help="also profile the first decode batch's step (torch.profiler): GPU time per kernel category",
    )
    ap.add_argument(
        "--profile-prefill",
        action="store_true",
        help="also profile each prefill shape (torch.profiler): GPU time per kernel category, and GPU busy / timed",
    )
    ap.add_argument(
        "--fp8-options",
        type=parse_fp8_options,
        default={},
        help='JSON object of FP8BlockConfig options (and Inductor config keys) for every fp8block row, the '
        'quantize_ rows\' config too '
        '(e.g. \'{"gemm_lowering": "extern"}\'; a row\'s own lm_head setting wins); recorded in the meta, and '
        "--merge refuses a file made with other options (or another FP8INDUCTOR_PDL)",
    )
    ap.add_argument("--row", choices=ROW_ORDER, help=argparse.SUPPRESS)  # child mode: run one row
    ap.add_argument("--row-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.phases = parse_phases(args.phases)
    if args.layers is None:
        args.layers = QUICK_LAYERS if args.quick else DEFAULT_LAYERS
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.row:
        return run_row(args)
    report = drive(args)
    ran = report["meta"]["runs"][-1]["rows"]
    rows = [report["rows"].get(r, {}) for r in ran]
    return 0 if all(row.get("status") == "ok" and not row.get("wrong_output") for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
