"""One FP8 copy per weight across compiled graphs (the backend-only route).

With ``backend="fp8block"`` on a bf16 model, Inductor freezing quantizes each weight by constant
folding ``quantize_weight`` once *per compiled graph*: every new input shape (prefill lengths, decode
batch sizes) used to add a full FP8 copy of the model. Measured on the H100 (Llama-3-8B shapes,
8 layers, before this module): 2.01x the bf16 linear bytes after two prefill graphs, 13.3 GiB after
three more decode graphs, against 5.2 GiB for bf16. With it (same benchmark, git ea2a4a5): 1.51x
(bf16 + one FP8 copy) in steady state, 6.83 GiB after the decode graphs.

While an fp8block compile is in progress, ``quantize_weight`` on a real (non-fake) tensor goes
through ``memoized``: the result for the same shape, strides, dtype, device, block, format and
*content* is returned again, so all graphs share one FP8 weight and its scales. The key is the
content: a fingerprint of the weight's bits (two 64-bit sums of per-element splitmix64 mixes,
computed on the weight's device; ``fingerprint``), so an in-place change of the weight
(``w.data.mul_``, ``copy_``, which need not bump ``w._version``) makes the next compile quantize
afresh, and a fresh tensor with known bits (the concatenated q/k/v weight that every compile
builds anew, ``FP8BlockConfig.fuse_siblings``) finds its earlier quantization. Entries hold weak references only: once no graph holds the FP8 tensors they are
freed as before.

Outside a compile (eager calls, ``quantize_``) nothing is memoized: callers own their outputs.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable

import torch

_CHUNK = 1 << 20  # elements per checksum chunk: bounds the int64 temporaries (~40 MiB)
_lock = threading.Lock()
_entries: dict[tuple, tuple[_Held, _Held]] = {}  # content key -> holds on (q, s)


def _key(w: torch.Tensor, block_n: int, block_k: int, scale_fmt: str, fp: tuple[int, int]) -> tuple:
    """Content-addressed: the same bits in the same layout quantize to the same FP8 tensors, wherever
    they live. (A concatenation of sibling weights, ``FP8BlockConfig.fuse_siblings``, is a fresh
    tensor in every compile: a storage-pointer key would miss it and add one copy per graph.)"""
    return (w.device, tuple(w.shape), tuple(w.stride()), w.dtype, block_n, block_k, scale_fmt, fp)


def _signed(c: int) -> int:
    """A 64-bit constant as the int64 torch arithmetic wraps around."""
    return c - (1 << 64) if c >= 1 << 63 else c


_SEEDS = (_signed(0x9E3779B97F4A7C15), _signed(0xD1B54A32D192ED03))
_M1, _M2 = _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)


def _mix(v: torch.Tensor) -> torch.Tensor:
    """splitmix64's finalizer on int64 (wrapping multiplies; arithmetic shifts, fine for mixing)."""
    v = (v ^ (v >> 30)) * _M1
    v = (v ^ (v >> 27)) * _M2
    return v ^ (v >> 31)


def _dense(w: torch.Tensor) -> bool:
    """True when w's elements exactly fill storage[offset, offset + numel) in some dimension order."""
    expected = 1
    for d in sorted((d for d in range(w.dim()) if w.size(d) != 1), key=w.stride):
        if w.stride(d) != expected:
            return False
        expected *= w.size(d)
    return True


def _bits_in_storage_order(w: torch.Tensor) -> torch.Tensor:
    """w's raw bits as a 1-D integer tensor, without a copy when w is dense (a permuted weight too)."""
    bits_dtype = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[w.element_size()]
    if _dense(w):
        # The elements fill storage[offset, offset + numel): hash them in storage order (the
        # memo key holds the strides, so the order is part of the identity anyway).
        flat = torch.empty(0, dtype=w.dtype, device=w.device)
        flat.set_(w.untyped_storage(), w.storage_offset(), (w.numel(),))
        return flat.view(bits_dtype)
    return w.detach().contiguous().view(bits_dtype).reshape(-1)


def fingerprint(w: torch.Tensor) -> tuple[int, int]:
    """Two int64 sums of splitmix64(bits[i] + seed * (i + 1)) over w's raw bits, one per seed.

    Each element is mixed with its position before summing, so any change, swap or pair of
    cancelling changes alters both sums except with probability ~2**-64 each. Not cryptographic:
    it guards against accidental in-place updates, not adversarial ones. Cost: one pass over the
    weight on its device in chunks of 2**20 elements (~40 MiB of int64 temporaries) and one sync.
    """
    flat = _bits_in_storage_order(w.detach())
    sums = [torch.zeros((), dtype=torch.int64, device=w.device) for _ in _SEEDS]
    for start in range(0, flat.numel(), _CHUNK):
        chunk = flat[start : start + _CHUNK].to(torch.int64)
        pos = torch.arange(start + 1, start + 1 + chunk.numel(), device=w.device, dtype=torch.int64)
        for acc, seed in zip(sums, _SEEDS):
            acc += _mix(chunk + pos * seed).sum()
    return int(sums[0]), int(sums[1])


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
    fp = fingerprint(w)
    key = _key(w, block_n, block_k, scale_fmt, fp)
    with _lock:
        entry = _entries.get(key)
        if entry is not None:
            q, s = entry[0].get(), entry[1].get()
            if q is not None and s is not None:
                return q, s
    q, s = quantize()
    with _lock:
        _entries[key] = (_Held(q), _Held(s))
        _prune()
    return q, s


class _Held:
    """A weak hold on a result tensor that survives the tensor object itself.

    Constant folding may keep only views of a result (the rows of a concatenated sibling weight,
    ``passes._share_rows``) and drop the object we returned; the storage lives on in those views.
    So the hold is a weak reference to the storage (one Python object per storage while it lives)
    plus the view's geometry, from which ``get`` rebuilds the same tensor without a copy.
    """

    def __init__(self, t: torch.Tensor) -> None:
        self.tensor = weakref.ref(t)
        self.storage = weakref.ref(t.untyped_storage())
        self.geometry = (t.dtype, t.device, t.storage_offset(), tuple(t.shape), tuple(t.stride()))

    def get(self) -> torch.Tensor | None:
        t = self.tensor()
        if t is not None:
            return t
        storage = self.storage()
        if storage is None:
            return None
        dtype, device, offset, shape, stride = self.geometry
        t = torch.empty(0, dtype=dtype, device=device).set_(storage, offset, shape, stride)
        self.tensor = weakref.ref(t)
        return t

    def alive(self) -> bool:
        return self.tensor() is not None or self.storage() is not None


def _prune() -> None:
    """Drop entries whose FP8 tensors were freed (called with the lock held)."""
    dead = [k for k, (q, s) in _entries.items() if not (q.alive() and s.alive())]
    for k in dead:
        del _entries[k]


def clear() -> None:
    """Forget every entry (the tensors stay alive as long as graphs hold them)."""
    with _lock:
        _entries.clear()
