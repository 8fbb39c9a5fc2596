"""Tuned GEMM configurations: per-device JSON tables, looked up by (N, K) and M bucket.

Files live in ``fp8inductor/configs/<device>.json`` (package data, written by
``python -m fp8inductor tune``). Layout::

    {"schema": 1, "device": "NVIDIA H100 80GB HBM3", "torch": ..., "triton": ..., "tuned_at": ...,
     "git_sha": ..., "m_buckets": [1, 16, 64, ...],
     "entries": {"N=4096,K=4096": {"16": {"config": {GemmConfig fields}, "us": 7.1, "candidates": {...}}}}}

Lookup: the entry of the nearest M bucket (in log2) of the exact (N, K); no entry -> ``None`` and the
caller's heuristic, with one warning per (N, K). A file that is unreadable, of another schema or with
a malformed entry is ignored with one warning naming it (never an error in the middle of a model).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import re
from pathlib import Path
from typing import Any

from .kernels.config import GemmConfig

log = logging.getLogger("fp8inductor")

SCHEMA = 1
CONFIG_DIR = Path(__file__).with_name("configs")
M_BUCKETS = (1, 16, 64, 128, 512, 2048, 8192)


def device_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'NVIDIA_H100_80GB_HBM3' (the file name of its table)."""
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")


def shape_key(n: int, k: int) -> str:
    return f"N={n},K={k}"


def nearest_bucket(m: int, buckets: tuple[int, ...] | list[int] = M_BUCKETS) -> int:
    return min(buckets, key=lambda b: (abs(math.log2(max(m, 1)) - math.log2(b)), b))


def config_from_dict(d: dict[str, Any]) -> GemmConfig:
    fields = {f.name for f in dataclasses.fields(GemmConfig)}
    unknown = set(d) - fields
    if unknown:
        raise ValueError(f"unknown GemmConfig fields {sorted(unknown)}")
    return GemmConfig(**d)


def parse_table(data: Any, source: str) -> dict[str, dict[int, GemmConfig]]:
    """Validated {shape_key: {m_bucket: GemmConfig}}; raises ValueError naming ``source`` and the entry."""
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError(f"{source}: not a schema-{SCHEMA} fp8inductor tuning table")
    entries = data.get("entries")
    if not isinstance(entries, dict):
        raise ValueError(f"{source}: 'entries' must be an object")
    table: dict[str, dict[int, GemmConfig]] = {}
    for key, per_m in entries.items():
        if not re.fullmatch(r"N=\d+,K=\d+", key) or not isinstance(per_m, dict):
            raise ValueError(f"{source}: malformed entry {key!r}")
        table[key] = {}
        for m, rec in per_m.items():
            try:
                bucket = int(m)
                if bucket < 1:  # nearest_bucket takes log2 of it
                    raise ValueError(f"M bucket must be a positive int, got {m!r}")
                table[key][bucket] = config_from_dict(rec["config"])
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{source}: entry {key} M={m}: {e}") from e
    return table


@functools.cache
def load_table(device_name: str) -> dict[str, dict[int, GemmConfig]]:
    """The tuning table shipped for ``device_name`` ({} if none, or if it is bad: one warning)."""
    path = CONFIG_DIR / f"{device_slug(device_name)}.json"
    if not path.exists():
        log.warning("fp8inductor: no tuned GEMM configs for %r; using the built-in heuristic", device_name)
        return {}
    try:
        data = json.loads(path.read_text())
        table = parse_table(data, str(path))
    except (OSError, ValueError) as e:  # json.JSONDecodeError is a ValueError
        log.warning("fp8inductor: ignoring tuned GEMM configs: %s", e)
        return {}
    if data.get("device") != device_name:
        log.warning("fp8inductor: ignoring %s: it was tuned on %r", path, data.get("device"))
        return {}
    return table


@functools.cache
def _warn_untuned(device_name: str, key: str) -> None:
    log.warning("fp8inductor: no tuned GEMM config for %s on %s; using the heuristic", key, device_name)


def lookup(device_name: str, m: int, n: int, k: int) -> GemmConfig | None:
    """Tuned config for this GEMM, or None (the caller falls back to its heuristic)."""
    table = load_table(device_name)
    per_m = table.get(shape_key(n, k))
    if not per_m:
        if table:
            _warn_untuned(device_name, shape_key(n, k))
        return None
    return per_m[nearest_bucket(m, sorted(per_m))]
