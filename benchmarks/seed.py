"""The "seed" baseline: transformers 4.57.1's fine-grained FP8 Triton kernels, loaded from its wheel.

The code is never copied into this repository: at run time the module source
``transformers/integrations/finegrained_fp8.py`` is read out of the PyPI wheel file
``<repo>/.whl/transformers-4.57.1-py3-none-any.whl`` (or ``$FP8_SEED_WHEEL``) and executed as a
module of its own. Its only package-relative import is::

    from ..utils import is_accelerate_available, is_torch_accelerator_available, is_torch_available, logging

which a stub package satisfies (``_check_relative_imports`` fails loudly if a future source needs more).
``is_accelerate_available()`` is stubbed False: ``accelerate.init_empty_weights`` is used only by
``replace_with_fp8_linear`` (the nn.Module swap), which the benchmark does not call. Nothing of the
installed ``transformers`` package is imported.

Smoke test on a CPU (Triton interpreter): ``TRITON_INTERPRET=1 python benchmarks/seed.py``.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import linecache
import logging
import os
import sys
import types
import zipfile
from pathlib import Path

import torch

SEED_VERSION = "4.57.1"
WHEEL_NAME = f"transformers-{SEED_VERSION}-py3-none-any.whl"
MODULE_IN_WHEEL = "transformers/integrations/finegrained_fp8.py"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WHEEL = REPO_ROOT / ".whl" / WHEEL_NAME
WHEEL_ENV = "FP8_SEED_WHEEL"  # overrides DEFAULT_WHEEL
DOWNLOAD_HINT = f"mkdir -p .whl && pip download --no-deps transformers=={SEED_VERSION} -d .whl"

# The stub package standing in for ``transformers`` (a private name: the real one is never touched).
_STUB_PKG = "_fp8seed_transformers"
_MODULE_NAME = f"{_STUB_PKG}.integrations.finegrained_fp8"

# What the stub ``..utils`` provides, by name; the source's relative imports must be a subset.
_UTILS_STUBS = {
    "is_torch_available": lambda: True,
    "is_accelerate_available": lambda: False,  # only replace_with_fp8_linear needs accelerate
    "is_torch_accelerator_available": lambda: torch.cuda.is_available(),  # only FP8Linear.forward
    "logging": types.SimpleNamespace(get_logger=logging.getLogger),
}
_STUB_MODULES = {"utils": _UTILS_STUBS}


class SeedUnavailable(RuntimeError):
    """The seed wheel is missing or its module could not be loaded."""


def wheel_path() -> Path:
    return Path(os.environ.get(WHEEL_ENV, DEFAULT_WHEEL))


def _read_source(wheel: Path) -> str:
    if not wheel.is_file():
        raise SeedUnavailable(
            f"seed wheel not found at {wheel}. Download it (from the repo root, with network): {DOWNLOAD_HINT} "
            f"-- or point ${WHEEL_ENV} at it. On the device machine, carry '.whl'."
        )
    with zipfile.ZipFile(wheel) as zf:
        try:
            return zf.read(MODULE_IN_WHEEL).decode("utf-8")
        except KeyError:
            raise SeedUnavailable(f"{wheel} has no {MODULE_IN_WHEEL}: is it transformers {SEED_VERSION}?") from None


def _check_relative_imports(source: str) -> None:
    """Every ``from ..X import a, b`` of the source must be provided by ``_STUB_MODULES``."""
    missing = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            provided = _STUB_MODULES.get(node.module or "", {})
            missing += [
                f"from {'.' * node.level}{node.module} import {a.name}" for a in node.names if a.name not in provided
            ]
    if missing:
        raise SeedUnavailable(f"the seed module needs imports the shim does not provide: {missing}")


def _install_stub_package() -> None:
    """Registers ``_fp8seed_transformers``, ``.integrations`` and ``.utils`` in ``sys.modules``."""
    for name in (_STUB_PKG, f"{_STUB_PKG}.integrations"):
        pkg = sys.modules.get(name) or types.ModuleType(name)
        pkg.__path__ = []  # a package, so that relative imports below it resolve
        sys.modules[name] = pkg
    for sub, attrs in _STUB_MODULES.items():
        mod = types.ModuleType(f"{_STUB_PKG}.{sub}")
        mod.__dict__.update(attrs)
        sys.modules[mod.__name__] = mod


@functools.cache
def load() -> types.ModuleType:
    """The executed 4.57.1 ``finegrained_fp8`` module (cached). Raises SeedUnavailable."""
    wheel = wheel_path()
    source = _read_source(wheel)
    _check_relative_imports(source)
    _install_stub_package()
    filename = f"{wheel}/{MODULE_IN_WHEEL}"  # a pseudo path: shows in tracebacks, found via linecache
    # triton.jit reads each kernel's source with inspect.getsource, which finds it through linecache
    # (an entry with mtime None is never invalidated by checkcache).
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    module = types.ModuleType(_MODULE_NAME)
    module.__file__ = filename
    module.__package__ = f"{_STUB_PKG}.integrations"
    sys.modules[_MODULE_NAME] = module
    try:
        exec(compile(source, filename, "exec"), module.__dict__)
    except Exception as exc:
        del sys.modules[_MODULE_NAME]
        raise SeedUnavailable(f"executing {MODULE_IN_WHEEL} from {wheel} failed: {exc!r}") from exc
    return module


def provenance() -> dict[str, str]:
    """Where the seed came from (for the benchmark's JSON)."""
    wheel = wheel_path()
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest() if wheel.is_file() else None
    return {"seed": f"transformers {SEED_VERSION} {MODULE_IN_WHEEL}", "wheel": wheel.name, "wheel_sha256": sha}


def seed_act_quant(x: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """4.57.1 ``act_quant``: x [..., K] contiguous, K % block == 0 -> (q [..., K] fp8, s [..., K / block] fp32).

    Unlike the reference it has no amax floor (an all-zero group gives a NaN scale) and divides with
    Triton's default (approximate) ``/``.
    """
    return load().act_quant(x, block)


def seed_gemm(
    xq: torch.Tensor,
    wq: torch.Tensor,
    xs: torch.Tensor,
    ws: torch.Tensor,
    block: tuple[int, int] | list[int] = (128, 128),
    out_dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """4.57.1 ``w8a8_block_fp8_matmul_triton``.

    Args:
        xq: [M, K] fp8, contiguous; xs: [M, ceil(K / block_k)] fp32.
        wq: [N, K] fp8, contiguous; ws: [ceil(N / block_n), ceil(K / block_k)] fp32.
    Returns:
        y: [M, N] ``out_dtype``.
    """
    return load().w8a8_block_fp8_matmul_triton(xq, wq, xs, ws, list(block), output_dtype=out_dtype)


def seed_linear_e2e(
    x: torch.Tensor, wq: torch.Tensor, ws: torch.Tensor, block: tuple[int, int] = (128, 128)
) -> torch.Tensor:
    """What 4.57.1 ``FP8Linear.forward`` computes for an FP8 weight and no bias: act_quant + GEMM.

    x: [M, K] bf16 contiguous -> y: [M, N] in x.dtype.

    Left out of ``forward`` (none of it changes the result): the ``torch.cuda.device(input.device)``
    context manager (host-side only), the ``torch.cuda.synchronize()`` after the GEMM (a full host
    sync on every call, which would make the timing measure the host round trip), the bias add
    (the benchmark has no bias) and the final ``.to(input.dtype)`` (a no-op: the GEMM already
    writes ``input.dtype``).
    """
    qx, sx = seed_act_quant(x, block[1])
    return seed_gemm(qx, wq, sx, ws, block, out_dtype=x.dtype)


def _smoke_test() -> None:
    """Runs the seed kernels on a tiny input and compares them with the reference.

    On a CPU this needs ``TRITON_INTERPRET=1`` (set before Triton is imported).
    """
    sys.path.insert(0, str(REPO_ROOT))
    from fp8inductor.kernels.pdl import triton_interpreting
    from fp8inductor.reference import block_gemm_ref, quantize_activation_ref, quantize_weight_ref

    mod = load()
    print(f"loaded {mod.__name__} from {mod.__file__}")
    interpreted = triton_interpreting()
    print(
        "  exposes:",
        ", ".join(n for n in ("act_quant", "w8a8_block_fp8_matmul_triton", "FP8Linear") if hasattr(mod, n)),
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not interpreted:
        print("no GPU and TRITON_INTERPRET is not 1: import checked, kernels not run")
        return
    gen = torch.Generator().manual_seed(0)
    m, n, k = 4, 320, 256  # N = 320: a partial last weight block row, as N = 2112 in the suite
    x = torch.randn(m, k, generator=gen).to(torch.bfloat16).to(device)  # [M, K]
    w = (torch.randn(n, k, generator=gen) / k**0.5).to(torch.bfloat16).to(device)  # [N, K]
    wq, ws = quantize_weight_ref(w)
    q, s = seed_act_quant(x)
    q_ref, s_ref = quantize_activation_ref(x)
    print(
        f"  act_quant: scale max rel diff {((s - s_ref).abs() / s_ref).max().item():.2e}, "
        f"codes equal {(q.float() == q_ref.float()).float().mean().item() * 100:.2f}%"
    )
    y = seed_gemm(q_ref, wq, s_ref, ws)
    y_ref = block_gemm_ref(q_ref, s_ref, wq, ws).float()
    rel = ((y.float() - y_ref).norm() / y_ref.norm()).item()
    print(f"  w8a8_block_fp8_matmul_triton: rel. Frobenius error vs block_gemm_ref {rel:.2e}")
    y_e2e = seed_linear_e2e(x, wq, ws)
    rel_e2e = ((y_e2e.float() - y_ref).norm() / y_ref.norm()).item()
    print(f"  seed_linear_e2e: rel. Frobenius error vs reference {rel_e2e:.2e}")
    if interpreted:
        # Seen with triton 3.9's interpreter: fp32 -> e4m3 casts do not round to nearest even (e.g. 124.3
        # became 64), so act_quant codes and the e2e error are off; the GEMM on reference codes is fine.
        print("  (TRITON_INTERPRET=1: the interpreter's fp8 casts are inexact; this checks plumbing, not numerics)")


if __name__ == "__main__":
    _smoke_test()
