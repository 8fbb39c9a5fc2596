"""Tuning tables: format validation, M-bucket lookup, fallbacks (CPU only: no GPU needed)."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
import torch

from fp8inductor import tuned
from fp8inductor.kernels.config import CONFIGS, GemmConfig, pick_config

DEV = "Test GPU 80GB"


def _table(entries, device=DEV, schema=tuned.SCHEMA):
    return {"schema": schema, "device": device, "entries": entries}


def _rec(cfg: GemmConfig):
    return {"config": dataclasses.asdict(cfg), "us": 1.0}


@pytest.fixture
def config_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(tuned, "CONFIG_DIR", tmp_path)
    tuned.load_table.cache_clear()
    tuned._warn_untuned.cache_clear()
    yield tmp_path
    tuned.load_table.cache_clear()


def _write(config_dir, data, device=DEV):
    (config_dir / f"{tuned.device_slug(device)}.json").write_text(json.dumps(data))


def test_nearest_bucket_is_log2_nearest():
    assert [tuned.nearest_bucket(m) for m in (1, 2, 5, 16, 40, 100, 300, 1000, 3000, 100000)] == [
        1, 1, 16, 16, 64, 128, 512, 512, 2048, 8192]  # fmt: skip


def test_lookup_uses_exact_nk_and_nearest_m(config_dir):
    small, large = CONFIGS["splitk_16x64"], CONFIGS["tma_128x128"]
    _write(config_dir, _table({"N=4096,K=4096": {"1": _rec(small), "2048": _rec(large)}}))
    assert tuned.lookup(DEV, 3, 4096, 4096) == small
    assert tuned.lookup(DEV, 9000, 4096, 4096) == large
    assert tuned.lookup(DEV, 3, 4096, 4097) is None


def test_untuned_shape_warns_once(config_dir, caplog):
    _write(config_dir, _table({"N=4096,K=4096": {"1": _rec(CONFIGS["tiles_16x64"])}}))
    with caplog.at_level(logging.WARNING, logger="fp8inductor"):
        for _ in range(3):
            assert tuned.lookup(DEV, 5, 1024, 4096) is None
    assert [r.getMessage() for r in caplog.records].count(
        f"fp8inductor: no tuned GEMM config for N=1024,K=4096 on {DEV}; using the heuristic"
    ) == 1


@pytest.mark.parametrize(
    "data,why",
    [
        ("{not json", "ignoring tuned GEMM configs"),
        (json.dumps(_table({}, schema=99)), "not a schema-1"),
        (json.dumps(_table({"N=1,K=2": {"1": {"config": {"kind": "warp"}}}})), "entry N=1,K=2 M=1"),
        (json.dumps(_table({"oops": {}})), "malformed entry 'oops'"),
        (json.dumps(_table({}, device="Other GPU")), "tuned on 'Other GPU'"),
        # an M bucket lookup cannot take log2 of, and configs no kernel can launch (they used to pass
        # here and fail at the first GEMM: math domain error, ZeroDivisionError in the split plan)
        (json.dumps(_table({"N=4096,K=4096": {"0": _rec(CONFIGS["tiles_16x64"])}})), "M bucket must be a positive"),
        (json.dumps(_table({"N=4096,K=4096": {"-16": _rec(CONFIGS["tiles_16x64"])}})), "M bucket must be a positive"),
        *[
            (
                json.dumps(
                    _table(
                        {"N=4096,K=4096": {"16": {"config": {**dataclasses.asdict(CONFIGS["splitk_16x64"]), **bad}}}}
                    )
                ),
                why,
            )
            for bad, why in [
                ({"block_m": 0}, "block_m must be a power of two"),
                ({"block_m": 24}, "block_m must be a power of two"),
                ({"split_k": 0}, "split_k must be >= 1"),
                ({"num_warps": 3}, "num_warps must be a power of two"),
                ({"num_stages": 0}, "num_stages must be >= 1"),
                ({"num_warps": 4.0}, "num_warps must be an int"),
                ({"flatten": 1}, "flatten must be a bool"),
            ]
        ],
    ],
)
def test_bad_or_foreign_files_are_ignored_with_a_warning(config_dir, caplog, data, why):
    (config_dir / f"{tuned.device_slug(DEV)}.json").write_text(data)
    with caplog.at_level(logging.WARNING, logger="fp8inductor"):
        assert tuned.lookup(DEV, 16, 4096, 4096) is None
    assert any(why in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_shipped_tables_are_valid():
    for path in tuned.CONFIG_DIR.glob("*.json"):
        data = json.loads(path.read_text())
        table = tuned.parse_table(data, str(path))
        assert table and path.stem == tuned.device_slug(data["device"])
        for per_m in table.values():
            for cfg in per_m.values():
                assert isinstance(cfg, GemmConfig)


def test_heuristic_regimes():
    assert pick_config(1, 2112, 7168, 132, True).kind == "splitk"
    assert pick_config(8192, 4096, 4096, 132, False) == CONFIGS["tiles_128x128"]


def test_update_retunes_only_what_this_commit_has_not_tuned():
    """``tune --update``: entries tuned at another commit are timed again, entries of this commit and
    other buckets are kept, so an interrupted update continues where it stopped; plain runs (and
    --resume) only fill missing entries."""
    from fp8inductor.tune import shapes_to_tune

    entries = {"N=4096,K=4096": {"64": {"git_sha": "old"}, "128": {"git_sha": "new"}}}
    nks, ms = [(4096, 4096), (1024, 4096)], [64, 128]
    redo = shapes_to_tune(entries, nks, ms, update=True, sha="new")
    assert redo == [(4096, 4096, 64), (1024, 4096, 64), (1024, 4096, 128)]
    assert shapes_to_tune(entries, nks, ms, update=False, sha="new") == [(1024, 4096, 64), (1024, 4096, 128)]


@pytest.mark.parametrize("argv", [["-m", "fp8inductor.tune"], ["-m", "fp8inductor", "tune"]])
def test_tune_entry_points(argv):
    """Both spellings reach the tuner: --help prints its usage; without a GPU it says so (exit 2)."""
    import subprocess
    import sys

    helped = subprocess.run([sys.executable, *argv, "--help"], capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "--update" in helped.stdout
    if not torch.cuda.is_available():
        ran = subprocess.run([sys.executable, *argv, "--m", "1"], capture_output=True, text=True, timeout=120)
        assert ran.returncode == 2 and "needs a CUDA GPU" in ran.stderr


def test_tune_never_replaces_a_table_by_accident(tmp_path):
    from fp8inductor.tune import TuneError, load_for_run

    out = tmp_path / "t.json"
    assert load_for_run(out, DEV, resume=False, update=False, overwrite=False) == {}  # a new file
    out.write_text(json.dumps(_table({"N=4096,K=4096": {"1": _rec(CONFIGS["tiles_16x64"])}})))
    with pytest.raises(TuneError, match="exists: --update"):
        load_for_run(out, DEV, resume=False, update=False, overwrite=False)
    assert "N=4096,K=4096" in load_for_run(out, DEV, resume=False, update=True, overwrite=False)["entries"]
    assert load_for_run(out, DEV, resume=False, update=False, overwrite=True) == {}
    with pytest.raises(TuneError, match="tuned on 'Test GPU 80GB'"):
        load_for_run(out, "Other GPU", resume=True, update=False, overwrite=False)
    out.write_text(json.dumps(_table({}, schema=tuned.SCHEMA + 1)))
    with pytest.raises(TuneError, match="schema"):
        load_for_run(out, DEV, resume=True, update=False, overwrite=False)
    out.write_text('{"entries": {"N=1')  # truncated: a clear error, not a JSON traceback
    with pytest.raises(TuneError, match="not a readable tuning table"):
        load_for_run(out, DEV, resume=True, update=False, overwrite=False)


def test_tune_header_lists_every_bucket_the_entries_hold():
    """``m_buckets`` after each mode: --resume with other buckets keeps the table's (it used to be
    replaced by the resuming run's); --update keeps the first run's provenance and records itself;
    --m is deduplicated (a repeated bucket was timed twice)."""
    from fp8inductor.tune import _m_buckets, record_run

    assert _m_buckets("64,1,64") == [1, 64]
    first = {"git_sha": "a", "tuned_at": "t0"}
    data: dict = {}
    record_run(data, first, [1, 16, 64], device=DEV, capability=[9, 0], update=False, shapes="all", why="")
    assert data["m_buckets"] == [1, 16, 64] and data["git_sha"] == "a"
    # --resume: this run heads the table (documented), the buckets are merged
    record_run(data, {"git_sha": "b", "tuned_at": "t1"}, [128], device=DEV, capability=[9, 0], update=False,
               shapes="all", why="")  # fmt: skip
    assert data["m_buckets"] == [1, 16, 64, 128] and data["git_sha"] == "b"
    record_run(data, {"git_sha": "c", "tuned_at": "t2"}, [1, 8192], device=DEV, capability=[9, 0], update=True,
               shapes="suite", why="new candidates")  # fmt: skip
    assert data["m_buckets"] == [1, 16, 64, 128, 8192] and data["git_sha"] == "b"
    assert data["retunes"] == [{"git_sha": "c", "tuned_at": "t2", "m_buckets": [1, 8192], "shapes": "suite",
                                "why": "new candidates"}]  # fmt: skip


def test_tune_writes_the_table_atomically(tmp_path, monkeypatch):
    from fp8inductor import tune

    out = tmp_path / "sub" / "t.json"
    tune.write_table(out, {"a": 1})
    assert json.loads(out.read_text()) == {"a": 1}

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tune.os, "replace", fail)  # interrupted between writing and renaming
    with pytest.raises(KeyboardInterrupt):
        tune.write_table(out, {"a": 2})
    assert json.loads(out.read_text()) == {"a": 1}  # the previous complete file
    assert [f.name for f in out.parent.iterdir()] == ["t.json"]  # no temporary file left


@pytest.mark.parametrize("bad", ["1,x", "0", "-16", ""])
def test_tune_rejects_bad_m_buckets(bad):
    from fp8inductor.tune import main

    with pytest.raises(SystemExit) as e:
        main(["--m", bad])
    assert e.value.code == 2
