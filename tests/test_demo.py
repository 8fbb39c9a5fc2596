"""The README's main job, ``python -m fp8inductor demo``, on a smaller model."""

from __future__ import annotations

import re
import subprocess
import sys


def test_demo_runs_and_reports():
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "fp8inductor",
            "demo",
            "--hidden",
            "512",
            "--layers",
            "1",
            "--vocab",
            "512",
            "--tokens",
            "3",
            "--prompt-len",
            "8",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    assert re.search(r"7 linear\(s\) converted to FP8, 1 skipped", out), out
    err = float(re.search(r"rel\. error fp8block vs bf16 eager: ([0-9.]+)", out).group(1))
    assert 0 < err < 0.2
    assert "generated (fp8block):" in out and "time per step" in out


def test_cli_usage():
    res = subprocess.run([sys.executable, "-m", "fp8inductor"], capture_output=True, text=True)
    assert res.returncode == 2 and "demo" in res.stdout
