"""benchmarks/bench_model.py and the model section of benchmarks/render_docs.py: pure helpers (fast, no
torch work) and a CPU smoke run of the driver (eager row, tiny model, a subprocess per row)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH = REPO_ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_model
import render_docs

GIB = 2**30


def _row(name: str, toks: dict[str, float], compile_s: tuple[float, float] | None, **extra) -> dict:
    spec = bench_model.ROW_SPECS[name]
    prefill = {k: {"tokens_per_s": v, "rel_err": 0.03 if spec.fp8 else 0.0} for k, v in toks.items() if "prefill" in k}
    decode = {k: {"tokens_per_s": v, "rel_err": 0.03 if spec.fp8 else 0.0} for k, v in toks.items() if "decode" in k}
    row = {
        "row": name,
        "status": "ok",
        "backend": spec.backend or "eager",
        "fp8": spec.fp8,
        "prefill": prefill,
        "decode": decode,
        "flags": [],
        "model": {
            "linear_bf16_bytes": 4 * GIB,
            "lm_head_bytes": 1 * GIB,
            "embed_bytes": 1 * GIB,
            "other_bytes": 1024,
        },
        "steady_prefill_bytes": 6 * GIB + 1024,
        **extra,
    }
    if compile_s is not None:
        row["prefill_compile_s"], row["decode_compile_s"] = compile_s
    return row


def _report(rows: dict[str, dict], layers: int = 8) -> dict:
    return {
        "meta": {
            "benchmark": "bench_model",
            "layers": layers,
            "full_layers": 32,
            "quick": False,
            "device": "NVIDIA H100 80GB HBM3",
            "date": "2026-11-25T00:00:00+00:00",
            "git_sha": "0123456789abcdef",
            "model": {**bench_model.LLAMA3_8B.hf_kwargs(layers)},
            "shapes": {
                "prefill": [[1, 2048], [8, 512]],
                "decode_batches": [1, 8, 32],
                "decode_cache_len": 1024,
                "decode_pos": 512,
            },
            "timer": {"warmup_ms": 25.0, "rep_ms": 200.0},
            "caches": "fresh per row (cold compile)",
            "runs": [{"rows": list(rows)}],
        },
        "rows": rows,
    }


KEYS = ["prefill_1x2048", "prefill_8x512", "decode_b1", "decode_b8", "decode_b32"]


def _sample() -> dict:
    base = dict(zip(KEYS, [100_000.0, 120_000.0, 200.0, 1_500.0, 5_000.0]))
    fp8 = dict(zip(KEYS, [150_000.0, 150_000.0, 340.0, 2_000.0, 6_000.0]))
    eager = dict(zip(KEYS, [80_000.0, 90_000.0, 150.0, 1_000.0, 4_000.0]))
    return _report(
        {
            "eager_bf16": _row("eager_bf16", eager, None),
            "compile_bf16": _row("compile_bf16", base, (20.0, 40.0)),
            "fp8block_quantized": _row(
                "fp8block_quantized", fp8, (30.0, 60.0), steady_prefill_bytes=2 * GIB + 2 * GIB + 1024
            ),
        }
    )


# ---------------------------------------------------------------------------------------------- CLI helpers
def test_parse_rows_and_phases():
    assert bench_model.parse_rows(None, on_cpu=False) == bench_model.DEFAULT_ROWS
    assert bench_model.parse_rows(None, on_cpu=True) == ["eager_bf16", "fp8block"]
    assert bench_model.parse_rows("all", on_cpu=False) == bench_model.ROW_ORDER
    assert bench_model.parse_rows("fp8block, eager_bf16", on_cpu=False) == ["fp8block", "eager_bf16"]
    with pytest.raises(SystemExit):
        bench_model.parse_rows("fp8block,nope", on_cpu=False)
    assert bench_model.parse_phases("prefill,decode") == ["prefill", "decode"]
    assert bench_model.parse_phases("decode") == ["decode"]
    with pytest.raises(SystemExit):
        bench_model.parse_phases("prefill,train")


def test_row_specs():
    specs = bench_model.ROW_SPECS
    assert "fp8inductor" not in (specs["compile_bf16"].backend or "")
    assert specs["compile_bf16"].decode_mode == "reduce-overhead"
    assert specs["fp8block_quantized"].quantize and specs["fp8block_quantized"].fp8
    assert not specs["fp8block"].quantize
    assert specs["compile_bf16_max_autotune"].prefill_mode == "max-autotune-no-cudagraphs"
    assert bench_model.BASELINE_ROW in bench_model.DEFAULT_ROWS
    assert "fp8block_max_autotune" not in bench_model.DEFAULT_ROWS  # optional row


def test_args_defaults():
    args = bench_model.parse_args([])
    assert args.layers == bench_model.DEFAULT_LAYERS == 8 and args.phases == ["prefill", "decode"]
    assert bench_model.parse_args(["--quick"]).layers == 2
    assert bench_model.parse_args(["--quick", "--layers", "3"]).layers == 3


def test_decode_batches_option():
    import argparse

    assert bench_model.model_shape(bench_model.parse_args([])).decode_batches == (1, 8, 32)
    assert bench_model.model_shape(bench_model.parse_args(["--quick"])).decode_batches == (1, 2)
    args = bench_model.parse_args(["--decode-batches", "1", "--layers", "32"])
    assert bench_model.model_shape(args).decode_batches == (1,)
    assert bench_model.model_shape(args).hidden_size == bench_model.LLAMA3_8B.hidden_size
    assert "--decode-batches" in bench_model.child_command(args, "fp8block", Path("row.json"))
    assert bench_model.run_meta(args, ["fp8block"], bench_model.model_shape(args))["shapes"]["decode_batches"] == [1]
    for bad in ("0", "1,1", "x", "", "-8"):
        with pytest.raises(argparse.ArgumentTypeError):
            bench_model.parse_decode_batches(bad)


def test_prefill_shapes_option():
    import argparse

    assert bench_model.model_shape(bench_model.parse_args([])).prefill_shapes == ((1, 2048), (8, 512))
    args = bench_model.parse_args(["--prefill-shapes", "1x2047,8X511"])
    assert bench_model.model_shape(args).prefill_shapes == ((1, 2047), (8, 511))
    cmd = bench_model.child_command(args, "fp8block", Path("row.json"))
    assert cmd[cmd.index("--prefill-shapes") + 1] == "1x2047,8x511"
    assert bench_model.run_meta(args, ["fp8block"], bench_model.model_shape(args))["shapes"]["prefill"] == [
        [1, 2047], [8, 511]
    ]  # fmt: skip
    for bad in ("0x5", "1x2,1x2", "1x", "2048", "", "ax3"):
        with pytest.raises(argparse.ArgumentTypeError):
            bench_model.parse_prefill_shapes(bad)


def test_merge_keeps_old_rows_and_replaces_rerun_rows():
    old = _sample()
    new = _report({"compile_bf16": _row("compile_bf16", dict.fromkeys(KEYS, 1.0), (1.0, 1.0))})
    new["meta"]["runs"] = [{"rows": ["compile_bf16"]}]
    merged = bench_model.merge_reports(copy.deepcopy(old), new)
    assert list(merged["rows"]) == ["eager_bf16", "compile_bf16", "fp8block_quantized"]  # ROW_ORDER
    assert merged["rows"]["compile_bf16"]["prefill_compile_s"] == 1.0
    assert merged["rows"]["eager_bf16"] == old["rows"]["eager_bf16"]
    assert len(merged["meta"]["runs"]) == 2
    assert bench_model.merge_reports(None, new) is new


def test_merge_refuses_other_layers():
    with pytest.raises(SystemExit, match="layers"):
        bench_model.merge_reports(_sample(), _report({}, layers=4))


# ---------------------------------------------------------------------------------------------- rendering
def test_ratios_and_targets():
    report = _sample()
    ratios = render_docs.model_ratios(report)
    assert ratios["compile_bf16"]["prefill_1x2048"] == pytest.approx(1.0)
    assert ratios["fp8block_quantized"]["prefill_1x2048"] == pytest.approx(1.5)
    assert ratios["fp8block_quantized"]["decode_b1"] == pytest.approx(1.7)
    assert ratios["fp8block_quantized"]["compile"] == pytest.approx(1.5)
    assert ratios["eager_bf16"]["compile"] is None
    (line,) = render_docs.model_target_lines(report)
    assert "prefill 1x2048 1.50x (>= 1.4x: met)" in line
    assert "prefill 8x512 1.25x (>= 1.4x: missed)" in line
    assert "decode b1 1.70x (>= 1.6x: met)" in line
    assert "decode b8" not in line  # targets only for prefill and batch-1 decode
    assert "compile time 1.50x (<= 1.5x: met)" in line


def test_non_finite_logits_show_as_wrong_not_as_speed():
    """A measurement whose logits were NaN (the decode b8/b32 of 5bd7ca6 on the H100) has no speed:
    its cell says so, it has no ratio, and a target on it reads '–', never met."""
    report = _sample()
    report["rows"]["fp8block_quantized"]["decode"]["decode_b1"]["rel_err"] = float("nan")
    report["rows"]["fp8block_quantized"]["decode"]["decode_b8"]["rel_err"] = float("inf")
    ratios = render_docs.model_ratios(report)
    assert ratios["fp8block_quantized"]["decode_b1"] is None and ratios["fp8block_quantized"]["decode_b8"] is None
    assert ratios["fp8block_quantized"]["decode_b32"] is not None
    line = next(x for x in render_docs.model_target_lines(report) if x.startswith("`fp8block_quantized`"))
    assert "decode b1 – (>= 1.6x: –)" in line
    md = render_docs.model_markdown(report, "bench_model.png")
    fp8_row = next(x for x in md.splitlines() if x.startswith("| fp8block_quantized |"))
    assert fp8_row.count("WRONG (non-finite logits)") == 2


def test_check_err_marks_non_finite_logits_as_wrong_output():
    import torch

    bench = bench_model.RowRunner.__new__(bench_model.RowRunner)
    bench.result = {"flags": []}
    ref = torch.ones(2, 8)
    entry: dict = {}
    bench.check_err("decode_b1", entry, ref * 1.01, ref)
    assert entry["rel_err"] == pytest.approx(0.01, rel=1e-3) and not bench.result["flags"]
    assert "wrong_output" not in bench.result
    bad = ref.clone()
    bad[0, 3] = float("nan")
    bench.check_err("decode_b8", {}, bad, ref)
    assert bench.result["wrong_output"] is True
    assert bench.result["flags"] == ["decode_b8: WRONG OUTPUT: logits not finite (rel. error nan) vs eager bf16"]


def test_check_err_checks_the_replayed_graph_too():
    """For CUDA-graph rows the first call is the warm-up run; the graph that is timed is checked too:
    a non-finite replay makes the output wrong (no speed in the tables), a replay as accurate as the
    first call adds no flag."""
    import torch

    bench = bench_model.RowRunner.__new__(bench_model.RowRunner)
    bench.result = {"flags": []}
    ref = torch.ones(2, 8)
    entry: dict = {}
    bench.check_err("decode_b1", entry, ref * 1.2, ref)
    bench.check_err("decode_b1", entry, ref * 1.2, ref, field="rel_err_replay")
    assert entry["rel_err_replay"] == pytest.approx(0.2, rel=1e-3) and len(bench.result["flags"]) == 1
    bad = ref.clone()
    bad[1, 1] = float("inf")
    bench.check_err("decode_b1", entry, bad, ref, field="rel_err_replay")
    assert bench.result["wrong_output"] is True and "replayed graph" in bench.result["flags"][-1]
    report = _sample()
    report["rows"]["fp8block_quantized"]["decode"]["decode_b8"]["rel_err_replay"] = float("nan")
    assert render_docs.model_output_wrong(report["rows"]["fp8block_quantized"], "decode_b8")
    assert render_docs.model_ratios(report)["fp8block_quantized"]["decode_b8"] is None


def test_fp8_lm_head_rows_count_their_lm_head_as_fp8():
    """decode b1 TB/s and "held for linears" of a row that converts lm_head too: its lm_head is read as
    FP8 + scales, and held beside the bf16 one (backend only) or instead of it (quantize_). They were
    counted as bf16 (2.16 TB/s published for 1.76)."""
    fp8_lm_head = 1 * GIB // 2 + 1 * GIB // 2 // (128 * 128) * 4
    fp8_linears = 4 * GIB // 2 + 4 * GIB // 2 // (128 * 128) * 4
    step = {"median_ms": 1.0}
    for name, quantized, lm_head_held in [
        ("fp8block", False, 1 * GIB),
        ("fp8block_lm_head", False, 1 * GIB + fp8_lm_head),
        ("fp8block_quantized_lm_head", True, fp8_lm_head),
    ]:
        row = _row(name, {}, None, quantized=quantized, decode={"decode_b1": step})
        lm_head_read = 1 * GIB if name == "fp8block" else fp8_lm_head
        assert render_docs._decode_weight_bytes(row) == fp8_linears + lm_head_read
        assert render_docs.model_decode_b1_tbps(row) == pytest.approx((fp8_linears + lm_head_read) / 1e-3 / 1e12)
        held, _ = render_docs._held_for_linears(row)
        assert held == 6 * GIB + 1024 - 1 * GIB - lm_head_held - 1024
        row["fp8_lm_head"] = name != "fp8block"  # what bench_model records since 2026-12-06: the same
        assert render_docs._decode_weight_bytes(row) == fp8_linears + lm_head_read


def test_rows_of_another_run_get_no_ratios_and_a_note():
    """--merge keeps rows of earlier runs: a row measured by another run than compile_bf16 gets no
    ratio (processes differ by a few percent) and a note; so does one on another device. A file from
    before run_date (the 227eb61 one) says which rows a run skipped and kept from an earlier run."""
    report = _sample()
    rows = report["rows"]
    rows["compile_bf16"]["run_date"] = "2026-12-06T10:00:00+00:00"
    rows["fp8block_quantized"]["run_date"] = "2026-12-05T10:00:00+00:00"
    rows["eager_bf16"]["run_date"] = "2026-12-06T10:00:00+00:00"
    rows["eager_bf16"]["env"], rows["compile_bf16"]["env"] = {"device": "NVIDIA H200"}, {"device": "NVIDIA H100"}
    ratios = render_docs.model_ratios(report)
    assert all(v is None for v in ratios["fp8block_quantized"].values())
    assert ratios["eager_bf16"]["prefill_1x2048"] == pytest.approx(0.8)
    notes = render_docs.model_notes(report)
    assert any(n.startswith("`fp8block_quantized`: measured in the run of 2026-12-05") for n in notes), notes
    assert any("`eager_bf16`: other device than `compile_bf16`" in n for n in notes), notes
    old = _sample()
    old["meta"]["runs"] = [{"date": "d2", "rows": ["compile_bf16", "eager_bf16"], "skipped": ["eager_bf16"]}]
    assert any("`eager_bf16`: skipped in the run of d2" in n for n in render_docs.model_notes(old))


def test_held_for_linears():
    row = _sample()["rows"]["fp8block_quantized"]
    held, frac = render_docs._held_for_linears(row)
    assert held == 2 * GIB and frac == pytest.approx(0.5)
    assert render_docs._held_for_linears({"model": {}}) == (None, None)


def test_markdown_and_docs_section(tmp_path):
    report = _sample()
    report["rows"]["fp8block_quantized"]["flags"] = ["decode_b1: logits rel. error 0.2 vs eager bf16 (> 0.1)"]
    md = render_docs.model_markdown(report, "bench_model.png")
    assert "| compile_bf16 | 100,000 (1.00x) | 120,000 (1.00x) | 200 (1.00x)" in md
    assert "| fp8block_quantized | 150,000 (1.50x)" in md
    assert "8 of Llama-3-8B's 32 decoder layers" in md
    assert "2.00 (0.50)" in md  # held for linears GiB (/ bf16)
    assert "rel. error 0.2" in md
    docs = tmp_path / "benchmarks.md"
    gemm = "<!-- BEGIN bench_gemm -->\nGEMM TABLE\n<!-- END bench_gemm -->"
    docs.write_text(f"# Benchmarks\n\nintro\n\n{gemm}\n\nafter\n")
    render_docs.update_docs(docs, render_docs.model_docs_section(report, "bench_model.png"), render_docs.MODEL_SECTION)
    text = docs.read_text()
    assert gemm in text and "after" in text and "## Model level" in text
    report["rows"]["compile_bf16"]["prefill"]["prefill_1x2048"]["tokens_per_s"] = 50_000.0
    render_docs.update_docs(docs, render_docs.model_docs_section(report, "bench_model.png"), render_docs.MODEL_SECTION)
    text2 = docs.read_text()
    assert text2.count("## Model level") == 1 and "150,000 (3.00x)" in text2 and gemm in text2


def test_render_cli_model_section(tmp_path):
    pytest.importorskip("matplotlib")
    report = _sample()
    (tmp_path / "bench_model.json").write_text(json.dumps(report))
    docs = tmp_path / "benchmarks.md"
    render_docs.main(["--section", "model", str(tmp_path / "bench_model.json"), "--docs", str(docs)])
    assert (tmp_path / "bench_model.png").stat().st_size > 0
    assert "](bench_model.png)" in docs.read_text()


# ---------------------------------------------------------------------------------------------- CPU smoke
def _run_driver(tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / "bench_model.json"
    cmd = [sys.executable, str(BENCH / "bench_model.py"), "--quick", "--device", "cpu", "--out", str(out), *extra]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_cpu_smoke_eager(tmp_path):
    """The driver end to end on the CPU: one eager row, tiny model, both phases (about 10 s)."""
    report = _run_driver(tmp_path, "--rows", "eager_bf16")
    row = report["rows"]["eager_bf16"]
    assert row["status"] == "ok", row.get("errors")
    assert report["meta"]["layers"] == 2 and report["meta"]["quick"]
    assert not row["env"]["fp8inductor_imported"] and not row["env"]["inductor_freezing"]
    for key in ("prefill_1x64", "prefill_2x32"):
        assert row["prefill"][key]["tokens_per_s"] > 0 and row["prefill"][key]["rel_err"] == 0.0
    for key in ("decode_b1", "decode_b2"):
        assert row["decode"][key]["tokens_per_s"] > 0 and row["decode"][key]["rel_err"] == 0.0
    # 2 layers x bf16 x (q, o: 512x512; k, v: 128x512 (2 KV heads of 64); gate, up, down: 1408x512)
    assert row["model"]["linear_bf16_bytes"] == 2 * 2 * (2 * 512 * 512 + 2 * 128 * 512 + 3 * 1408 * 512)
    assert "eager_bf16" in render_docs.model_text_report(report)


@pytest.mark.slow
def test_cpu_smoke_fp8block_prefill(tmp_path):
    """fp8block on the CPU (reference FP8 path, Inductor C++ compile: about a minute on 2 cores)."""
    report = _run_driver(tmp_path, "--rows", "fp8block", "--phases", "prefill")
    row = report["rows"]["fp8block"]
    assert row["status"] == "ok", row.get("errors")
    assert row["env"]["fp8inductor_imported"] and row["env"]["inductor_freezing"]
    assert all(0 < e["rel_err"] < bench_model.REL_ERR_FLAG for e in row["prefill"].values())
    assert sum(g["converted"] for g in row["prefill_fp8_graphs"]) == 2 * 2 * 7  # 2 graphs x 2 layers x 7 linears


def test_fp8_options_are_checked_and_guard_merges():
    import argparse

    assert bench_model.parse_fp8_options('{"gemm_lowering": "extern"}') == {"gemm_lowering": "extern"}
    # Inductor config keys too, as the backend's options take them (type-checked)
    assert bench_model.parse_fp8_options('{"coordinate_descent_tuning": true}') == {"coordinate_descent_tuning": True}
    for bad in (
        "[1]",
        "{not json",
        '{"gemm_lowering": "bogus"}',
        '{"no_such_field": 1}',
        '{"coordinate_descent_tuning": "yes"}',
        '{"freezing": false}',
    ):
        with pytest.raises(argparse.ArgumentTypeError):
            bench_model.parse_fp8_options(bad)
    meta = {"layers": 2, "quick": True, "shapes": {}, "runs": []}
    old = {"meta": dict(meta), "rows": {}}  # a file from before the option: no fp8_options key
    assert bench_model.merge_reports(old, {"meta": {**meta, "fp8_options": {}}, "rows": {}})["rows"] == {}
    with pytest.raises(SystemExit, match="fp8_options"):
        bench_model.merge_reports(old, {"meta": {**meta, "fp8_options": {"gemm_lowering": "extern"}}, "rows": {}})
