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
    tuned._warn_far_bucket.cache_clear()
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
        (json.dumps(_table({"oops": {}})), "entry 'oops': not an N=<int>,K=<int> key"),
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
                ({"split_k": 0}, "split_k must be from 1 to"),
                ({"num_warps": 3}, "num_warps must be a power of two"),
                ({"num_stages": 0}, "num_stages must be from 1 to"),
                ({"num_warps": 4.0}, "num_warps must be an int"),
                ({"flatten": 1}, "flatten must be a bool"),
                # configs that used to load and then crash the first GEMM (Triton: tensor numel above
                # 2**20, "out of resource: shared memory, Required: 645120" on an H100, int32 overflow)
                ({"block_m": 2048, "block_n": 1024}, "tile 2048x1024 exceeds Triton's 1048576 elements"),
                ({"num_stages": 64}, "num_stages must be from 1 to 8"),
                ({"group_m": 10**21}, "group_m must be from 1 to 64"),
                ({"split_k": 10**30}, "split_k must be from 1 to 256"),
                ({"ctas_per_sm": 10**30}, "ctas_per_sm must be from 1 to 32"),
                ({"block_m": 128, "block_n": 256, "num_stages": 8}, "shared memory"),
                ({"block_m": 1024, "block_n": 1024, "num_stages": 1}, "shared memory"),
            ]
        ],
    ],
)
def test_bad_or_foreign_files_are_ignored_with_a_warning(config_dir, caplog, data, why):
    (config_dir / f"{tuned.device_slug(DEV)}.json").write_text(data)
    with caplog.at_level(logging.WARNING, logger="fp8inductor"):
        assert tuned.lookup(DEV, 16, 4096, 4096) is None
    assert any(why in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_shipped_tables_are_valid(monkeypatch, caplog):
    """Every entry of every shipped table passes the checks (no config is dropped by the limits of
    ``GemmConfig``) and is what the lookup returns at its own M bucket (none is out of reach)."""
    paths = sorted(tuned.CONFIG_DIR.glob("*.json"))
    assert paths
    for path in paths:
        data = json.loads(path.read_text())
        table = tuned.parse_table(data, str(path))
        assert table and path.stem == tuned.device_slug(data["device"])
        assert sum(map(len, table.values())) == sum(map(len, data["entries"].values()))
        tuned.load_table.cache_clear()
        with caplog.at_level(logging.WARNING, logger="fp8inductor"):
            for key, per_m in table.items():
                n, k = (int(v.split("=")[1]) for v in key.split(","))
                for bucket, cfg in per_m.items():
                    assert isinstance(cfg, GemmConfig)
                    assert tuned.lookup(data["device"], bucket, n, k) == cfg
                    assert tuned.lookup(data["device"], bucket + 1, n, k) is not None
        assert not [r for r in caplog.records if "dropped" in r.getMessage() or "ignoring" in r.getMessage()]
    tuned.load_table.cache_clear()


@pytest.mark.parametrize(
    "buckets,m,want",
    [
        ((1, 16), 8192, None),  # a decode-only table: the heuristic at prefill (it gave split-K 16x64)
        ((1, 16), 128, None),  # two steps from 16
        ((1, 16), 64, 16),  # one step
        ((1, 16), 40, 16),
        ((2048,), 8192, 2048),
        ((2048,), 100000, 2048),
        ((512,), 8192, None),
        ((128, 8192), 700, 128),  # 512's neighbours: both one step away, the nearest in log2
        ((4,), 16, 4),  # a bucket outside M_BUCKETS counts as its nearest (4 -> 1)
        ((4,), 64, None),
    ],
)
def test_lookup_uses_only_buckets_within_one_step(config_dir, caplog, buckets, m, want):
    cfgs = [CONFIGS["splitk_16x64"], CONFIGS["tiles_64x64"]]
    _write(config_dir, _table({"N=4096,K=4096": {str(b): _rec(cfgs[i % 2]) for i, b in enumerate(buckets)}}))
    with caplog.at_level(logging.WARNING, logger="fp8inductor"):
        for _ in range(3):
            got = tuned.lookup(DEV, m, 4096, 4096)
            assert got == (None if want is None else cfgs[buckets.index(want) % 2])
        tuned.lookup(DEV, m + 1, 4096, 4096)
    warned = [r.getMessage() for r in caplog.records if "N=4096,K=4096" in r.getMessage()]
    if want is None:  # one warning per (N, K), saying which buckets the table has
        assert len(warned) == 1 and f"cover M buckets {', '.join(map(str, buckets))} only" in warned[0], warned
    else:
        assert warned == []


@pytest.mark.parametrize(
    "data",
    [
        b"{not json",
        b"",
        b'{"schema": 1, "device": "\xff\xfe"}',  # not UTF-8
        b"[" * 100_000 + b"]" * 100_000,  # RecursionError in json: it used to crash every GEMM
        json.dumps(_table({}, schema=99)).encode(),
    ],
    ids=["json", "empty", "utf8", "deep", "schema"],
)
def test_bad_file_warns_once_naming_it(config_dir, caplog, data):
    """The warning names the file (it did not for JSON and UTF-8 errors), and the ignored table is
    cached: a bad file is read and reported once, not at every GEMM."""
    path = config_dir / f"{tuned.device_slug(DEV)}.json"
    path.write_bytes(data)
    with caplog.at_level(logging.WARNING, logger="fp8inductor"):
        for m in (1, 16, 4096, 1, 16):
            assert tuned.lookup(DEV, m, 4096, 4096) is None
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and str(path) in msgs[0] and "ignoring tuned GEMM configs" in msgs[0], msgs


def test_bad_entries_are_dropped_and_the_rest_used(config_dir, caplog):
    """An entry no kernel can launch (or without a finite time) is left out with one warning for the
    file; the table's other entries are still used."""
    good, deep = CONFIGS["tiles_16x64"], {**dataclasses.asdict(CONFIGS["tiles_16x64"]), "num_stages": 64}
    _write(config_dir, _table({"N=4096,K=4096": {"16": {"config": deep, "us": 1.0}, "64": {"config": deep, "us": 1.0}},
                               "N=1024,K=4096": {"16": _rec(good), "1": {"config": dataclasses.asdict(good)}},
                               "N=2048": {}}))  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="fp8inductor"):
        for _ in range(3):
            assert tuned.lookup(DEV, 16, 1024, 4096) == good
            assert tuned.lookup(DEV, 1, 1024, 4096) == good  # its own entry had no time: the 16 bucket's
            assert tuned.lookup(DEV, 16, 4096, 4096) is None
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(dropped) == 1 and "4 bad entries" in dropped[0] and "num_stages must be from 1 to 8" in dropped[0]
    assert "and 1 more" in dropped[0]  # the first three are spelled out


def test_triton_version_of_the_table_is_checked_once(config_dir, caplog, monkeypatch):
    """A table tuned under another triton is used, with one warning; an entry's own version (written
    since entries keep it) counts over the header's."""
    cfg = CONFIGS["tiles_16x64"]
    monkeypatch.setattr(tuned, "_running_triton", lambda: "3.9.0")
    _write(config_dir, {**_table({"N=4096,K=4096": {"16": _rec(cfg)}}), "triton": "3.6.0"})
    with caplog.at_level(logging.WARNING, logger="fp8inductor"):
        for _ in range(3):
            assert tuned.lookup(DEV, 16, 4096, 4096) == cfg
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and "tuned with triton 3.6.0, this is triton 3.9.0" in msgs[0], msgs
    caplog.clear()
    tuned.load_table.cache_clear()
    _write(config_dir, {**_table({"N=4096,K=4096": {"16": {**_rec(cfg), "triton": "3.9.0"}}}), "triton": "3.6.0"})
    with caplog.at_level(logging.WARNING, logger="fp8inductor"):
        assert tuned.lookup(DEV, 16, 4096, 4096) == cfg
    assert caplog.records == []


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
