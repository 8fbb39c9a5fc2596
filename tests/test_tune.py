"""``python -m fp8inductor tune``: its file handling, on CPU. The GPU is faked (device name, capability)
and so is ``tune_shape`` (no timing): what is checked is what a run writes, refuses and prints."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch
import triton as triton_lib

from fp8inductor import tune, tuned

DEV = "Fake GPU"
CFG = {"kind": "tiles", "block_m": 16, "block_n": 64, "num_warps": 4, "num_stages": 4, "group_m": 8, "split_k": 1,
       "ctas_per_sm": 1, "flatten": False}  # fmt: skip


class FakeGpu:
    """What ``tune.main`` sees of the machine: a GPU named DEV, a triton version, a git SHA, and a
    ``tune_shape`` that returns ``us`` = M (or what ``times`` says for a (M, N, K)) and counts calls."""

    def __init__(self, monkeypatch):
        self.monkeypatch = monkeypatch
        self.calls: list[tuple[int, int, int]] = []
        self.times: dict[tuple[int, int, int], float | None] = {}
        self.heuristic_times: dict[tuple[int, int, int], float] = {}  # default: us = M
        self.on_call = None  # called with the call count before each result (another run's write)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: DEV)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (9, 0))
        monkeypatch.setattr(tune, "tune_shape", self.tune_shape)
        self.at(triton="3.6.0", sha="aaa")

    def at(self, triton: str, sha: str) -> FakeGpu:
        self.monkeypatch.setattr(triton_lib, "__version__", triton)
        self.monkeypatch.setattr(tune, "_git_sha", lambda: sha)
        return self

    def tune_shape(self, m, n, k, reps_ms=20):
        self.calls.append((m, n, k))
        if self.on_call is not None:
            self.on_call(len(self.calls))
        us = self.times.get((m, n, k), float(m))
        heuristic_us = self.heuristic_times.get((m, n, k), float(m))
        return {"config": dict(CFG), "us": us, "heuristic_us": heuristic_us, "candidates": {}}


@pytest.fixture
def gpu(monkeypatch):
    return FakeGpu(monkeypatch)


def _run(out, *args) -> int:
    return tune.main(["--out", str(out), "--shapes", "suite", *args])


def _entries(out) -> dict:
    return json.loads(out.read_text())["entries"]


def _strict_json(text: str):
    def no_constant(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=no_constant)


def test_update_without_a_git_sha_is_refused(gpu, tmp_path, capsys):
    """--update keeps the entries tuned at this SHA; with the SHA "unknown" (a copy without .git and no
    FP8_BENCH_GIT_SHA) every entry of an earlier unknown-SHA run looked current: it re-tuned nothing
    and said "wrote"."""
    out = tmp_path / "t.json"
    gpu.at(triton="3.6.0", sha="unknown")
    assert _run(out, "--m", "1") == 0
    before, calls = out.read_text(), len(gpu.calls)
    assert _run(out, "--m", "1", "--update", "--why", "new kernel") == 2
    err = capsys.readouterr().err
    assert "--update needs the git SHA" in err and "FP8_BENCH_GIT_SHA" in err
    assert len(gpu.calls) == calls and out.read_text() == before


def test_a_run_that_writes_nothing_says_so(gpu, tmp_path, capsys):
    out = tmp_path / "t.json"
    assert _run(out, "--m", "1") == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert _run(out, "--m", "1", "--resume") == 0  # every entry there already
    said = capsys.readouterr().out
    assert "nothing to tune" in said and "not written" in said and "wrote" not in said
    assert _run(tmp_path / "u.json", "--m", "1", "--budget-s", "0") == 0  # out of time before the first shape
    said = capsys.readouterr().out
    assert "not written" in said and "wrote" not in said and not (tmp_path / "u.json").exists()


def test_progress_line_per_shape_start_and_finish(gpu, tmp_path, capsys):
    assert tune.progress(0, 7, 0.0) == "[0/7 shapes, 0s elapsed, ETA ?]"
    assert tune.progress(2, 7, 100.0) == "[2/7 shapes, 1m40s elapsed, ETA 4m10s]"  # 50 s a shape, 5 left
    assert tune.progress(1, 400, 20.0) == "[1/400 shapes, 20s elapsed, ETA 2h13m]"
    assert _run(tmp_path / "t.json", "--m", "1") == 0
    lines = capsys.readouterr().out.splitlines()
    starts = [ln for ln in lines if ln.endswith(" tuning")]
    ends = [ln for ln in lines if " best " in ln]
    assert len(starts) == len(ends) == len(tune.SUITE_NK)
    assert starts[0].startswith("[0/7 shapes, 0s elapsed, ETA ?] M=1 ") and ends[-1].startswith("[7/7 shapes, ")


def test_entries_record_their_versions_and_resume_under_another_triton_is_refused(gpu, tmp_path, capsys):
    """Each entry keeps the triton and torch it was tuned with. --resume under another triton used to
    rewrite the header's version over entries tuned under the old one; now it is refused and
    --update re-tunes (also at the same git SHA: the triton differs)."""
    out = tmp_path / "t.json"
    gpu.on_call = lambda n: (_ for _ in ()).throw(KeyboardInterrupt) if n > 3 else None  # Ctrl-C after 3 shapes
    with pytest.raises(KeyboardInterrupt):
        _run(out, "--m", "1")
    gpu.on_call = None
    entries = _entries(out)
    assert len(entries) == 3
    assert all(r["triton"] == "3.6.0" and r["torch"] == torch.__version__ for e in entries.values() for r in e.values())
    gpu.at(triton="3.9.0", sha="aaa")
    calls = len(gpu.calls)
    assert _run(out, "--m", "1", "--resume") == 2
    assert "tuned with triton 3.6.0, this is triton 3.9.0" in capsys.readouterr().err and len(gpu.calls) == calls
    assert _run(out, "--m", "1", "--update", "--why", "triton 3.9") == 0
    assert len(gpu.calls) == calls + len(tune.SUITE_NK)  # the 3 old entries too
    data = json.loads(out.read_text())
    assert {r["triton"] for e in data["entries"].values() for r in e.values()} == {"3.9.0"}
    assert data["triton"] == "3.6.0" and data["retunes"][-1]["triton"] == "3.9.0"  # --update keeps the provenance
    assert _run(out, "--m", "1", "--resume") == 0  # every entry is 3.9.0 now: nothing mixed


def test_resume_of_a_table_without_entry_versions(gpu, tmp_path):
    """Tables written before entries kept their versions still load; the header's triton stands for them."""
    out = tmp_path / "t.json"
    old = {"schema": 1, "device": DEV, "triton": "3.6.0", "torch": "2.11.0", "git_sha": "old", "m_buckets": [1],
           "entries": {"N=6144,K=4096": {"1": {"config": CFG, "us": 3.0, "git_sha": "old"}}}}  # fmt: skip
    out.write_text(json.dumps(old))
    assert _run(out, "--m", "1", "--resume") == 0
    assert len(gpu.calls) == len(tune.SUITE_NK) - 1 and _entries(out)["N=6144,K=4096"]["1"]["us"] == 3.0
    out.write_text(json.dumps(old))
    gpu.at(triton="3.9.0", sha="aaa")
    assert _run(out, "--m", "1", "--resume") == 2


def test_every_candidate_failed_writes_no_entry(gpu, tmp_path, capsys):
    """A shape whose every candidate failed used to be written with "us": Infinity (not JSON, and the
    lookup took its config); now it is left out, said so, and a --resume times it again."""
    out = tmp_path / "t.json"
    n, k = tune.SUITE_NK[1]
    gpu.times[(1, n, k)] = None  # tune_shape's result when every candidate failed
    gpu.times[(1, *tune.SUITE_NK[2])] = math.inf  # and what it returned before
    assert _run(out, "--m", "1") == 0
    said = capsys.readouterr().out
    assert said.count("every candidate failed") == 2
    text = out.read_text()
    entries = _strict_json(text)["entries"]
    assert tuned.shape_key(n, k) not in entries and len(entries) == len(tune.SUITE_NK) - 2
    gpu.times.clear()
    gpu.calls.clear()
    assert _run(out, "--m", "1", "--resume") == 0
    assert sorted(gpu.calls) == sorted([(1, n, k), (1, *tune.SUITE_NK[2])])


def test_a_failed_heuristic_config_is_recorded_as_null(gpu, tmp_path, capsys):
    """When the heuristic's own config failed (an infinite time) the entry is still written, with
    "heuristic_us": null (JSON has no Infinity) and "failed" in the progress line."""
    out = tmp_path / "t.json"
    n, k = tune.SUITE_NK[0]
    gpu.heuristic_times[(1, n, k)] = math.inf
    assert _run(out, "--m", "1") == 0
    entries = _strict_json(out.read_text())["entries"]
    assert entries[tuned.shape_key(n, k)]["1"]["heuristic_us"] is None
    assert entries[tuned.shape_key(*tune.SUITE_NK[1])]["1"]["heuristic_us"] == 1.0
    assert "failed" in capsys.readouterr().out


def test_tables_are_strict_json_and_infinite_times_are_rejected(tmp_path, capsys):
    out = tmp_path / "t.json"
    with pytest.raises(ValueError):
        tune.write_table(out, {"us": math.inf})
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary file left
    for us in ("Infinity", "NaN", '"1.0"', "true", "-1"):
        rec = json.loads(f'{{"config": {json.dumps(CFG)}, "us": {us}}}')  # "Infinity", "NaN": what json.loads takes
        with pytest.raises(ValueError, match="time 'us' must be a finite number"):
            tuned.parse_table({"schema": 1, "device": DEV, "entries": {"N=1,K=2": {"16": rec}}}, "t")
    with pytest.raises(ValueError, match="time 'us' must be a finite number"):
        tuned.parse_table({"schema": 1, "device": DEV, "entries": {"N=1,K=2": {"16": {"config": CFG}}}}, "t")
    # an older tune's Infinity entry: --resume leaves it out (said so) and times it again
    out.write_text(json.dumps({"schema": 1, "device": DEV, "entries": {
        "N=1,K=2": {"16": {"config": CFG, "us": math.inf}, "1": {"config": CFG, "us": 2.0}}}}))  # fmt: skip
    data = tune.load_for_run(out, DEV, resume=True, update=False, overwrite=False)
    assert data["entries"] == {"N=1,K=2": {"1": {"config": CFG, "us": 2.0}}}
    assert "leaving out 1 bad entries" in capsys.readouterr().err


def test_concurrent_runs_keep_each_others_entries(gpu, tmp_path):
    """Two runs on one table (e.g. one per GPU of a host): each write used to be this run's table
    alone, dropping what the other had written since. Now each write merges the file's entries in."""
    out = tmp_path / "t.json"
    other = {"schema": 1, "device": DEV, "triton": "3.6.0", "m_buckets": [16],
             "retunes": [{"git_sha": "zzz", "why": "other run"}], "entries": {}}  # fmt: skip

    def other_run_writes(n_call):  # another run finishes a shape while this one times its 3rd
        if n_call == 3:
            rec = {"config": CFG, "us": 7.0, "git_sha": "zzz"}
            other["entries"] = {**_entries(out), "N=1024,K=4096": {"16": rec}}
            out.write_text(json.dumps(other))

    gpu.on_call = other_run_writes
    assert _run(out, "--m", "1") == 0
    data = json.loads(out.read_text())
    assert data["entries"]["N=1024,K=4096"]["16"]["us"] == 7.0
    assert len(data["entries"]) == len(tune.SUITE_NK) + 1
    assert data["m_buckets"] == [1, 16] and data["retunes"] == other["retunes"]
    assert data["git_sha"] == "aaa"  # this run's provenance heads the table
    gpu.on_call = None  # --overwrite: its first write replaces the table, merging nothing of it
    assert _run(out, "--m", "1", "--overwrite") == 0
    assert "N=1024,K=4096" not in _entries(out) and len(_entries(out)) == len(tune.SUITE_NK)


@pytest.mark.skipif(importlib.util.find_spec("fcntl") is None, reason="no fcntl (not POSIX): no lock")
def test_table_writes_hold_a_lock(gpu, tmp_path, monkeypatch):
    """Re-reading, merging and writing happen under an flock on a lock file beside the table: another
    run's write waits (tested with a second open file description, as another process has)."""
    import fcntl

    out = tmp_path / "t.json"
    seen = []
    real = tune.write_table

    def write_while_checking_the_lock(path, data):
        with open(tmp_path / ".t.json.lock") as f, pytest.raises(BlockingIOError):
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        seen.append(path)
        real(path, data)

    monkeypatch.setattr(tune, "write_table", write_while_checking_the_lock)
    assert _run(out, "--m", "1") == 0
    assert len(seen) == len(tune.SUITE_NK)
    with open(tmp_path / ".t.json.lock") as f:  # released after each write
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_a_merge_skips_a_file_that_is_no_longer_a_table(gpu, tmp_path, capsys):
    out = tmp_path / "t.json"

    def clobber(n_call):
        if n_call == 2:
            out.write_text("[" * 100000)

    gpu.on_call = clobber
    assert _run(out, "--m", "1") == 0
    assert "not merging" in capsys.readouterr().err
    assert len(_strict_json(out.read_text())["entries"]) == len(tune.SUITE_NK)


@pytest.mark.parametrize(
    ("header", "mode"),
    [({"m_buckets": ["1", "16"]}, "--resume"), ({"m_buckets": 16}, "--resume"), ({"m_buckets": [0]}, "--update"),
     ({"retunes": "x"}, "--update"), ({"retunes": [1]}, "--resume")],
)  # fmt: skip
def test_a_malformed_header_is_a_clear_error(gpu, tmp_path, capsys, header, mode):
    """The header fields a run extends (``m_buckets``, ``retunes``) are checked with the table: a bad one
    stops the run before timing, naming the field (it once raised a TypeError/AttributeError after the
    first shape had been timed), and a merge of such a file is skipped."""
    out = tmp_path / "t.json"
    rec = {"config": CFG, "us": 1.0, "git_sha": "aaa", "triton": "3.6.0"}
    out.write_text(json.dumps({"schema": tuned.SCHEMA, "device": DEV, "triton": "3.6.0", **header,
                               "entries": {"N=4096,K=4096": {"1": rec}}}))  # fmt: skip
    assert _run(out, "--m", "1", mode) == 2
    field = next(iter(header))
    assert f"'{field}' must be a list" in capsys.readouterr().err
    assert gpu.calls == []


def test_m_buckets_beyond_what_a_table_holds_are_refused(capsys):
    """A bucket the table reader would drop (>= 2**31) is refused on the command line, not timed and
    then left out on every --resume."""
    with pytest.raises(SystemExit) as e:
        tune.main(["--m", f"1,{1 << 31}"])
    assert e.value.code == 2
    assert "--m row counts must be in 1..2147483647" in capsys.readouterr().err
