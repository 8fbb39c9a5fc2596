"""Where a benchmark result came from: package versions and the git state (no torch import)."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def package_version(dist: str) -> str | None:
    """The installed version of distribution ``dist``, or None."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), *args], check=False, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_meta() -> dict[str, str | bool | None]:
    """{"git_sha", "git_dirty"}; ``FP8_BENCH_GIT_SHA`` overrides the sha (device copies have no .git, or
    a stale one) and then the dirty flag is unknown (None): whoever sets the sha vouches for the tree."""
    override = os.environ.get("FP8_BENCH_GIT_SHA")
    if override:
        return {"git_sha": override, "git_dirty": None}
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"git_sha": _git("rev-parse", "HEAD"), "git_dirty": bool(status) if status is not None else None}
