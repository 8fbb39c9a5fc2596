"""One FP8 copy per weight across compiled graphs (the backend-only route).

With ``backend="fp8block"`` on a bf16 model, Inductor freezing quantizes each weight by constant
folding ``quantize_weight`` once *per compiled graph*: every new input shape (prefill lengths, decode
batch sizes) used to add a full FP8 copy of the model. Measured on the H100 (Llama-3-8B shapes,
8 layers, before this module): 2.01x the bf16 linear bytes after two prefill graphs, 13.3 GiB after
three more decode graphs, against 5.2 GiB for bf16.

While an fp8block compile is in progress, ``quantize_weight`` on a real (non-fake) tensor goes
through ``memoized``: the result for the same weight storage, view, block, format and *content*
is returned again, so all graphs share one FP8 weight and its scales. Content is checked, not
assumed: each entry keeps a 128-bit fingerprint of the weight's bits (two int64 checksums over the
raw bits, computed on the weight's device), and an in-place change of the weight (``w.data.mul_``,
``copy_``, which need not bump ``w._version``) makes the next compile quantize afresh. Entries hold
weak references only: once no graph holds the FP8 tensors they are freed as before.

Outside a compile (eager calls, ``quantize_``) nothing is memoized: callers own their outputs.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable

import torch

_CHUNK = 1 << 22  # elements per checksum chunk: bounds the int64 temporaries (32 MiB)
_lock = threading.Lock()
_entries: dict[tuple, tuple[tuple[int, int], weakref.ref, weakref.ref]] = {}


def _key(w: torch.Tensor, block_n: int, block_k: int, scale_fmt: str) -> tuple:
    return (
        w.device,
        w.untyped_storage().data_ptr(),
        w.storage_offset(),
        tuple(w.shape),
        tuple(w.stride()),
        w.dtype,
        block_n,
        block_k,
        scale_fmt,
    )


def fingerprint(w: torch.Tensor) -> tuple[int, int]:
    """Two int64 checksums of w's raw bits: their sum, and their sum weighted by (index % 65521 + 1).

    Any change of a single element changes the first; swapping elements changes the second. Not a
    cryptographic hash: it guards against accidental in-place updates, not adversarial ones.
    """
    bits_dtype = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[w.element_size()]
    flat = w.detach().contiguous().view(bits_dtype).reshape(-1)
    total = torch.zeros((), dtype=torch.int64, device=w.device)
    weighted = torch.zeros((), dtype=torch.int64, device=w.device)
    for start in range(0, flat.numel(), _CHUNK):
        chunk = flat[start : start + _CHUNK].to(torch.int64)
        idx = torch.arange(start, start + chunk.numel(), device=w.device, dtype=torch.int64)
        total += chunk.sum()
        weighted += (chunk * (idx % 65521 + 1)).sum()
    return int(total), int(weighted)


def _in_fp8block_compile() -> bool:
    from .passes import _ACTIVE_SCOPE

    return _ACTIVE_SCOPE.get() is not None


def memoized(
    w: torch.Tensor,
    block_n: int,
    block_k: int,
    scale_fmt: str,
    quantize: Callable[[], tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``quantize()`` for w [N, K], or the (q, s) an earlier graph of this process got for the same bits."""
    if not _in_fp8block_compile() or isinstance(w, torch._subclasses.FakeTensor) or w.device.type == "meta":
        return quantize()
    key = _key(w, block_n, block_k, scale_fmt)
    fp = fingerprint(w)
    with _lock:
        entry = _entries.get(key)
        if entry is not None and entry[0] == fp:
            q, s = entry[1](), entry[2]()
            if q is not None and s is not None:
                return q, s
    q, s = quantize()
    with _lock:
        _entries[key] = (fp, weakref.ref(q), weakref.ref(s))
        _prune()
    return q, s


def _prune() -> None:
    """Drop entries whose FP8 tensors were freed (called with the lock held)."""
    dead = [k for k, (_, q, s) in _entries.items() if q() is None or s() is None]
    for k in dead:
        del _entries[k]


def clear() -> None:
    """Forget every entry (the tensors stay alive as long as graphs hold them)."""
    with _lock:
        _entries.clear()
