"""Tuned GEMM configurations: per-device JSON tables, looked up by (N, K) and M bucket.

Files live in ``fp8inductor/configs/<device>.json`` (package data, written by
``python -m fp8inductor tune``). Layout::

    {"schema": 1, "device": "NVIDIA H100 80GB HBM3", "torch": ..., "triton": ..., "tuned_at": ...,
     "git_sha": ..., "m_buckets": [1, 16, 64, ...],
     "entries": {"N=4096,K=4096": {"16": {"config": {GemmConfig fields}, "us": 7.1, "candidates": {...}}}}}

Lookup: the entry of the nearest M bucket (in log2) of the exact (N, K), if that bucket is within one
step of ``M_BUCKETS`` of M's own; else ``None`` and the caller's heuristic, with one warning per
(N, K) (a table tuned for decode only never gives a prefill its split-K config). A file that is
unreadable, of another schema or tuned on another device is ignored with one warning naming it; an
entry that is malformed, has no finite time or holds a config no kernel can launch is dropped with
one warning for the file (never an error in the middle of a model). A table tuned with another
Triton than the running one is used, with one warning.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .kernels.config import GemmConfig

log = logging.getLogger("fp8inductor")

SCHEMA = 1
CONFIG_DIR = Path(__file__).with_name("configs")
M_BUCKETS = (1, 16, 64, 128, 512, 2048, 8192)
KEY_RE = re.compile(r"N=\d+,K=\d+")  # an entry's (N, K): shape_key


def device_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'NVIDIA_H100_80GB_HBM3' (the file name of its table)."""
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")


def shape_key(n: int, k: int) -> str:
    return f"N={n},K={k}"


def nearest_bucket(m: int, buckets: Iterable[int] = M_BUCKETS) -> int:
    return min(buckets, key=lambda b: (abs(math.log2(max(m, 1)) - math.log2(b)), b))


@functools.lru_cache(maxsize=4096)  # called per GEMM: a dict hit, not 7 log2s
def bucket_step(m: int) -> int:
    """Index in ``M_BUCKETS`` of the bucket nearest to ``m`` (lookup uses entries one step away at most)."""
    return M_BUCKETS.index(nearest_bucket(m))


def config_from_dict(d: dict[str, Any]) -> GemmConfig:
    if not isinstance(d, dict):
        raise TypeError(f"config must be an object, got {type(d).__name__}")
    fields = {f.name for f in dataclasses.fields(GemmConfig)}
    unknown = set(d) - fields
    if unknown:
        raise ValueError(f"unknown GemmConfig fields {sorted(unknown)}")
    return GemmConfig(**d)


def _short(v: Any, most: int = 24) -> str:
    """repr(v), cut to ``most`` characters (a warning quoting a table's key or value stays one line)."""
    r = repr(v)
    return r if len(r) <= most else r[: most - 3] + "..."


M_BUCKET_MAX = (1 << 31) - 1  # the largest M bucket a table may hold (int32 row count)


def _parse_record(m: Any, rec: Any) -> tuple[int, GemmConfig]:
    """(M bucket, config) of one table record; raises ValueError/TypeError/KeyError saying what is wrong."""
    if not isinstance(m, str) or not re.fullmatch(r"[0-9]{1,10}", m) or not 1 <= int(m) <= M_BUCKET_MAX:
        raise ValueError(f"M bucket must be a positive int, got {_short(m)}")  # nearest_bucket takes log2 of it
    if not isinstance(rec, dict):
        raise TypeError(f"record must be an object, got {type(rec).__name__}")
    cfg = config_from_dict(rec["config"])
    us = rec.get("us")
    if isinstance(us, bool) or not isinstance(us, (int, float)) or not math.isfinite(us) or us < 0:
        # a record whose every candidate failed (tune writes none since 2026-12-07; earlier: Infinity)
        raise ValueError(f"time 'us' must be a finite number of microseconds, got {_short(us)}")
    return int(m), cfg


def parse_table(
    data: Any, source: str, dropped: list[tuple[str, str | None, str]] | None = None
) -> dict[str, dict[int, GemmConfig]]:
    """Validated {shape_key: {m_bucket: GemmConfig}}; raises ValueError naming ``source`` and the entry.

    With ``dropped`` (a list), a bad entry does not fail the table: it is left out and listed there
    as (shape key, M bucket or None for the whole shape, why). A table that is not one at all (not
    an object, another schema, 'entries' not an object) raises either way."""
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError(f"{source}: not a schema-{SCHEMA} fp8inductor tuning table")
    entries = data.get("entries")
    if not isinstance(entries, dict):
        raise ValueError(f"{source}: 'entries' must be an object")
    table: dict[str, dict[int, GemmConfig]] = {}
    for key, per_m in entries.items():
        if not KEY_RE.fullmatch(key) or not isinstance(per_m, dict):
            if dropped is None:
                raise ValueError(f"{source}: malformed entry {key!r}")
            why = "not an object of M bucket records" if KEY_RE.fullmatch(key) else "not an N=<int>,K=<int> key"
            dropped.append((key, None, why))
            continue
        table[key] = {}
        for m, rec in per_m.items():
            try:
                bucket, cfg = _parse_record(m, rec)
            except (KeyError, TypeError, ValueError) as e:
                why = f"missing {e}" if isinstance(e, KeyError) else str(e)
                if dropped is None:
                    raise ValueError(f"{source}: entry {key} M={m}: {why}") from e
                dropped.append((key, m, why))
                continue
            table[key][bucket] = cfg
    return table


def describe_dropped(dropped: list[tuple[str, str | None, str]], most: int = 3) -> str:
    """'entry N=1,K=2 M=16: why; ...' for the first ``most`` dropped entries, then how many more."""
    parts = []
    for key, m, why in dropped[:most]:
        where = key if KEY_RE.fullmatch(key) else _short(key, 40)
        parts.append(f"entry {where}{'' if m is None else f' M={_short(m)[1:-1]}'}: {why}")
    if len(dropped) > most:
        parts.append(f"and {len(dropped) - most} more")
    return "; ".join(parts)


def table_versions(data: dict, field: str = "triton") -> set[str]:
    """The ``field`` ("triton" or "torch") versions the entries of a parsed table were tuned with:
    each entry's own (recorded since 2026-12-07), else the table header's."""
    head = data.get(field)
    found = set()
    for per_m in data.get("entries", {}).values():
        for rec in per_m.values() if isinstance(per_m, dict) else ():
            v = rec.get(field, head) if isinstance(rec, dict) else None
            if isinstance(v, str):
                found.add(v)
    return found


def _running_triton() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return getattr(triton, "__version__", None)


@functools.cache
def load_table(device_name: str) -> dict[str, dict[int, GemmConfig]]:
    """The tuning table shipped for ``device_name`` ({} if none, or if it is bad: one warning).

    Cached, the failures too: a bad file is read and reported once, not at every GEMM."""
    path = CONFIG_DIR / f"{device_slug(device_name)}.json"
    try:
        if not path.exists():
            log.warning("fp8inductor: no tuned GEMM configs for %r; using the built-in heuristic", device_name)
            return {}
        data = json.loads(path.read_text(encoding="utf-8"))  # tune writes ASCII JSON, whatever the locale
        dropped: list[tuple[str, str | None, str]] = []
        table = parse_table(data, str(path), dropped)
    except Exception as e:  # noqa: BLE001 - never a crash mid-model: bad JSON, bad UTF-8, RecursionError (deep nesting)
        why = str(e).removeprefix(f"{path}: ")  # parse_table's errors name it too
        if not isinstance(e, ValueError):  # e.g. "RecursionError: maximum recursion depth exceeded ..."
            why = f"{type(e).__name__}: {why}"
        log.warning("fp8inductor: ignoring tuned GEMM configs %s: %s", path, why)
        return {}
    if data.get("device") != device_name:
        log.warning("fp8inductor: ignoring %s: it was tuned on %r", path, data.get("device"))
        return {}
    if dropped:
        what = "a bad entry" if len(dropped) == 1 else f"{len(dropped)} bad entries"
        log.warning("fp8inductor: tuned GEMM configs %s: dropped %s (never used; the file's other entries are): %s",
                    path, what, describe_dropped(dropped))  # fmt: skip
    running = _running_triton()
    other = sorted(table_versions(data) - {running}) if running else []
    if other:
        log.warning("fp8inductor: %s was tuned with triton %s, this is triton %s: its configs are used but may no "
                    "longer be the fastest (python -m fp8inductor tune --update re-tunes them)",
                    path, ", ".join(other), running)  # fmt: skip
    return table


@functools.cache
def _warn_untuned(device_name: str, key: str) -> None:
    log.warning("fp8inductor: no tuned GEMM config for %s on %s; using the heuristic", key, device_name)


@functools.cache
def _warn_far_bucket(device_name: str, key: str, buckets: tuple[int, ...]) -> None:
    log.warning("fp8inductor: tuned GEMM configs for %s on %s cover M buckets %s only; using the heuristic for M "
                "more than one bucket step (of %s) away", key, device_name, ", ".join(map(str, buckets)),
                ", ".join(map(str, M_BUCKETS)))  # fmt: skip


def lookup(device_name: str, m: int, n: int, k: int) -> GemmConfig | None:
    """Tuned config for this GEMM, or None (the caller falls back to its heuristic).

    The entry of the nearest M bucket among those at most one step of ``M_BUCKETS`` from M's (M = 8192
    may use the 2048 bucket's entry, not a decode entry tuned at M = 16)."""
    table = load_table(device_name)
    key = shape_key(n, k)
    per_m = table.get(key)
    if not per_m:
        if table:
            _warn_untuned(device_name, key)
        return None
    step = bucket_step(m)
    near = [b for b in per_m if abs(bucket_step(b) - step) <= 1]
    if not near:
        _warn_far_bucket(device_name, key, tuple(sorted(per_m)))
        return None
    return per_m[nearest_bucket(m, near)]
