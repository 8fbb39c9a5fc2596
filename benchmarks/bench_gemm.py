"""Blockwise-FP8 GEMM benchmark: fp8inductor's kernels against bf16 cuBLAS, cuBLAS blockwise FP8 and
the transformers 4.57.1 Triton kernels ("seed"), side by side in one process.

    PYTHONPATH=. python benchmarks/bench_gemm.py [--quick] [--out-dir DIR] [--dry-run]

Writes ``DIR/bench_gemm.json`` (raw rows + environment), ``DIR/bench_gemm.md`` (table to paste) and
``DIR/bench_gemm.png``; prints the table. ``--dry-run`` runs the whole pipeline on a CPU with tiny
shapes and the reference implementations standing in for every GPU function (timings meaningless).
Method: see ``render_docs.INTRO`` / docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import inspect
import itertools
import json
import math
import platform
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
for _p in (str(REPO_ROOT), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import render_docs  # noqa: E402
import seed  # noqa: E402
import shapes as shape_suite  # noqa: E402
from provenance import git_meta, package_version  # noqa: E402

from fp8inductor.reference import (  # noqa: E402
    block_fp8_linear_ref,
    block_gemm_ref,
    ceil_div,
    dequantize_activation_ref,
    dequantize_weight_ref,
    quantize_activation_ref,
    quantize_weight_ref,
)

BLOCK = 128  # 1x128 activation groups, 128x128 weight blocks
REL_ERR_TOL = 1e-2  # max relative Frobenius error vs the fp32 reference for a result to count
DEFAULT_L2_BYTES = 50 * 2**20  # H100 L2, used when the device does not report its own
L2_MULTIPLE = 4  # the rotated weight copies of one format together exceed this many L2 sizes
MIN_COPIES = 2  # even a weight larger than 4x L2 alternates between two buffers
MAX_COPIES = 64  # bounds the Python-side cycle; the smallest FP8 weight here (2112x7168) needs 14
WEIGHT_BYTES_CAP = 8 * 2**30  # per format and (N, K) group: far below the 80 GB of an H100
DRY_RUN_MAX_COPIES = 3
DRY_RUN_WARMUP_CALLS, DRY_RUN_TIMED_CALLS = 1, 5
ERROR_NOTE_CHARS = 300  # exception messages are cut to this length in the JSON
BF16_BYTES, FP8_BYTES, FP32_BYTES = 2, 1, 4


# ---------------------------------------------------------------------------------------------- data
@dataclasses.dataclass(frozen=True)
class WeightCopy:
    """One weight buffer: bf16 ``q`` [N, K] with ``s`` None, or fp8 ``q`` [N, K] with fp32 ``s`` [N/128, K/128]."""

    q: torch.Tensor
    s: torch.Tensor | None = None


@dataclasses.dataclass
class WeightSet:
    """The rotated copies of one (N, K) and the fp32 operands of copy 0 for the references."""

    bf16: list[WeightCopy]
    fp8: list[WeightCopy]
    w_f32: torch.Tensor  # [N, K] fp32 of bf16 copy 0
    wdq_f32: torch.Tensor  # [N, K] fp32 dequantized fp8 copy 0


@dataclasses.dataclass(frozen=True)
class Activations:
    """Inputs of one M: bf16 x and its reference 1x128 quantization (shared by all GEMM-only impls)."""

    x: torch.Tensor  # [M, K] bf16
    xq: torch.Tensor  # [M, K] fp8
    xs: torch.Tensor  # [M, K/128] fp32, row-major
    xs_colmajor: torch.Tensor  # [M, K/128] fp32, strides (1, M): the layout cuBLAS blockwise wants


@dataclasses.dataclass(frozen=True)
class Impl:
    """One implementation under test."""

    key: str  # JSON / table key
    label: str
    weights: str  # "bf16" or "fp8": which rotated copies it reads
    ref: str  # "bf16" (fp32 product of unquantized inputs) or "fp8" (fp32 product of dequantized inputs)
    e2e: bool  # True: takes bf16 x (quantizes it itself); False: takes pre-quantized xq, xs
    fn: Callable[[Activations, WeightCopy], torch.Tensor] | None
    raises_status: str = "error"  # status of a shape where fn raises ("unsupported" for cuBLAS limits)
    unavailable: str = ""  # why fn is None


@dataclasses.dataclass
class Result:
    """One (shape, implementation) row of the JSON."""

    m: int
    n: int
    k: int
    impl: str
    status: str  # ok | wrong | unsupported | unavailable | error
    time_ms: float | None = None  # median
    p20_ms: float | None = None
    p80_ms: float | None = None
    tflops: float | None = None
    gbps: float | None = None
    rel_err: float | None = None
    first_call_s: float | None = None  # wall time of the first call (includes Triton compile/autotune)
    n_weight_copies: int | None = None
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Timing:
    median_ms: float
    p20_ms: float | None
    p80_ms: float | None


@dataclasses.dataclass(frozen=True)
class Config:
    dry_run: bool
    device: torch.device
    timer: str  # "do_bench" or "cudagraph" (ignored in a dry run)
    warmup_ms: float
    rep_ms: float
    l2_bytes: int
    max_copies: int


# ---------------------------------------------------------------------------------------------- impls
def _cublas_blockwise(a: Activations, w: WeightCopy) -> torch.Tensor:
    """cuBLAS blockwise FP8 via torch._scaled_mm (the form accepted by torch 2.11 on H100).

    a.xs_colmajor: [M, K/128] with strides (1, M); w.s.t(): a view [K/128, N/128] with strides (1, K/128)
    (a contiguous copy of it is rejected). Known limits: M = 1 raises CUBLAS_STATUS_NOT_SUPPORTED,
    M % 4 != 0 is unsupported, (K/128) % 4 != 0 may silently give wrong results (hence the check).
    """
    return torch._scaled_mm(a.xq, w.q.t(), a.xs_colmajor, w.s.t(), out_dtype=torch.bfloat16)


def _dry_run_cublas_standin(a: Activations, w: WeightCopy) -> torch.Tensor:
    """CPU stand-in that mimics cuBLAS blockwise's M % 4 == 0 requirement, to exercise the 'unsupported' path."""
    if a.x.shape[0] % 4:
        raise RuntimeError("dry-run stand-in: cuBLAS blockwise needs M % 4 == 0")
    return block_gemm_ref(a.xq, a.xs, w.q, w.s)


def _bf16_mm(a: Activations, w: WeightCopy) -> torch.Tensor:
    return torch.mm(a.x, w.q.t())  # [M, K] @ [K, N]


def _load_ours() -> tuple[Callable | None, Callable | None, Callable | None, str]:
    """(fp8_block_gemm, fp8_block_linear, triton_config(m, n, k, wq) -> the GemmConfig the op would
    pick with cuBLAS ruled out, reason they are missing)."""
    try:
        from fp8inductor.kernels.block_gemm import _default_config, _tma_ok_weight, fp8_block_gemm, fp8_block_linear
    except Exception as exc:  # noqa: BLE001 -- any import failure makes them unavailable, with the reason
        return None, None, None, f"fp8inductor.kernels.block_gemm not importable: {exc!r}"[:ERROR_NOTE_CHARS]

    def triton_config(m: int, n: int, k: int, wq: torch.Tensor):
        return _default_config(wq.device, m, n, k, _tma_ok_weight(wq, torch.bfloat16), cublas_ok=False)

    return fp8_block_gemm, fp8_block_linear, triton_config, ""


def make_impls(dry_run: bool) -> list[Impl]:
    """The implementations, in table order. In a dry run every FP8 function is a reference stand-in."""
    bf16 = Impl("bf16", "bf16", "bf16", "bf16", True, _bf16_mm)
    if dry_run:

        def ref_gemm(a: Activations, w: WeightCopy) -> torch.Tensor:
            return block_gemm_ref(a.xq, a.xs, w.q, w.s)

        def ref_e2e(a: Activations, w: WeightCopy) -> torch.Tensor:
            return block_fp8_linear_ref(a.x, w.q, w.s)

        return [
            bf16,
            Impl("cublas_bw", "cuBLAS-bw", "fp8", "fp8", False, _dry_run_cublas_standin, "unsupported"),
            Impl("seed_gemm", "seed GEMM", "fp8", "fp8", False, ref_gemm),
            Impl("seed_e2e", "seed e2e", "fp8", "fp8", True, ref_e2e),
            Impl("ours_gemm", "ours GEMM", "fp8", "fp8", False, ref_gemm),
            Impl("ours_triton_e2e", "ours Triton e2e", "fp8", "fp8", True, ref_e2e),
            Impl("ours_e2e", "ours e2e", "fp8", "fp8", True, ref_e2e),
        ]

    try:
        seed.load()
        seed_missing = ""
    except seed.SeedUnavailable as exc:
        seed_missing = str(exc)
    ours_gemm, ours_linear, triton_config, ours_missing = _load_ours()

    def seed_gemm(a: Activations, w: WeightCopy) -> torch.Tensor:
        return seed.seed_gemm(a.xq, w.q, a.xs, w.s, (BLOCK, BLOCK), torch.bfloat16)

    def seed_e2e(a: Activations, w: WeightCopy) -> torch.Tensor:
        return seed.seed_linear_e2e(a.x, w.q, w.s, (BLOCK, BLOCK))

    def ours_gemm_fn(a: Activations, w: WeightCopy) -> torch.Tensor:  # our Triton GEMM alone
        (m, k), n = a.xq.shape, w.q.shape[0]
        return ours_gemm(a.xq, a.xs, w.q, w.s, None, torch.bfloat16, triton_config(m, n, k, w.q))

    def ours_triton_e2e_fn(a: Activations, w: WeightCopy) -> torch.Tensor:  # the op with cuBLAS ruled out
        (m, k), n = a.x.shape, w.q.shape[0]
        return ours_linear(a.x, w.q, w.s, None, "float", triton_config(m, n, k, w.q))

    def ours_e2e_fn(a: Activations, w: WeightCopy) -> torch.Tensor:  # the op as dispatched (cuBLAS where chosen)
        return ours_linear(a.x, w.q, w.s, None, "float")

    return [
        bf16,
        Impl("cublas_bw", "cuBLAS-bw", "fp8", "fp8", False, _cublas_blockwise, "unsupported"),
        Impl(
            "seed_gemm", "seed GEMM", "fp8", "fp8", False, None if seed_missing else seed_gemm, unavailable=seed_missing
        ),
        Impl("seed_e2e", "seed e2e", "fp8", "fp8", True, None if seed_missing else seed_e2e, unavailable=seed_missing),
        Impl(
            "ours_gemm",
            "ours GEMM",
            "fp8",
            "fp8",
            False,
            None if ours_missing else ours_gemm_fn,
            unavailable=ours_missing,
        ),
        Impl("ours_triton_e2e", "ours Triton e2e", "fp8", "fp8", True, None if ours_missing else ours_triton_e2e_fn,
             unavailable=ours_missing),  # fmt: skip
        Impl(
            "ours_e2e", "ours e2e", "fp8", "fp8", True, None if ours_missing else ours_e2e_fn, unavailable=ours_missing
        ),
    ]


def bytes_moved(impl: Impl, m: int, n: int, k: int) -> int:
    """Bytes an implementation must move at least: weights (+ scales), activations (+ scales), output."""
    kb, nb = ceil_div(k, BLOCK), ceil_div(n, BLOCK)
    y = m * n * BF16_BYTES
    if impl.weights == "bf16":
        return n * k * BF16_BYTES + m * k * BF16_BYTES + y
    w = n * k * FP8_BYTES + nb * kb * FP32_BYTES
    x = m * k * BF16_BYTES if impl.e2e else m * k * FP8_BYTES + m * kb * FP32_BYTES
    return w + x + y


# ---------------------------------------------------------------------------------------------- operands
def n_copies(copy_bytes: int, cfg: Config) -> int:
    """Copies whose total exceeds L2_MULTIPLE x L2, within [MIN_COPIES, max_copies] and WEIGHT_BYTES_CAP."""
    want = L2_MULTIPLE * cfg.l2_bytes // copy_bytes + 1
    by_memory = max(MIN_COPIES, WEIGHT_BYTES_CAP // copy_bytes)
    return max(MIN_COPIES, min(want, cfg.max_copies, by_memory))


def make_weights(n: int, k: int, cfg: Config, gen: torch.Generator) -> WeightSet:
    """Distinct random weights randn(N, K) / sqrt(K) (bf16), FP8-quantized with the reference quantizer."""
    n_bf16 = n_copies(n * k * BF16_BYTES, cfg)
    n_fp8 = n_copies(n * k * FP8_BYTES + ceil_div(n, BLOCK) * ceil_div(k, BLOCK) * FP32_BYTES, cfg)
    bf16, fp8 = [], []
    for i in range(max(n_bf16, n_fp8)):
        w = (torch.randn(n, k, generator=gen, device=cfg.device) / math.sqrt(k)).to(torch.bfloat16)  # [N, K]
        if i < n_bf16:
            bf16.append(WeightCopy(w))
        if i < n_fp8:
            fp8.append(WeightCopy(*quantize_weight_ref(w, (BLOCK, BLOCK))))  # [N, K] fp8, [N/128, K/128] fp32
    w_f32 = bf16[0].q.float()
    wdq_f32 = dequantize_weight_ref(fp8[0].q, fp8[0].s, (BLOCK, BLOCK), dtype=torch.float32)
    return WeightSet(bf16, fp8, w_f32, wdq_f32)


def make_activations(m: int, k: int, cfg: Config, gen: torch.Generator) -> Activations:
    x = torch.randn(m, k, generator=gen, device=cfg.device).to(torch.bfloat16)  # [M, K]
    xq, xs = quantize_activation_ref(x, BLOCK)  # [M, K] fp8, [M, K/128] fp32
    return Activations(x, xq, xs, xs.t().contiguous().t())


def references(a: Activations, ws: WeightSet) -> dict[str, torch.Tensor]:
    """fp32 [M, N] references: 'fp8' from the dequantized operands, 'bf16' from the unquantized ones."""
    xdq = dequantize_activation_ref(a.xq, a.xs, BLOCK, dtype=torch.float32)  # [M, K]
    return {"fp8": xdq @ ws.wdq_f32.t(), "bf16": a.x.float() @ ws.w_f32.t()}


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative Frobenius error |y - ref| / |ref| in fp32 (NaN/Inf in y gives NaN/Inf)."""
    return ((y.float() - ref).norm() / ref.norm()).item()


# ---------------------------------------------------------------------------------------------- timing
def _sync(cfg: Config) -> None:
    if cfg.device.type == "cuda":
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], object], cfg: Config) -> Timing:
    """Median (and 20/80th percentiles) of fn's time in ms.

    do_bench: one event pair per call, L2 cleared before each call (a 256 MiB zero_() queued before
    the start event, whose ~85 us on the GPU hide that much of the call's host time: host-side gaps
    inside a call count only beyond it). cudagraph: do_bench_cudagraph, the calls replayed back to back from
    one CUDA graph (GPU time only; no L2 clearing, so the weight rotation is what keeps L2 cold);
    its percentiles are over 10 replays of the whole graph. A dry run uses perf_counter.
    """
    if cfg.dry_run:
        for _ in range(DRY_RUN_WARMUP_CALLS):
            fn()
        times = []
        for _ in range(DRY_RUN_TIMED_CALLS):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        q = statistics.quantiles(times, n=5)  # 20/40/60/80th percentiles
        return Timing(statistics.median(times), q[0], q[-1])
    import triton.testing

    if cfg.timer == "cudagraph":
        bench, kwargs = triton.testing.do_bench_cudagraph, {"rep": cfg.rep_ms}
    else:
        bench, kwargs = triton.testing.do_bench, {"warmup": cfg.warmup_ms, "rep": cfg.rep_ms}
    if "quantiles" in inspect.signature(bench).parameters:  # triton 3.6 and 3.9 take it; q = 0.5 is the median
        med, p20, p80 = bench(fn, quantiles=[0.5, 0.2, 0.8], **kwargs)
        return Timing(med, p20, p80)
    return Timing(bench(fn, return_mode="median", **kwargs), None, None)


def rotating(impl: Impl, a: Activations, copies: Sequence[WeightCopy]) -> Callable[[], torch.Tensor]:
    """A call of impl that reads the next weight copy each time (so the weights are not in L2)."""
    cycle = itertools.cycle(copies)
    return lambda: impl.fn(a, next(cycle))


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:ERROR_NOTE_CHARS]


def bench_one(
    impl: Impl, shape: shape_suite.GemmShape, a: Activations, ws: WeightSet, refs: dict[str, torch.Tensor], cfg: Config
) -> Result:
    """Check impl once against the reference, then time it (also when wrong: recorded, flagged)."""
    m, n, k = shape.m, shape.n, shape.k
    res = Result(m, n, k, impl.key, "unavailable", note=impl.unavailable)
    if impl.fn is None:
        return res
    copies = ws.bf16 if impl.weights == "bf16" else ws.fp8
    res.n_weight_copies = len(copies)
    try:
        t0 = time.perf_counter()
        y = impl.fn(a, copies[0])  # [M, N]
        _sync(cfg)
        res.first_call_s = time.perf_counter() - t0
        if tuple(y.shape) != (m, n):
            raise RuntimeError(f"output shape {tuple(y.shape)}, expected {(m, n)}")
    except Exception as exc:  # noqa: BLE001 -- a failing shape is a result, not the end of the run
        res.status, res.note = impl.raises_status, _short(exc)
        return res
    res.rel_err = rel_err(y, refs[impl.ref])
    del y
    ok = math.isfinite(res.rel_err) and res.rel_err < REL_ERR_TOL
    res.status = "ok" if ok else "wrong"
    if not ok:
        res.note = f"rel. error {res.rel_err:.3g} >= {REL_ERR_TOL:g} vs the fp32 reference"
    try:
        t = time_fn(rotating(impl, a, copies), cfg)
    except Exception as exc:  # noqa: BLE001
        res.status, res.note = "error", f"while timing: {_short(exc)}"
        return res
    res.time_ms, res.p20_ms, res.p80_ms = t.median_ms, t.p20_ms, t.p80_ms
    res.tflops = shape.flops / (t.median_ms * 1e-3) / 1e12
    res.gbps = bytes_moved(impl, m, n, k) / (t.median_ms * 1e-3) / 1e9
    return res


# ---------------------------------------------------------------------------------------------- environment
def _driver_version() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def l2_bytes(device: torch.device) -> int:
    if device.type != "cuda":
        return DEFAULT_L2_BYTES
    return getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or DEFAULT_L2_BYTES


def environment(cfg: Config, impls: Sequence[Impl], args: argparse.Namespace) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "device": torch.cuda.get_device_name(cfg.device) if cfg.device.type == "cuda" else "CPU (dry run)",
        "driver": _driver_version() if cfg.device.type == "cuda" else None,
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "transformers": package_version("transformers"),
        "python": platform.python_version(),
        **git_meta(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "dry_run": cfg.dry_run,
        "quick": args.quick,
        "timer": "perf_counter" if cfg.dry_run else cfg.timer,
        "warmup_ms": cfg.warmup_ms,
        "rep_ms": cfg.rep_ms,
        "l2_bytes": cfg.l2_bytes,
        "l2_multiple": L2_MULTIPLE,
        "rel_err_tol": REL_ERR_TOL,
        "seed": seed.provenance(),
        "impls": [[i.key, i.label] for i in impls],
        "unavailable": {i.key: i.unavailable for i in impls if i.fn is None},
    }


# ---------------------------------------------------------------------------------------------- driver
def write_outputs(out_dir: Path, meta: dict, rows: list[Result], final: bool) -> dict:
    report = {"meta": {**meta, "complete": final}, "rows": [dataclasses.asdict(r) for r in rows]}
    (out_dir / "bench_gemm.json").write_text(json.dumps(report, indent=1) + "\n")
    if final:
        render_docs.plot(report, out_dir / "bench_gemm.png")
        (out_dir / "bench_gemm.md").write_text(render_docs.markdown(report, "bench_gemm.png"))
    return report


def _progress(shape: shape_suite.GemmShape, results: Sequence[Result], t_start: float) -> str:
    cells = []
    for r in results:
        cells.append(f"{r.impl}={r.time_ms * 1e3:.1f}us" if r.status == "ok" else f"{r.impl}={r.status}")
    return f"[{time.perf_counter() - t_start:6.1f}s] {shape}: " + " ".join(cells)


def run(args: argparse.Namespace) -> dict:
    device = torch.device("cpu" if args.dry_run else "cuda")
    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("no CUDA device: run on a GPU, or use --dry-run")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 references in true fp32
    torch.backends.cudnn.allow_tf32 = False
    cfg = Config(
        dry_run=args.dry_run,
        device=device,
        timer=args.timer,
        warmup_ms=args.warmup_ms,
        rep_ms=args.rep_ms,
        l2_bytes=l2_bytes(device),
        max_copies=DRY_RUN_MAX_COPIES if args.dry_run else args.max_copies,
    )
    impls = [i for i in make_impls(args.dry_run) if not args.impls or i.key in args.impls]
    meta = environment(cfg, impls, args)
    for key, why in meta["unavailable"].items():
        print(f"note: {key} unavailable: {why}", flush=True)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator(device=device).manual_seed(0)
    rows: list[Result] = []
    t_start = time.perf_counter()
    suite = shape_suite.suite(quick=args.quick, dry_run=args.dry_run)
    for (n, k), group in itertools.groupby(suite, key=lambda s: s.nk):
        weights = make_weights(n, k, cfg, gen)
        print(f"N={n} K={k}: {len(weights.bf16)} bf16 / {len(weights.fp8)} fp8 weight copies", flush=True)
        for shape in group:
            a = make_activations(shape.m, k, cfg, gen)
            refs = references(a, weights)
            results = [bench_one(impl, shape, a, weights, refs, cfg) for impl in impls]
            rows += results
            print(_progress(shape, results, t_start), flush=True)
            del a, refs
        del weights
        if device.type == "cuda":
            torch.cuda.empty_cache()
        write_outputs(out_dir, meta, rows, final=False)  # partial results survive a crash
    meta["wall_s"] = round(time.perf_counter() - t_start, 1)
    report = write_outputs(out_dir, meta, rows, final=True)
    print()
    print(render_docs.text_report(report))
    print(
        f"\nwrote {out_dir / 'bench_gemm.json'}, {out_dir / 'bench_gemm.md'}, {out_dir / 'bench_gemm.png'} "
        f"in {meta['wall_s']} s"
    )
    return report


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a 9-shape subset (shapes.QUICK_*)")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, reference stand-ins (tests the pipeline)")
    ap.add_argument("--out-dir", default=str(REPO_ROOT / "docs"), help="where the .json/.md/.png go (default docs/)")
    ap.add_argument(
        "--timer",
        choices=("do_bench", "cudagraph"),
        default="do_bench",
        help="do_bench (default; host overhead inside a call counts) or do_bench_cudagraph (GPU time only)",
    )
    ap.add_argument("--warmup-ms", type=float, default=25.0, help="do_bench warmup budget per measurement")
    ap.add_argument("--rep-ms", type=float, default=100.0, help="do_bench repetition budget per measurement")
    ap.add_argument("--max-copies", type=int, default=MAX_COPIES, help="cap on the rotated weight copies")
    ap.add_argument(
        "--impls",
        type=lambda s: s.split(","),
        default=None,
        help="comma-separated subset of: bf16,cublas_bw,seed_gemm,seed_e2e,ours_gemm,ours_triton_e2e,ours_e2e",
    )
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        run(args)
    except Exception:
        traceback.print_exc()
        sys.exit(1)


if __name__ == "__main__":
    main()
