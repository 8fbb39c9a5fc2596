"""``python -m fp8inductor tune``: time GEMM configurations per (N, K, M bucket) and write the table.

For every shape it checks each candidate against a float32 reference of the same quantized inputs
(rows sampled, relative error < 1e-2), times it under CUDA graphs (GPU time: the table picks
kernels, host overhead is the same for all), and records the fastest, the heuristic's time and
every candidate's time. cuBLAS blockwise is a candidate from M = 64 where ``kernels/cublas.py``
admits the shape (timed on column-major activation scales, as the op's quant kernel writes them).
The JSON is rewritten after each shape (atomically: an interrupted run leaves the last complete
file; under a lock, merged with what another run wrote there meanwhile), and ``--resume`` skips the
shapes it already has, so an interrupted run continues where it stopped; ``--update`` re-tunes the
given shapes and M buckets and keeps every other entry of the table. An existing table is replaced
only with ``--overwrite``: without one of the three a run stops before timing anything. Each entry
records the git SHA, triton and torch it was tuned with; ``--resume`` under another triton than the
table's is refused (``--update`` re-tunes instead), and so is ``--update`` without a git SHA.

    python -m fp8inductor tune [--shapes suite|models|all] [--m 64,128] [--out <table>.json]
        [--resume | --update [--why TEXT] | --overwrite]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from .kernels.config import CUBLAS, GemmConfig
from .tuned import (
    CONFIG_DIR,
    M_BUCKET_MAX,
    M_BUCKETS,
    SCHEMA,
    describe_dropped,
    device_slug,
    parse_table,
    shape_key,
    table_versions,
)

try:
    import fcntl  # POSIX: concurrent runs on one table take turns writing it
except ImportError:  # pragma: no cover - Windows: no lock
    fcntl = None  # type: ignore[assignment]

# (N, K) of the kernel issue's suite and of common models.
SUITE_NK = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (7168, 16384), (24576, 1536), (2112, 7168)]
MODEL_NK = [
    (1024, 4096), (14336, 4096),  # Llama-3-8B / Mistral-7B (kv, gate/up; q/o and down are in the suite)
    (8192, 8192), (1024, 8192), (28672, 8192), (8192, 28672),  # Llama-3-70B
    (3584, 3584), (512, 3584), (18944, 3584), (3584, 18944),  # Qwen2.5-7B
    (32768, 512), (4096, 7168), (7168, 2048), (18432, 7168), (576, 7168),  # DeepSeek-V3
]  # fmt: skip


def candidates(m: int) -> list[GemmConfig]:
    """Triton configurations worth timing for this M (pruned by the 2026-11-25 kernel lab)."""
    if m <= 16:  # split-K with in-kernel reduction (one launch) since 2026-11-25: more splits pay
        return [GemmConfig("tiles", 16, 64, 4, 4), GemmConfig("tiles", 16, 128, 4, 4),
                GemmConfig("splitk", 16, 64, 4, 4, split_k=4), GemmConfig("splitk", 16, 64, 4, 4, split_k=8),
                GemmConfig("splitk", 16, 128, 4, 4, split_k=2), GemmConfig("splitk", 16, 128, 4, 4, split_k=4),
                GemmConfig("splitk", 16, 128, 4, 4, split_k=8), GemmConfig("splitk", 16, 64, 4, 6, split_k=16),
                # 2026-12-06: narrower tiles (more programs, so every SM streams without a split-K
                # fix-up) and deeper pipelines (more weight bytes in flight per SM)
                GemmConfig("tiles", 16, 32, 4, 6), GemmConfig("tiles", 16, 32, 4, 8), GemmConfig("tiles", 16, 64, 4, 6),
                GemmConfig("splitk", 16, 32, 4, 6, split_k=2), GemmConfig("splitk", 16, 32, 4, 6, split_k=4),
                GemmConfig("splitk", 16, 64, 4, 6, split_k=2), GemmConfig("splitk", 16, 64, 4, 6, split_k=4),
                GemmConfig("splitk", 16, 128, 4, 6, split_k=2)]  # fmt: skip
    if m <= 64:
        return [GemmConfig("tiles", 64, 64, 4, 4), GemmConfig("tiles", 16, 64, 4, 4),
                GemmConfig("splitk", 16, 64, 4, 4, split_k=2), GemmConfig("splitk", 16, 64, 4, 4, split_k=4),
                GemmConfig("splitk", 16, 64, 4, 4, split_k=8)]  # fmt: skip
    if m <= 512:
        return [GemmConfig("tma", 64, 128, 4, 4, ctas_per_sm=2, flatten=True),
                GemmConfig("tma", 64, 128, 4, 3, ctas_per_sm=2, flatten=True),
                GemmConfig("tma", 128, 128, 8, 4), GemmConfig("tiles", 64, 64, 4, 4),
                GemmConfig("tiles", 64, 128, 4, 4)]  # fmt: skip
    return [GemmConfig("tma", 128, 128, 8, 4), GemmConfig("tma", 128, 128, 8, 3, flatten=True),
            GemmConfig("tma", 64, 128, 4, 3, ctas_per_sm=2, flatten=True),
            GemmConfig("tma", 64, 128, 4, 4, ctas_per_sm=2, flatten=True),
            GemmConfig("tma", 128, 64, 4, 4, ctas_per_sm=2, flatten=True)]  # fmt: skip


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _git_sha() -> str:
    import subprocess

    if os.environ.get("FP8_BENCH_GIT_SHA"):  # a copy without .git (the device machine) names it
        return os.environ["FP8_BENCH_GIT_SHA"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        out = ""
    return out or "unknown"


def _operands(m: int, n: int, k: int, copies: int):
    """Quantized operands: x [M, K] and ``copies`` weight copies (rotation past L2)."""
    from . import quantize_activation, quantize_weight

    g = torch.Generator(device="cuda").manual_seed(m * 7 + n * 3 + k)
    xq, xs = quantize_activation(torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=g))
    ws = [quantize_weight(torch.randn(n, k, device="cuda", dtype=torch.bfloat16, generator=g) / k**0.5)
          for _ in range(copies)]  # fmt: skip
    return xq, xs, ws


def _reference_rows(xq, xs, wq, ws, rows: torch.Tensor) -> torch.Tensor:
    from .reference import dequantize_activation_ref, dequantize_weight_ref

    x = dequantize_activation_ref(xq[rows], xs[rows], dtype=torch.float32)
    w = dequantize_weight_ref(wq, ws, dtype=torch.float32)
    return x @ w.t()


def tune_shape(m: int, n: int, k: int, reps_ms: int = 20) -> dict:
    import triton

    from .kernels import cublas
    from .kernels.block_gemm import _gemm, _num_sms, _split_plan, _tma_ok, fp8_block_gemm, pick_config

    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    copies = max(1, min(8, -(-2 * l2 // (n * k))))
    xq, xs_rows, weights = _operands(m, n, k, copies)
    xs_cols = xs_rows.t().contiguous().t()  # the op's quant kernel writes this layout when cuBLAS runs
    rows = torch.randperm(m, device="cuda")[:64]
    ref = _reference_rows(xq, xs_rows, *weights[0], rows)
    cublas_ok = cublas.usable(xq, *weights[0], None, torch.bfloat16)
    heuristic = pick_config(m, n, k, _num_sms(xq.device), _tma_ok(xq, weights[0][0], torch.bfloat16), cublas_ok)
    cands = candidates(m)
    if cublas_ok and m >= 64:
        cands.append(CUBLAS)
    if heuristic not in cands:
        cands.append(heuristic)
    times: dict[str, float] = {}
    for cfg in cands:
        label = json.dumps(dataclasses.asdict(cfg), sort_keys=True)
        xs = xs_cols if cfg.kind == "cublas" else xs_rows
        try:
            y = fp8_block_gemm(xq, xs, *weights[0], config=cfg)
            err = ((y[rows].float() - ref).norm() / ref.norm()).item()
            if not err < 1e-2:
                times[label] = float("inf")
                print(f"    WRONG rel err {err:.2e}: {cfg}", flush=True)
                continue
            it = iter(range(1 << 62))
            # Split-K tickets: in a linear the quant kernel clears them (no launch of their own), so
            # time the GEMM on one zeroed buffer, which the kernel leaves zero after each launch.
            tickets = torch.zeros(_split_plan(cfg, m, n, k)[2], dtype=torch.int32, device="cuda") if cfg.kind == "splitk" else None

            def fn(cfg=cfg, it=it, tickets=tickets, xs=xs):
                wq, ws = weights[next(it) % copies]
                _gemm(xq, xs, wq, ws, None, torch.bfloat16, cfg, tickets)

            times[label] = triton.testing.do_bench_cudagraph(fn, rep=reps_ms, return_mode="median") * 1e3
        except Exception as e:  # a config that does not compile or fit: skip it, say why
            times[label] = float("inf")
            print(f"    failed {cfg}: {type(e).__name__}: {str(e).splitlines()[0][:120]}", flush=True)
    best = min(times, key=times.get)
    heur_label = json.dumps(dataclasses.asdict(heuristic), sort_keys=True)
    # A failed candidate's time is None (JSON has no Infinity); every one failed: "us" is None too,
    # and main records no entry.
    return {"config": json.loads(best), "us": _finite(times[best]), "heuristic_us": _finite(times[heur_label]),
            "candidates": {lbl: _finite(t) for lbl, t in times.items()}}  # fmt: skip


def _finite(t: float) -> float | None:
    return round(t, 3) if math.isfinite(t) else None


def shapes_to_tune(entries: dict, nks: list[tuple[int, int]], ms: list[int], update: bool, sha: str,
                   triton: str | None = None, table_triton: str | None = None) -> list:  # fmt: skip
    """(N, K, M) still to time: those without an entry; with ``update`` also those whose entry was not
    tuned at git ``sha`` (so rerunning an interrupted ``--update`` continues where it stopped) or,
    given ``triton`` (the running version), not under it: an entry's own "triton", else the table
    header's ``table_triton`` (entries written before 2026-12-07 have none)."""

    def needed(n: int, k: int, m: int) -> bool:
        rec = entries.get(shape_key(n, k), {}).get(str(m))
        if rec is None:
            return True
        other_triton = triton is not None and rec.get("triton", table_triton) != triton
        return update and (rec.get("git_sha") != sha or other_triton)

    return [(n, k, m) for n, k in nks for m in ms if needed(n, k, m)]


class TuneError(Exception):
    """A run that would lose or misread a table: reported as one line, exit status 2."""


def read_table(out: Path) -> tuple[dict, list[tuple[str, str | None, str]]]:
    """The table in ``out`` and its entries no lookup would use (a bad config, no finite time), as
    (shape key, M bucket or None for the whole key, why), checked by the lookup's own ``parse_table``
    (schema, entries, configs). An unreadable file or an invalid table raises ValueError naming it."""
    try:
        data = json.loads(out.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{out} is not a readable tuning table ({e})") from e
    dropped: list[tuple[str, str | None, str]] = []
    parse_table(data, str(out), dropped)
    _check_header(data, out)
    return data, dropped


def _check_header(data: dict, out: Path) -> None:
    """Raises ValueError naming ``out`` when a header field a run extends is malformed: ``m_buckets``
    (a list of M buckets) or ``retunes`` (a list of objects). The lookup ignores both, but ``--resume``,
    ``--update`` and the merge of another run's file add to them (they once raised a TypeError there)."""
    ms = data.get("m_buckets", [])
    if not isinstance(ms, list) or not all(
        isinstance(m, int) and not isinstance(m, bool) and 1 <= m <= M_BUCKET_MAX for m in ms
    ):
        raise ValueError(f"{out}: 'm_buckets' must be a list of M buckets (ints 1..{M_BUCKET_MAX}), got {ms!r:.60}")
    retunes = data.get("retunes", [])
    if not isinstance(retunes, list) or not all(isinstance(r, dict) for r in retunes):
        raise ValueError(f"{out}: 'retunes' must be a list of objects, got {retunes!r:.60}")


def load_for_run(
    out: Path, device: str, resume: bool, update: bool, overwrite: bool, triton: str | None = None
) -> dict:
    """The table a run starts from: {} for a new file (or with ``overwrite``), else the existing one.

    An existing table is never replaced by accident: without --resume, --update or --overwrite the
    run stops before timing anything. An unreadable file, or one tuned on another device, is an
    error too (the caller names another --out, or --overwrite), and so is ``resume`` of a table
    tuned under another triton than ``triton`` (the running one): its entries would sit beside this
    run's under one header. An entry no lookup would use (a bad config, no finite time: a failed
    shape of an older tune) is left out with a message, so this run times it again."""
    if not out.exists() or overwrite:
        return {}
    if not (resume or update):
        raise TuneError(
            f"{out} exists: --update re-tunes the given shapes and buckets and keeps the rest, --resume fills "
            "in missing entries, --overwrite replaces the file, --out writes elsewhere"
        )
    try:
        data, dropped = read_table(out)
    except ValueError as e:
        raise TuneError(f"{e}; --overwrite replaces it") from e
    if data.get("device") != device:
        raise TuneError(f"{out} was tuned on {data.get('device')!r}, not {device!r}: not resuming it")
    if resume and triton is not None and table_versions(data) - {triton}:
        raise TuneError(
            f"{out} was tuned with triton {', '.join(sorted(table_versions(data)))}, this is triton {triton}: "
            f"--resume would mix them under one header; --update re-tunes the given shapes under {triton} "
            "(and keeps the rest), --overwrite replaces the file, --out writes elsewhere"
        )
    if dropped:
        print(f"tune: {out}: leaving out {len(dropped)} bad entries (timed again if this run covers them): "
              f"{describe_dropped(dropped)}", file=sys.stderr)  # fmt: skip
        _remove_entries(data["entries"], dropped)
    return data


def _remove_entries(entries: dict, dropped: list[tuple[str, str | None, str]]) -> None:
    for key, m, _ in dropped:
        if m is None:
            entries.pop(key, None)
        else:
            entries[key].pop(m, None)
            if not entries[key]:
                del entries[key]


def write_table(out: Path, data: dict) -> None:
    """Writes the table atomically (a temporary file beside it, then a rename): an interrupted run
    leaves the previous complete file, never a truncated one."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        text = json.dumps(data, indent=1, sort_keys=True, allow_nan=False)  # no Infinity/NaN: not JSON
        tmp.write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def table_lock(out: Path) -> Iterator[None]:
    """Holds an exclusive ``flock`` on ``.<table>.lock`` beside ``out`` (kept: removing a lock file
    races with a run that opened it). On platforms without ``fcntl`` it does nothing."""
    if fcntl is None:
        yield
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_name(f".{out.name}.lock"), "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def merge_from_disk(out: Path, data: dict, mine: set[tuple[str, str]]) -> None:
    """Adds to ``data`` what another run wrote to ``out`` since this one read it (two runs on one table,
    e.g. one per GPU of a host): its entries, except the (shape key, M bucket)s in ``mine`` (tuned by
    this run: these win), its M buckets and its ``retunes`` records. A file that is not a table of
    this device is not merged (said on stderr): this run's table replaces it."""
    if not out.exists():
        return
    try:
        disk, dropped = read_table(out)
        if disk.get("device") != data.get("device"):
            raise ValueError(f"tuned on {disk.get('device')!r}")
    except ValueError as e:
        print(f"tune: not merging {out} ({e}): this run's table replaces it", file=sys.stderr)
        return
    _remove_entries(disk["entries"], dropped)
    entries = data.setdefault("entries", {})
    for key, per_m in disk["entries"].items():
        for m, rec in per_m.items():
            if (key, m) not in mine:
                entries.setdefault(key, {})[m] = rec
    data["m_buckets"] = sorted(set(data.get("m_buckets", [])) | set(disk.get("m_buckets", [])))
    retunes = data.get("retunes", [])
    for r in disk.get("retunes", []):
        if r not in retunes:
            retunes.append(r)
    if retunes:
        data["retunes"] = retunes


def save_table(out: Path, data: dict, mine: set[tuple[str, str]], merge: bool = True) -> None:
    """``write_table`` under ``table_lock``, after ``merge_from_disk`` (unless ``merge`` is False: the
    first write of an ``--overwrite`` run replaces the file)."""
    with table_lock(out):
        if merge:
            merge_from_disk(out, data, mine)
        write_table(out, data)


def _m_buckets(text: str) -> list[int]:
    try:
        ms = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--m takes a comma list of row counts, got {text!r}") from None
    if not ms or min(ms) < 1 or max(ms) > M_BUCKET_MAX:  # a table may not hold a larger bucket
        raise argparse.ArgumentTypeError(f"--m row counts must be in 1..{M_BUCKET_MAX}, got {text!r}")
    return sorted(set(ms))  # a repeated bucket would be timed twice


def record_run(data: dict, run: dict, ms: list[int], *, device: str, capability: list[int], update: bool,
               shapes: str, why: str) -> None:  # fmt: skip
    """Head the table ``data`` with this run: an ``--update`` of an existing table keeps its
    provenance and adds a ``retunes`` record; a new table, ``--overwrite`` and ``--resume`` take this
    run's provenance (docs/tuning.md). ``m_buckets`` is always the union of the table's buckets and
    this run's, so it lists every bucket the entries hold (a ``--resume`` with other ``--m`` once
    replaced it)."""
    buckets = sorted(set(ms) | set(data.get("m_buckets", [])))
    if update and data:
        data["m_buckets"] = buckets
        data.setdefault("retunes", []).append({**run, "m_buckets": ms, "shapes": shapes, "why": why})
    else:
        data.update(schema=SCHEMA, device=device, capability=capability, m_buckets=buckets, **run)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fp8inductor tune", description=__doc__.splitlines()[0])
    p.add_argument("--shapes", choices=["suite", "models", "all"], default="all")
    p.add_argument("--m", type=_m_buckets, default=list(M_BUCKETS), help="M buckets to tune (comma list)")
    p.add_argument("--out", type=Path, help="JSON to write (default: the shipped table of this device)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="keep the shapes already in --out")
    mode.add_argument("--update", action="store_true",
                      help="re-tune these shapes and buckets unless tuned at this commit; keep the rest of --out")  # fmt: skip
    mode.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--budget-s", type=float, default=float("inf"), help="stop starting new shapes after this")
    p.add_argument("--why", default="", help="with --update: the reason, kept in the table's retunes record")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("tune needs a CUDA GPU", file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name(0)
    out = args.out or CONFIG_DIR / f"{device_slug(device)}.json"
    nks = {"suite": SUITE_NK, "models": MODEL_NK, "all": SUITE_NK + MODEL_NK}[args.shapes]
    ms = args.m
    import triton

    sha = _git_sha()
    if args.update and sha == "unknown":
        print("tune: --update needs the git SHA of this checkout (it keeps the entries tuned at that SHA, so a "
              "rerun continues where it stopped), and there is none: no .git here and FP8_BENCH_GIT_SHA unset; "
              "set FP8_BENCH_GIT_SHA=<commit>", file=sys.stderr)  # fmt: skip
        return 2
    try:
        data = load_for_run(out, device, args.resume, args.update, args.overwrite, triton=triton.__version__)
    except TuneError as e:
        print(f"tune: {e}", file=sys.stderr)
        return 2
    table_triton = data.get("triton")  # before record_run: the versions of entries that have none
    run = {
        "torch": torch.__version__,
        "triton": triton.__version__,
        "git_sha": sha,
        "timing": "triton.testing.do_bench_cudagraph median, weights rotated past 2x L2",
        "tuned_at": _utc_now(),
    }
    record_run(data, run, ms, device=device, capability=list(torch.cuda.get_device_capability(0)),
               update=args.update, shapes=args.shapes, why=args.why)  # fmt: skip
    entries = data.setdefault("entries", {})
    todo = shapes_to_tune(
        entries, nks, ms, update=args.update, sha=sha, triton=run["triton"], table_triton=table_triton
    )
    again = "--update" if args.update else "--resume"
    if not todo:
        print(f"nothing to tune: {out} has every entry asked for" + (f" tuned at {sha}" if args.update else "")
              + "; not written")  # fmt: skip
        return 0
    mine: set[tuple[str, str]] = set()  # (shape key, M bucket) this run wrote: merged over other runs' entries
    t0 = time.perf_counter()
    for i, (n, k, m) in enumerate(todo, 1):
        shape = f"M={m:<5} N={n:<6} K={k:<6}"
        if time.perf_counter() - t0 > args.budget_s:
            print(f"budget reached: {len(todo) - i + 1} shapes left (rerun with {again})")
            break
        print(f"{progress(i - 1, len(todo), time.perf_counter() - t0)} {shape} tuning", flush=True)
        rec = tune_shape(m, n, k)
        done = progress(i, len(todo), time.perf_counter() - t0)
        if rec.get("us") is None or not math.isfinite(rec["us"]):
            print(f"{done} {shape} every candidate failed: no entry written (rerun with {again})", flush=True)
            continue
        if rec.get("heuristic_us") is not None and not math.isfinite(rec["heuristic_us"]):
            rec["heuristic_us"] = None  # the heuristic's config failed: JSON has no Infinity
        rec.update(git_sha=sha, triton=run["triton"], torch=run["torch"], tuned_at=_utc_now())
        entries.setdefault(shape_key(n, k), {})[str(m)] = rec
        mine.add((shape_key(n, k), str(m)))
        heur = "failed" if rec["heuristic_us"] is None else f"{rec['heuristic_us']:9.2f}"
        cfg = rec["config"]
        print(f"{done} {shape} best {rec['us']:9.2f} us (heuristic {heur}) {cfg['kind']} {cfg['block_m']}x"
              f"{cfg['block_n']}", flush=True)  # fmt: skip
        # the first write of an --overwrite run replaces the old table; later ones merge other runs' entries
        save_table(out, data, mine, merge=not args.overwrite or len(mine) > 1)
    if mine:
        print(f"wrote {out} ({len(mine)} of {len(todo)} entries tuned)")
    else:
        print(f"{out} not written: no entry was tuned")
    return 0


def _duration(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def progress(done: int, total: int, elapsed: float) -> str:
    """'[3/22 shapes, 41s elapsed, ETA 4m33s]': the ETA is the mean time per shape so far times the shapes left."""
    eta = _duration(elapsed / done * (total - done)) if done else "?"
    return f"[{done}/{total} shapes, {_duration(elapsed)} elapsed, ETA {eta}]"


if __name__ == "__main__":  # ``python -m fp8inductor.tune`` as well as ``python -m fp8inductor tune``
    sys.exit(main())
