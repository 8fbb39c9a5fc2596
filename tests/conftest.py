"""Shared pytest setup. Keep minimal: other suites rely on it. (Markers are registered in pyproject.toml.)"""

import os

import pytest
import torch

# Without a GPU, Triton kernels run under the interpreter on CPU tensors. This must happen before
# any module defining a @triton.jit kernel is imported (Triton reads it when the decorator runs).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_sessionstart(session):
    """Stop at once, saying why, when this interpreter has no ``fp8block`` entry point.

    The backend is found through the installed package's ``torch_dynamo_backends`` entry point; a
    source tree on ``PYTHONPATH`` alone imports ``fp8inductor`` but leaves ``backend="fp8block"``
    unknown, and every compile test then fails with Dynamo's ``Invalid backend`` (seen on the GPU
    machine, 2026-12-05, where ``pip`` is not the ``python3`` that runs the tests).
    """
    import importlib.metadata as md
    import sys

    if not any(ep.name == "fp8block" for ep in md.entry_points(group="torch_dynamo_backends")):
        pytest.exit(
            f"fp8inductor is not installed for {sys.executable}: the 'fp8block' backend's entry point "
            f"is missing. Install it with this interpreter: {sys.executable} -m pip install -e . "
            "(on a machine with its own torch: add --no-deps --no-build-isolation)",
            returncode=4,
        )


def _has_fp8_gpu() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``gpu`` unless a CUDA GPU with FP8 (compute capability >= 8.9) is visible."""
    if _has_fp8_gpu():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU with FP8 (compute capability >= 8.9)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def fresh_dynamo():
    """Each compile test starts and ends with an empty Dynamo cache and cleared counters."""
    from torch._dynamo.utils import counters

    from fp8inductor import weight_memo

    torch._dynamo.reset()
    counters.clear()
    # The weight memo is content-keyed: a model with the same seeded weights as an earlier test's,
    # whose graphs may still be alive, would share that test's FP8 tensors. Start each test afresh.
    weight_memo.clear()
    yield
    torch._dynamo.reset()
