"""Tables, plot and docs section of the GEMM benchmark, all made from ``bench_gemm.json`` alone.

    python benchmarks/render_docs.py docs/bench_gemm.json [--png docs/bench_gemm.png] [--docs docs/benchmarks.md] [--replot]

(Re)writes the part of ``--docs`` between the markers ``<!-- BEGIN bench_gemm -->`` and
``<!-- END bench_gemm -->``
(creating the file, with an introduction on the method, if it does not exist; appending the section
if the markers are missing). ``bench_gemm.py`` uses the same functions for its ``.md`` and ``.png``.
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
  Each call is timed by its own pair of CUDA events, so host-side time inside a call (Python checks,
  kernel launches) counts where it exceeds the GPU time, as in eager PyTorch. With `--timer cudagraph`
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
  * `ours GEMM` / `ours e2e`: `fp8inductor.kernels.block_gemm.fp8_block_gemm` alone, and
    `fp8_block_linear` (activation quantization + GEMM).
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
    ours, base = rows.get(OURS_E2E), rows.get(baseline)
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


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", type=Path, help="bench_gemm.json written by bench_gemm.py")
    ap.add_argument("--png", type=Path, help="plot to link (default: bench_gemm.png beside the JSON)")
    ap.add_argument("--docs", type=Path, default=DEFAULT_DOCS, help=f"markdown file to update (default {DEFAULT_DOCS})")
    ap.add_argument("--replot", action="store_true", help="(re)draw the plot from the JSON first")
    ap.add_argument("--section", default="bench_gemm", help="marker name of the section (one per run kind)")
    ap.add_argument("--title", default="GEMM results", help="heading of the section")
    args = ap.parse_args(argv)
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
