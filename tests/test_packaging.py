"""The built wheel: ``patterns/`` ships as ``fp8inductor.patterns`` and the entry point is declared."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
    )
    (whl,) = out.glob("fp8inductor-*.whl")
    return whl


def test_wheel_layout_and_entry_point(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {
        "fp8inductor/patterns/__init__.py",
        "fp8inductor/patterns/base.py",
        "fp8inductor/patterns/linear.py",
    } <= set(names)
    assert not [n for n in names if n.startswith("patterns/")], "no top-level 'patterns' package"
    assert "fp8inductor/configs/NVIDIA_H100_80GB_HBM3.json" in names, "tuned tables ship as package data"
    (ep,) = [n for n in names if n.endswith("entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(ep).decode()
    assert "[torch_dynamo_backends]" in text and "fp8block = fp8inductor.backend:fp8block" in text


def test_installed_wheel_imports_patterns_and_finds_backend(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)], check=True
    )
    code = (
        "import importlib.metadata as md, fp8inductor, fp8inductor.patterns as p\n"
        f"assert p.__file__.startswith({str(target)!r}), p.__file__\n"
        "eps = [e for e in md.entry_points(group='torch_dynamo_backends') if e.name == 'fp8block']\n"
        "assert any(e.load().__module__ == 'fp8inductor.backend' for e in eps)\n"
        "import torch; assert 'fp8block' in torch._dynamo.list_backends()\n"
        "print('ok', p.ALL_PATTERNS[0].name)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok mm_nk"
