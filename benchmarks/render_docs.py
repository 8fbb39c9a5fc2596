"""Tables, plot and docs section of the GEMM benchmark, all made from ``bench_gemm.json`` alone.

    python benchmarks/render_docs.py docs/bench_gemm.json [--png docs/bench_gemm.png] [--docs docs/benchmarks.md] [--replot]

(Re)writes the part of ``--docs`` between the markers ``<!-- BEGIN bench_gemm -->`` and
``<!-- END bench_gemm -->``
(creating the file, with an introduction on the method, if it does not exist; appending the section
if the markers are missing). ``bench_gemm.py`` uses the same functions for its ``.md`` and ``.png``.

    python benchmarks/render_docs.py --section model [docs/bench_model.json] [--png docs/bench_model.png] [--replot]

writes the "Model level" section (markers ``bench_model``) and its plot from ``bench_model.json``
(``benchmarks/bench_model.py``); it draws the plot when it is missing or with ``--replot``.
Needs no GPU and no torch; matplotlib only for the plot.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DOCS = REPO_ROOT / "docs" / "benchmarks.md"

OURS_E2E = "ours_e2e"
OURS_GEMM = "ours_gemm"
OURS_TRITON_E2E = "ours_triton_e2e"
# Baselines that ours_e2e is compared with (a speedup column each): key -> column title.
SPEEDUP_BASELINES = {"bf16": "e2e vs bf16", "cublas_bw": "e2e vs cuBLAS-bw", "seed_e2e": "e2e vs seed e2e"}
GBPS_MAX_M = 128  # GB/s is shown for M <= this: below it the FP8 GEMM is bound by reading the weights

# How a non-"ok" status shows in a table cell.
STATUS_CELL = {"wrong": "WRONG", "unsupported": "unsup.", "unavailable": "n/a", "error": "error"}

INTRO = """# Benchmarks

Numbers measured by the scripts in `benchmarks/` (see `benchmarks/README.md` for how to run them).
Each section between `BEGIN`/`END` markers is rewritten by its script; edit outside them.

## GEMM method (`benchmarks/bench_gemm.py`)

* **Problem**: `y[M, N] = x[M, K] @ W[N, K].T`, bf16 activations `x = randn(M, K)`, weights
  `randn(N, K) / sqrt(K)` quantized to FP8 e4m3 in 128x128 blocks (fp32 scales); the shapes are the
  linear layers of Llama-3-8B and DeepSeek-V3 (`benchmarks/shapes.py`) for M = 1 ... 8192.
* **Timing**: `triton.testing.do_bench` (warm-up and repetition budgets in ms are in the section
  header), the **median** over the repetitions; do_bench also clears the L2 cache before each call.
  Each call is timed by its own pair of CUDA events. The L2 clearing is a 256 MiB `zero_()` queued
  before the start event (at ~3 TB/s about 85 µs: an estimate from its size, not measured), and the
  host work of launching the call overlaps it, so host-side time inside a call (Python checks, kernel
  launches) counts only where it exceeds the GPU time plus those ~85 µs: bf16 `torch.mm` (13-17 µs of
  host time) is timed as its GPU time, a path with 200 µs of host time shows about 115 µs of it. So
  the do_bench table is not eager wall-clock time at small M either; it understates every path's
  host time by up to ~85 µs (the host times themselves: "Small M is host-bound" below). With `--timer cudagraph`
  (named in the header) `triton.testing.do_bench_cudagraph` replays the calls back to back from one
  CUDA graph instead: GPU time only, as under CUDA graphs. All implementations run side by side in
  one process.
* **Weight rotation**: every timed call reads the next of several distinct copies of the weights
  (bf16 copies for bf16, FP8 + scales for the others), together more than 4x the L2 cache, so that
  small-M runs read their weights from HBM as in a real model, not from L2.
* **Implementations** (TFLOP/s = 2*M*N*K / median time):
  * `bf16`: `torch.mm(x, W.t())` on bf16 weights (cuBLAS);
  * `cuBLAS-bw`: `torch._scaled_mm` with 1x128 activation / 128x128 weight scales (cuBLAS blockwise
    FP8), GEMM only: its inputs are pre-quantized, scale layout prepared outside the timing;
  * `seed GEMM` / `seed e2e`: the Triton kernels of transformers 4.57.1
    (`integrations/finegrained_fp8.py`, loaded from its wheel): `w8a8_block_fp8_matmul_triton`
    alone, and `act_quant` + it as in `FP8Linear.forward` (without its `synchronize()`);
  * `ours GEMM` / `ours Triton e2e`: our Triton GEMM (`fp8_block_gemm` with the config the op
    would pick if cuBLAS were ruled out) alone, and activation quantization + it;
  * `ours e2e`: `fp8_block_linear` as users get it: activation quantization + the GEMM choice of the
    tuned table / heuristic, which is cuBLAS blockwise where it is faster and admitted
    (`fp8inductor/kernels/cublas.py`), else our Triton GEMM.
  * "GEMM" columns take pre-quantized activations; **e2e** columns include the activation quantization.
* **Correctness**: before timing, each implementation's output (on the first weight copy) is compared
  with an fp32 reference (dequantize, then fp32 matmul; for bf16, the fp32 product of the unquantized
  inputs): relative Frobenius error `|y - y_ref| / |y_ref|`, tolerance 1e-2.
* **Cell values**: TFLOP/s; `WRONG` = it ran but failed the check (its time is in the JSON, not
  reported as a valid speed); `unsup.` = the library raised for this shape (e.g. cuBLAS blockwise
  rejects M = 1); `n/a` = implementation not available in this run; `error` = it raised otherwise.
  Speedup columns = time of the baseline / time of `ours e2e` (> 1: ours is faster), only where
  both are valid. GB/s (M <= 128) counts FP8 weights + scales + bf16 x + bf16 y once.
"""


# ---------------------------------------------------------------------------------------------- data
def load_report(path: str | os.PathLike) -> dict:
    with open(path) as f:
        return json.load(f)


def impl_labels(report: dict) -> dict[str, str]:
    """Implementation key -> display label, in the benchmark's order."""
    return dict(report["meta"]["impls"])


def rows_by_shape(report: dict) -> dict[tuple[int, int, int], dict[str, dict]]:
    """(N, K, M) -> impl key -> row, in the order the shapes were run."""
    out: dict[tuple[int, int, int], dict[str, dict]] = {}
    for row in report["rows"]:
        out.setdefault((row["n"], row["k"], row["m"]), {})[row["impl"]] = row
    return out


def valid(row: dict | None) -> bool:
    return row is not None and row["status"] == "ok" and row.get("time_ms") is not None


def speedup(rows: dict[str, dict], baseline: str) -> float | None:
    """time(baseline) / time(ours e2e), when both are valid."""
    return _ratio_of(rows, baseline, OURS_E2E)


def _ratio_of(rows: dict[str, dict], baseline: str, impl: str) -> float | None:
    """time(baseline) / time(impl), when both are valid."""
    ours, base = rows.get(impl), rows.get(baseline)
    return base["time_ms"] / ours["time_ms"] if valid(ours) and valid(base) else None


def geomean(values: Iterable[float]) -> float | None:
    vals = [v for v in values if v is not None and v > 0]
    return math.exp(sum(map(math.log, vals)) / len(vals)) if vals else None


# ---------------------------------------------------------------------------------------------- tables
def _fmt(v: float | None, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def _fmt_tflops(v: float) -> str:
    """About three significant digits: 812, 96.4, 3.41."""
    return format(v, ".0f" if v >= 100 else ".1f" if v >= 10 else ".2f")


def _cell(row: dict | None) -> str:
    if row is None:
        return "–"
    if row["status"] == "ok":
        return _fmt_tflops(row["tflops"])
    return STATUS_CELL.get(row["status"], row["status"])


def _err_cell(rows: dict[str, dict]) -> str:
    errs = [rows.get(k, {}).get("rel_err") for k in (OURS_GEMM, OURS_E2E)]
    return " / ".join(_fmt(e, ".1e") for e in errs)


def table(report: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the results table (one row per shape)."""
    labels = impl_labels(report)
    header = [
        "N x K",
        "M",
        *labels.values(),
        "ours err GEMM / e2e",
        *SPEEDUP_BASELINES.values(),
        "ours e2e µs",
        "ours e2e GB/s",
    ]
    body = []
    for (n, k, m), rows in rows_by_shape(report).items():
        ours = rows.get(OURS_E2E)
        gbps = ours["gbps"] if valid(ours) and m <= GBPS_MAX_M else None
        body.append(
            [
                f"{n} x {k}",
                str(m),
                *(_cell(rows.get(key)) for key in labels),
                _err_cell(rows),
                *(_fmt(speedup(rows, b), ".2f") for b in SPEEDUP_BASELINES),
                _fmt(ours["time_ms"] * 1e3 if valid(ours) else None, ".1f"),
                _fmt(gbps, ".0f"),
            ]
        )
    return header, body


def summary_lines(report: dict) -> list[str]:
    """Geometric-mean speedups of ours e2e over each baseline (valid shapes only)."""
    shapes = rows_by_shape(report).values()
    lines = []
    for base, title in SPEEDUP_BASELINES.items():
        sps = [speedup(rows, base) for rows in shapes]
        n_valid = sum(s is not None for s in sps)
        g = geomean(sps)
        lines.append(f"{title}: geomean {_fmt(g, '.2f')}{'x' if g else ''} over {n_valid} shapes")
    # Our Triton kernels alone against cuBLAS blockwise (the kernel issue's comparison, cuBLAS ruled out).
    sps = [_ratio_of(rows, "cublas_bw", OURS_TRITON_E2E) for rows in shapes]
    g = geomean(sps)
    if any(s is not None for s in sps):
        lines.append(f"Triton e2e vs cuBLAS-bw: geomean {_fmt(g, '.2f')}x over {sum(s is not None for s in sps)} shapes")
    return lines


def to_markdown(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    numeric = [all(_is_number_like(r[i]) for r in body) for i in range(len(header))]
    align = ["---:" if num else "---" for num in numeric]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def to_text(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    widths = [max(len(header[i]), *(len(r[i]) for r in body)) if body else len(header[i]) for i in range(len(header))]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), *(fmt.format(*r) for r in body)])


def _is_number_like(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return s in ("–", *STATUS_CELL.values()) or " / " in s or " x " in s


def notes(report: dict) -> list[str]:
    """One line per distinct (implementation, status, message) of the non-ok rows."""
    seen: dict[tuple[str, str, str], list[str]] = {}
    labels = impl_labels(report)
    for row in report["rows"]:
        if row["status"] != "ok":
            key = (labels.get(row["impl"], row["impl"]), row["status"], row.get("note", ""))
            seen.setdefault(key, []).append(f"{row['m']}x{row['n']}x{row['k']}")
    return [f"{impl} {status} ({len(s)} shapes, e.g. MxNxK {s[0]}): {msg}" for (impl, status, msg), s in seen.items()]


def header_line(report: dict) -> str:
    meta = report["meta"]
    sha = meta.get("git_sha") or "unknown"
    if meta.get("git_dirty"):
        sha += " (dirty)"
    timer = f"do_bench median, warmup {meta['warmup_ms']} ms, rep {meta['rep_ms']} ms"
    if meta.get("timer") == "cudagraph":
        timer = f"do_bench_cudagraph median of 10 graph replays, rep {meta['rep_ms']} ms"
    if meta.get("dry_run"):
        timer = "DRY RUN (CPU, reference stand-ins, perf_counter): not a measurement"
    return (
        f"{meta['device']}; torch {meta['torch']}, triton {meta.get('triton')}, CUDA {meta.get('cuda')}, "
        f"transformers {meta.get('transformers')}; git {sha}; {meta['date']}; {timer}; "
        f"weights rotated over >= {meta['l2_multiple']}x L2 ({meta['l2_bytes'] / 2**20:.0f} MiB)"
    )


def markdown(report: dict, png: str | None = None) -> str:
    """The results as markdown: header line, optional plot, table, summary, notes."""
    header, body = table(report)
    parts = [f"*{header_line(report)}*", ""]
    if png:
        parts += [f"![GEMM TFLOP/s vs M]({png})", ""]
    parts += [
        "TFLOP/s (higher is better); speedups = baseline time / ours e2e time.",
        "",
        to_markdown(header, body),
        "",
    ]
    parts += [f"* {line}" for line in summary_lines(report)]
    note_lines = notes(report)
    if note_lines:
        parts += ["", "Non-ok cells:", "", *(f"* {line}" for line in note_lines)]
    return "\n".join(parts) + "\n"


def text_report(report: dict) -> str:
    """The compact table for stdout."""
    header, body = table(report)
    return "\n".join([header_line(report), to_text(header, body), *summary_lines(report), *notes(report)])


# ---------------------------------------------------------------------------------------------- plot
def plot(report: dict, png_path: str | os.PathLike) -> None:
    """One subplot per (N, K): TFLOP/s vs M (log x), one line per implementation, valid points only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = impl_labels(report)
    groups: dict[tuple[int, int], dict[str, list[tuple[int, float]]]] = {}
    for (n, k, m), rows in rows_by_shape(report).items():
        per_impl = groups.setdefault((n, k), {key: [] for key in labels})
        for key, row in rows.items():
            if valid(row) and key in per_impl:
                per_impl[key].append((m, row["tflops"]))
    ncols = min(4, len(groups) + 1)  # + 1 panel for the legend
    nrows = math.ceil((len(groups) + 1) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    flat = list(axes.flat)
    handles = {}
    for ax, ((n, k), per_impl) in zip(flat, groups.items()):
        for key, pts in per_impl.items():
            if pts:
                ms, tf = zip(*sorted(pts))
                (line,) = ax.plot(ms, tf, marker="o", markersize=3, label=labels[key])
                handles.setdefault(labels[key], line)
        ax.set_xscale("log", base=2)
        all_ms = sorted({m for pts in per_impl.values() for m, _ in pts})
        ax.set_xticks(all_ms, [str(m) for m in all_ms], fontsize=7)
        ax.minorticks_off()
        ax.set_title(f"N={n}, K={k}", fontsize=10)
        ax.set_xlabel("M")
        ax.set_ylabel("TFLOP/s")
        ax.grid(True, which="both", alpha=0.3)
    for ax in flat[len(groups) :]:
        ax.axis("off")
    # Same color per implementation in every panel: the default cycle in the same order everywhere,
    # except where a panel lacks a line; re-color by label to be sure.
    colors = {label: f"C{i}" for i, label in enumerate(labels.values())}
    for ax in flat[: len(groups)]:
        for line in ax.get_lines():
            line.set_color(colors[line.get_label()])
    for label, line in handles.items():
        line.set_color(colors[label])
    legend_ax = flat[len(groups)]
    legend_ax.legend(list(handles.values()), list(handles.keys()), loc="center", fontsize=9)
    fig.suptitle(header_line(report), fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(png_path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- docs
def markers(name: str = "bench_gemm") -> tuple[str, str]:
    return f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"


def docs_section(report: dict, png_rel: str | None, name: str = "bench_gemm", title: str = "GEMM results") -> str:
    begin, end = markers(name)
    return f"{begin}\n## {title}\n\n{markdown(report, png_rel)}{end}"


def update_docs(docs_path: Path, section: str, name: str = "bench_gemm") -> None:
    """Replaces the marked section of docs_path (creating the file / appending the section as needed)."""
    text = docs_path.read_text() if docs_path.exists() else INTRO
    begin_marker, end_marker = markers(name)
    begin, end = text.find(begin_marker), text.find(end_marker)
    if begin >= 0 and end > begin:
        text = text[:begin] + section + text[end + len(end_marker) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    docs_path.parent.mkdir(parents=True, exist_ok=True)
    docs_path.write_text(text)


# ---------------------------------------------------------------------------------------------- model level
# The "Model level" section, from bench_model.json (benchmarks/bench_model.py): `render_docs.py --section model`.
MODEL_SECTION = "bench_model"
MODEL_TITLE = "Model level"
MODEL_DEFAULT_JSON = REPO_ROOT / "docs" / "bench_model.json"
MODEL_BASELINE = "compile_bf16"
# Targets of the FP8 rows against compile_bf16 (issue 4): speedups at least, compile-time ratio at most.
MODEL_TARGETS = {"prefill": 1.4, "decode_b1": 1.6, "compile": 1.5}
GIB = 2**30

MODEL_METHOD = """* **Model**: transformers `LlamaForCausalLM` with {dims} but **{layers_text}**; random bf16 weights made on the device (linears `randn / sqrt(K)`, embeddings
  `randn`, seed {seed}), SDPA attention, `eval()` under `torch.{grad_mode}()`. Each row runs in its own
  process; Inductor and Triton caches: {caches}.
* **Rows**: `eager_bf16`; `compile_bf16` (`torch.compile`, Inductor, no fp8inductor import in the
  process); `compile_bf16_max_autotune` (prefill `max-autotune-no-cudagraphs`, decode `max-autotune`);
  `fp8block` (the bf16 model compiled with `backend="fp8block"`: weights quantized at compile time);
  `fp8block_quantized` (`quantize_(model)` first, then `backend="fp8block"`); `fp8block_lm_head` and
  `fp8block_quantized_lm_head` (the same with `modules_to_not_convert=[]`: the `lm_head` is FP8 too);
  `fp8block_max_autotune` (as `fp8block`, modes as the bf16 max-autotune row, through
  `options={{"mode": ...}}`).
* **Prefill**: one forward of the whole prompt (no cache, `logits_to_keep=1`: logits of the last
  position only) at batch x length {prefill}; tokens/s = batch x length / time. Compiled rows: default
  mode, static shapes (one graph per shape), no CUDA graphs.
* **Decode**: one step of B new tokens (B = {batches}) against a transformers `StaticCache` of
  {cache_len} positions (filled with random keys/values), written at position {pos}, attention over
  positions 0..{pos} (4-D mask); the step resets the cache's length counters first (one small launch),
  so every replay is the same step. CUDA graphs: compiled rows use Inductor's (`mode="reduce-overhead"`,
  for fp8block `options={{"mode": "reduce-overhead"}}`; max-autotune rows `max-autotune`), eager captures
  the step in a `torch.cuda.CUDAGraph` by hand. tokens/s = B / step time.
* **Timing**: `triton.testing.do_bench` median (warmup {warmup_ms} ms, rep {rep_ms} ms) after the compiling
  and capturing calls; since 2026-12-06 at least 50 timed calls (more do_bench calls where the rep
  budget held fewer), their count recorded as `n` (before: 8-19 calls for a 1x2048 prefill, whose
  20th-80th percentile spread was up to ~5%, so prefill ratios carry about +-2.5%).
* **Compile**: wall time of the calls that compile, per phase: prefill = first call of each shape;
  decode = first call + the two calls that warm up and record the CUDA graph, per batch (eager: capture
  only). Peak = `max_memory_allocated` over those calls (reset before each phase).
* **Memory**: "steady" = `memory_allocated` after the prefill phase (model + compiled graphs' constants;
  no KV cache, no activations). "held for linears" = steady minus the embedding, norms and `lm_head` as
  the row holds them (counted from the model's tensors: bf16, and an FP8 `lm_head`'s codes and scales
  where the row converts it), i.e. what holds the decoder layers' linear weights,
  as a fraction of those weights in bf16 ({linear_gib:.2f} GiB). "decode" = `memory_allocated` after the
  decode phase minus the KV caches (adds the CUDA graph pools).
* **decode b1 weights TB/s**: the weight bytes a step reads (decoder linears, FP8 rows: FP8 + scales;
  the `lm_head`, bf16 unless the row converts it too) / batch-1 step time; the H100 copies about
  3.0 TB/s. With a bf16 `lm_head` of {lm_head_gib:.2f} GiB beside {linear_gib:.2f} GiB of bf16 linears, FP8 can
  speed a bandwidth-bound step up by at most {ceiling:.2f}x at this depth.
* **Correctness**: each row's logits (last prefill position, first decode step) against eager bf16 of
  the same model in the same process, relative Frobenius error; flagged above {flag}. For scale: one
  FP8 linear on this data (`randn` x, `randn / sqrt(K)` W, K = 4096) is 3.7e-2 from the exact product
  (bf16: 1.7e-3), and the error grows with depth. `fp8block_quantized` is also compared with eager
  logits of its own quantized model (in parentheses): same FP8 weights, so what remains is compile
  noise, which FP8 rounding of the activations amplifies."""


def model_metric_keys(report: dict) -> list[tuple[str, str]]:
    """(key, label) of the tokens/s metrics, in table order: the prefill shapes, then the decode batches."""
    shapes = report["meta"]["shapes"]
    keys = [(f"prefill_{b}x{s}", f"prefill {b}x{s}") for b, s in shapes["prefill"]]
    keys += [(f"decode_b{b}", f"decode b{b}") for b in shapes["decode_batches"]]
    return keys


def _model_entry(row: dict | None, key: str) -> dict:
    if row is None:
        return {}
    phase = "prefill" if key.startswith("prefill") else "decode"
    return (row.get(phase) or {}).get(key) or {}


def model_output_wrong(row: dict | None, key: str) -> bool:
    """The measurement's logits were not finite (NaN/inf), at the first call or in the replayed graph
    that was timed: its speed is no result."""
    entry = _model_entry(row, key)
    errs = [entry.get(field) for field in ("rel_err", "rel_err_replay")]
    return any(err is not None and not math.isfinite(err) for err in errs)


def model_tokens_per_s(row: dict | None, key: str) -> float | None:
    """tokens/s of a measurement, None where it is missing or its logits were not finite."""
    entry = _model_entry(row, key)
    return None if model_output_wrong(row, key) else entry.get("tokens_per_s")


def model_compile_s(row: dict | None) -> float | None:
    """Prefill + decode compile (and capture) seconds of a compiled row; None for eager or when missing."""
    if row is None or row.get("backend") in (None, "eager"):
        return None
    parts = [row.get("prefill_compile_s"), row.get("decode_compile_s")]
    parts = [p for p in parts if p is not None]
    return sum(parts) if parts else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b and b > 0 else None


def _other_run(row: dict, base: dict | None) -> bool:
    """The row and the baseline were measured by different runs (``--merge`` keeps earlier rows;
    ``run_date`` is recorded since 2026-12-06): processes differ by a few percent, so no ratio."""
    row_run, base_run = row.get("run_date"), (base or {}).get("run_date")
    return row_run is not None and base_run is not None and row_run != base_run


def model_ratios(report: dict) -> dict[str, dict[str, float | None]]:
    """row -> metric key (tokens/s keys, 'compile') -> ratio vs compile_bf16 (tokens/s: higher is better;
    compile: row time / baseline time, lower is better); None where they come from different runs."""
    base = report["rows"].get(MODEL_BASELINE)
    out = {}
    for name, row in report["rows"].items():
        if _other_run(row, base):
            out[name] = {key: None for key, _ in model_metric_keys(report)} | {"compile": None}
            continue
        r = {
            key: _ratio(model_tokens_per_s(row, key), model_tokens_per_s(base, key))
            for key, _ in model_metric_keys(report)
        }
        r["compile"] = _ratio(model_compile_s(row), model_compile_s(base))
        out[name] = r
    return out


def _fp8_bytes(bf16_bytes: int) -> int:
    """FP8 codes + fp32 128x128 block scales of weights that take ``bf16_bytes`` in bf16."""
    return bf16_bytes // 2 + bf16_bytes // 2 // (128 * 128) * 4


def _fp8_lm_head(row: dict) -> bool:
    """The row converts lm_head too (``fp8_lm_head``; files before 2026-12-06 lack it: the row name says)."""
    return bool(row.get("fp8_lm_head", str(row.get("row", "")).endswith("_lm_head")))


def _held_for_linears(row: dict) -> tuple[float | None, float | None]:
    """(bytes held for the decoder linears after setup, as a fraction of those linears in bf16): steady
    minus the embedding, norms and the lm_head as the row holds it (bf16; an FP8 lm_head's codes and
    scales too, beside the bf16 one unless ``quantize_`` released it)."""
    model = row.get("model") or {}
    steady = row.get("steady_prefill_bytes")
    if steady is None or not model.get("linear_bf16_bytes"):
        return None, None
    lm_head = model["lm_head_bytes"]
    if _fp8_lm_head(row):
        lm_head = _fp8_bytes(lm_head) + (0 if row.get("quantized") else lm_head)
    held = steady - model["embed_bytes"] - lm_head - model["other_bytes"]
    return held, held / model["linear_bf16_bytes"]


def _decode_weight_bytes(row: dict) -> int | None:
    """Weight bytes one decode step reads: the decoder linears and the lm_head, each in bf16 or (FP8
    rows) FP8 + fp32 block scales; embedding row reads, norms and the KV cache left out."""
    model = row.get("model") or {}
    if not model.get("linear_bf16_bytes"):
        return None
    linear, lm_head = model["linear_bf16_bytes"], model["lm_head_bytes"]
    if row.get("fp8"):
        linear = _fp8_bytes(linear)
        if _fp8_lm_head(row):
            lm_head = _fp8_bytes(lm_head)
    return linear + lm_head


def model_decode_b1_tbps(row: dict, key: str = "decode_b1") -> float | None:
    """Weight bytes per batch-1 decode step / step time, TB/s (H100 copy ceiling: about 3.0)."""
    entry = (row.get("decode") or {}).get(key) or {}
    nbytes = _decode_weight_bytes(row)
    if nbytes is None or not entry.get("median_ms"):
        return None
    return nbytes / (entry["median_ms"] * 1e-3) / 1e12


def _max_err(row: dict, key: str = "rel_err") -> float | None:
    errs = [e.get(key) for phase in ("prefill", "decode") for e in (row.get(phase) or {}).values()]
    errs = [e for e in errs if e is not None]
    return max(errs) if errs else None


def _fmt_tok(v: float | None) -> str:
    return "–" if v is None else f"{v:,.0f}"


def _fmt_gib(v: float | None) -> str:
    return "–" if v is None else f"{v / GIB:.2f}"


def _fmt_x(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}x"


def _row_status_cell(name: str, row: dict) -> str:
    status = row.get("status", "?")
    return name if status == "ok" else f"{name} ({status})"


def model_tables(report: dict) -> list[tuple[list[str], list[list[str]]]]:
    """Throughput table (tokens/s, ratio vs compile_bf16) and compile/memory/accuracy table."""
    keys = model_metric_keys(report)
    ratios = model_ratios(report)
    t1_head = ["row", *(f"{label} tok/s" for _, label in keys)]
    t1 = []
    for name, row in report["rows"].items():
        cells = []
        for key, _ in keys:
            if model_output_wrong(row, key):
                cells.append("WRONG (non-finite logits)")
                continue
            v = model_tokens_per_s(row, key)
            r = ratios[name][key]
            cells.append(_fmt_tok(v) + (f" ({r:.2f}x)" if r is not None and v is not None else ""))
        t1.append([_row_status_cell(name, row), *cells])
    t2_head = [
        "row",
        "compile s prefill / decode",
        "compile vs compile_bf16",
        "peak GiB prefill / decode",
        "steady GiB",
        "held for linears GiB (/ bf16)",
        "decode − KV GiB",
        "decode b1 weights TB/s",
        "max rel. err vs eager bf16 (same FP8 weights)",
    ]
    t2 = []
    for name, row in report["rows"].items():
        compiled = row.get("backend") not in (None, "eager")
        cp, cd = row.get("prefill_compile_s"), row.get("decode_compile_s")
        comp = f"{_fmt(cp, '.1f')} / {_fmt(cd, '.1f')}" if compiled else "– / –"
        peak = f"{_fmt_gib(row.get('prefill_compile_peak_bytes'))} / {_fmt_gib(row.get('decode_compile_peak_bytes'))}"
        held, frac = _held_for_linears(row)
        dec = row.get("steady_decode_bytes")
        dec_kv = dec - row.get("kv_cache_bytes", 0) if dec is not None else None
        t2.append(
            [
                _row_status_cell(name, row),
                comp,
                _fmt_x(ratios[name]["compile"]),
                peak,
                _fmt_gib(row.get("steady_prefill_bytes")),
                f"{_fmt_gib(held)} ({frac:.2f})" if frac is not None else "–",
                _fmt_gib(dec_kv),
                _fmt(model_decode_b1_tbps(row), ".2f"),
                _fmt(_max_err(row), ".1e")
                + (
                    f" ({_fmt(_max_err(row, 'rel_err_same_weights'), '.1e')})"
                    if _max_err(row, "rel_err_same_weights")
                    else ""
                ),
            ]
        )
    return [(t1_head, t1), (t2_head, t2)]


def model_target_lines(report: dict) -> list[str]:
    """The FP8 rows against the targets (prefill >= 1.4x, batch-1 decode >= 1.6x, compile <= 1.5x)."""
    ratios = model_ratios(report)
    if MODEL_BASELINE not in report["rows"]:
        return [f"no {MODEL_BASELINE} row: no ratios"]
    lines = []
    for name, row in report["rows"].items():
        if not row.get("fp8"):
            continue
        parts = []
        for key, label in model_metric_keys(report):
            target = MODEL_TARGETS["prefill"] if key.startswith("prefill") else MODEL_TARGETS.get(key)
            if target is None:
                continue
            r = ratios[name][key]
            verdict = "–" if r is None else ("met" if r >= target else "missed")
            parts.append(f"{label} {_fmt_x(r)} (>= {target}x: {verdict})")
        r = ratios[name]["compile"]
        verdict = "–" if r is None else ("met" if r <= MODEL_TARGETS["compile"] else "missed")
        parts.append(f"compile time {_fmt_x(r)} (<= {MODEL_TARGETS['compile']}x: {verdict})")
        lines.append(f"`{name}` vs `{MODEL_BASELINE}`: " + "; ".join(parts))
    return lines


def model_notes(report: dict) -> list[str]:
    lines = []
    base = report["rows"].get(MODEL_BASELINE)
    for run in report["meta"].get("runs", []):
        for name in run.get("rows", []):
            if name not in report["rows"]:
                why = "skipped: the run's --budget-s ran out" if name in run.get("skipped", []) else "skipped or failed"
                lines.append(f"`{name}`: requested in the run of {run.get('date')}, not measured ({why})")
            elif name in run.get("skipped", []) and "run_date" not in report["rows"][name]:
                lines.append(
                    f"`{name}`: skipped in the run of {run.get('date')} (--budget-s); the row is an earlier run's, "
                    f"kept by --merge, and its ratios divide by another run's `{MODEL_BASELINE}`"
                )
    for name, row in report["rows"].items():
        if _other_run(row, base):
            lines.append(f"`{name}`: measured in the run of {row['run_date']}, `{MODEL_BASELINE}` in the run of "
                         f"{base['run_date']}: no ratios across runs")  # fmt: skip
        env, base_env = row.get("env") or {}, (base or {}).get("env") or {}
        differs = [k for k in ("device", "torch", "triton") if env.get(k) and base_env.get(k) and env[k] != base_env[k]]
        if differs:
            lines.append(f"`{name}`: other {', '.join(differs)} than `{MODEL_BASELINE}` "
                         f"({', '.join(f'{env[k]} vs {base_env[k]}' for k in differs)})")  # fmt: skip
    for name, row in report["rows"].items():
        for where, msg in (row.get("errors") or {}).items():
            lines.append(f"`{name}` {where}: {msg.splitlines()[0] if msg else ''}"[:400])
        for flag in row.get("flags") or []:
            lines.append(f"`{name}` flag: {flag}")
        for key, entry in (row.get("decode") or {}).items():
            if entry.get("graph"):
                lines.append(f"`{name}` {key}: CUDA graph: {entry['graph']}")
    return lines


def model_header_line(report: dict) -> str:
    meta = report["meta"]
    sha = meta.get("git_sha") or "unknown"
    sha = sha[:7] + (" (dirty)" if meta.get("git_dirty") else "")
    quick = "; QUICK (tiny model): not a measurement" if meta.get("quick") else ""
    model = (
        f"tiny config, {meta['layers']} layers"
        if meta.get("quick")
        else f"Llama-3-8B dimensions, {meta['layers']} of {meta.get('full_layers', 32)} layers"
    )
    return (
        f"{meta.get('device')}; torch {meta.get('torch')}, triton {meta.get('triton')}, CUDA {meta.get('cuda')}, "
        f"transformers {meta.get('transformers')}; git {sha}; {meta.get('date')}; {model}; "
        f"do_bench median, warmup {meta['timer']['warmup_ms']} ms, rep {meta['timer']['rep_ms']} ms; "
        f"caches {meta.get('caches')}{quick}"
    )


def model_method(report: dict) -> str:
    meta = report["meta"]
    shapes = meta["shapes"]
    model = next((r["model"] for r in report["rows"].values() if r.get("model")), {})
    linear, lm_head = model.get("linear_bf16_bytes", 0), model.get("lm_head_bytes", 0)
    ceiling = (linear + lm_head) / (linear / 2 + lm_head) if linear else float("nan")
    m = meta["model"]
    dims = (
        f"hidden {m['hidden_size']}, intermediate {m['intermediate_size']}, {m['num_attention_heads']} heads, "
        f"{m['num_key_value_heads']} KV heads, vocab {m['vocab_size']}, rope theta {m['rope_theta']:g}"
    )
    dims = ("Llama-3-8B's dimensions (" + dims + ")") if not meta.get("quick") else ("a tiny config (" + dims + ")")
    return MODEL_METHOD.format(
        dims=dims,
        layers_text=(
            f"{meta['layers']} decoder layers"
            if meta.get("quick")
            else f"{meta['layers']} of Llama-3-8B's {meta.get('full_layers', 32)} decoder layers"
        ),
        seed=meta.get("seed", 0),
        grad_mode=meta.get("grad_mode", "inference_mode"),
        caches=meta.get("caches"),
        prefill=", ".join(f"{b}x{s}" for b, s in shapes["prefill"]),
        batches=", ".join(str(b) for b in shapes["decode_batches"]),
        cache_len=shapes["decode_cache_len"],
        pos=shapes["decode_pos"],
        warmup_ms=meta["timer"]["warmup_ms"],
        rep_ms=meta["timer"]["rep_ms"],
        linear_gib=linear / GIB,
        lm_head_gib=lm_head / GIB,
        ceiling=ceiling,
        flag=meta.get("rel_err_flag", 0.1),
    )


def _model_md_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """Markdown table, the row names left-aligned, every other column right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def model_markdown(report: dict, png: str | None = None) -> str:
    parts = [f"*{model_header_line(report)}*", "", model_method(report), ""]
    if png:
        parts += [f"![Model-level tokens/s per row and phase]({png})", ""]
    (h1, b1), (h2, b2) = model_tables(report)
    parts += [
        f"Tokens/s (higher is better); in parentheses: vs `{MODEL_BASELINE}`.",
        "",
        _model_md_table(h1, b1),
        "",
        "Compile time, memory, accuracy (GiB = 2^30 bytes; compile ratio: lower is better).",
        "",
        _model_md_table(h2, b2),
        "",
        "Targets:",
        "",
        *(f"* {line}" for line in model_target_lines(report)),
    ]
    notes_ = model_notes(report)
    if notes_:
        parts += ["", "Notes:", "", *(f"* {line}" for line in notes_)]
    return "\n".join(parts) + "\n"


def model_text_report(report: dict) -> str:
    lines = [model_header_line(report)]
    for head, body in model_tables(report):
        lines += ["", to_text(head, body)]
    lines += ["", "targets:", *model_target_lines(report)]
    notes_ = model_notes(report)
    if notes_:
        lines += ["", "notes:", *notes_]
    return "\n".join(lines)


def model_plot(report: dict, png_path: str | os.PathLike) -> None:
    """One panel per phase: tokens/s bar per row, annotated with the value and the ratio vs compile_bf16."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = model_metric_keys(report)
    names = list(report["rows"])
    ratios = model_ratios(report)
    colors = {name: f"C{i}" for i, name in enumerate(names)}
    n_panels = len(keys) + 1  # + compile time
    ncols = min(3, n_panels)
    nrows = math.ceil(n_panels / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.0 * ncols, 3.8 * nrows), squeeze=False)
    flat = list(axes.flat)
    for ax, (key, label) in zip(flat, keys):
        vals = [model_tokens_per_s(report["rows"][n], key) for n in names]
        xs = list(range(len(names)))
        ax.bar(xs, [v or 0 for v in vals], color=[colors[n] for n in names])
        top = max([v for v in vals if v] or [1])
        for x, n, v in zip(xs, names, vals):
            if v is None:
                ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=7)
                continue
            r = ratios[n][key]
            text = f"{v:,.0f}" + (f"\n{r:.2f}x" if r is not None else "")
            ax.text(x, v + 0.01 * top, text, ha="center", va="bottom", fontsize=7)
        ax.set_xticks(xs, names, rotation=30, ha="right", fontsize=7)
        ax.set_ylim(0, top * 1.25)
        ax.set_title(f"{label} (tokens/s)", fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    ax = flat[len(keys)]
    comp = [model_compile_s(report["rows"][n]) for n in names]
    xs = list(range(len(names)))
    ax.bar(xs, [c or 0 for c in comp], color=[colors[n] for n in names])
    top = max([c for c in comp if c] or [1])
    for x, n, c in zip(xs, names, comp):
        r = ratios[n]["compile"]
        text = "–" if c is None else f"{c:.0f} s" + (f"\n{r:.2f}x" if r is not None else "")
        ax.text(x, (c or 0) + 0.01 * top, text, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(xs, names, rotation=30, ha="right", fontsize=7)
    ax.set_ylim(0, top * 1.25)
    ax.set_title("compile + capture, prefill + decode (s, lower is better)", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    for ax in flat[n_panels:]:
        ax.axis("off")
    fig.suptitle(model_header_line(report) + f"\nratios vs {MODEL_BASELINE} under the values", fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    fig.savefig(png_path, dpi=120)
    plt.close(fig)


def model_docs_section(report: dict, png_rel: str | None) -> str:
    begin, end = markers(MODEL_SECTION)
    return f"{begin}\n## {MODEL_TITLE} (`benchmarks/bench_model.py`)\n\n{model_markdown(report, png_rel)}{end}"


def _main_model(args: argparse.Namespace) -> None:
    json_path = args.json or MODEL_DEFAULT_JSON
    report = load_report(json_path)
    png = args.png or json_path.with_name("bench_model.png")
    if args.replot or not png.exists():
        model_plot(report, png)
    png_rel = os.path.relpath(png.resolve(), args.docs.resolve().parent)
    update_docs(args.docs, model_docs_section(report, png_rel), MODEL_SECTION)
    print(model_text_report(report))
    print(f"wrote {png} and the {MODEL_TITLE!r} section of {args.docs}")


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "json", type=Path, nargs="?", help="bench_gemm.json (or, with --section model, bench_model.json: the default)"
    )
    ap.add_argument("--png", type=Path, help="plot to link (default: bench_gemm.png beside the JSON)")
    ap.add_argument("--docs", type=Path, default=DEFAULT_DOCS, help=f"markdown file to update (default {DEFAULT_DOCS})")
    ap.add_argument("--replot", action="store_true", help="(re)draw the plot from the JSON first")
    ap.add_argument(
        "--section",
        default="bench_gemm",
        help="marker name of the section (one per run kind); 'model': the Model level section from bench_model.json",
    )
    ap.add_argument("--title", default="GEMM results", help="heading of the section")
    args = ap.parse_args(argv)
    if args.section in ("model", MODEL_SECTION):
        _main_model(args)
        return
    if args.json is None:
        ap.error("the JSON file is required (except with --section model)")
    report = load_report(args.json)
    png = args.png or args.json.with_name("bench_gemm.png")
    if args.replot:
        plot(report, png)
    png_rel = os.path.relpath(png.resolve(), args.docs.resolve().parent) if png.exists() else None
    if png_rel is None:
        print(f"note: {png} does not exist; the section will have no plot (use --replot)")
    update_docs(args.docs, docs_section(report, png_rel, args.section, args.title), args.section)
    print(f"wrote the {args.section} section of {args.docs}")


if __name__ == "__main__":
    main()
