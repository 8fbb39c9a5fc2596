"""GEMM launch configurations and the shape heuristic (no Triton import: usable anywhere)."""

from __future__ import annotations

import dataclasses

from ..reference import ceil_div

QBLOCK = 128  # scale block: activation group along K, weight block along N and K; also BLOCK_K
NORM_QUANT_MAX_K = 32768  # rms_norm_quant holds a row in registers: [next_pow2(K / 128), 128] fp32, <= 16 warps

# Upper limits of a Triton GemmConfig, checked when a config is made (so when a tuning table is read):
# beyond them a kernel fails to compile or launch at the first GEMM (Triton's OutOfResources, or
# "numel exceeds triton maximum tensor numel"), or a grid index overflows int32.
MAX_TILE_NUMEL = 1 << 20  # [BLOCK_M, BLOCK_N] accumulator: Triton's largest tensor (TRITON_MAX_TENSOR_NUMEL)
MAX_STAGES = 8  # the tuner's deepest candidate is 8 (16x32 tiles); deeper never paid in the kernel lab
MAX_GROUP_M = 64  # grouped tile order: GROUP_M * num_pid_n tiles in int32
MAX_SPLIT_K = 256  # K / 128 at K = 32768 (fewer are used where K has fewer 128-blocks)
MAX_CTAS_PER_SM = 32  # resident CTAs per SM on sm_90
SMEM_LIMIT = 227 * 1024  # bytes of shared memory one CTA may use on sm_90 (H100, H200): 232448


def smem_estimate(block_m: int, block_n: int, num_stages: int) -> int:
    """Shared memory (bytes) of the pipelined operand tiles of one CTA, counted generously: per stage
    an fp8 [BLOCK_M, 128] activation tile and [BLOCK_N, 128] weight tile and their fp32 scales
    ([BLOCK_M] activation groups, [ceil(BLOCK_N / 128)] weight blocks). Triton buffers num_stages - 1
    stages (16x64 tiles with 64 stages: 63 * 10240 = 645120 bytes, its OutOfResources on an H100);
    the spare stage stands for the epilogue and barriers."""
    per_stage = (block_m + block_n) * QBLOCK + 4 * (block_m + ceil_div(block_n, QBLOCK))
    return num_stages * per_stage


@dataclasses.dataclass(frozen=True)
class GemmConfig:
    """One GEMM choice. kind: a Triton kernel, "tma" (persistent), "tiles" (one program per tile) or
    "splitk"; or "cublas" (``kernels/cublas.py``: cuBLAS blockwise, whose own heuristic picks its
    tiles; the other fields are unused and fixed by ``CUBLAS``)."""

    kind: str
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    group_m: int = 8
    split_k: int = 1  # splitk: target number of K splits (fewer if K has fewer 128-blocks)
    ctas_per_sm: int = 1  # tma: persistent programs per SM
    flatten: bool = False  # tma: software-pipeline across tiles

    def __post_init__(self) -> None:
        """Checked here, so that a config read from a table (``fp8inductor.tuned``) that no kernel can
        launch is refused when the table is read, not at the first GEMM of a model."""
        if self.kind not in ("tma", "tiles", "splitk", "cublas"):
            raise ValueError(f"unknown GEMM kernel kind {self.kind!r}")
        sizes = ("block_m", "block_n", "num_warps", "num_stages", "group_m", "split_k", "ctas_per_sm")
        for name in sizes:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise TypeError(f"GemmConfig.{name} must be an int, got {v!r}")
        if not isinstance(self.flatten, bool):
            raise TypeError(f"GemmConfig.flatten must be a bool, got {self.flatten!r}")
        bn = self.block_n
        if bn < 1 or (bn <= QBLOCK and QBLOCK % bn) or (bn > QBLOCK and bn % QBLOCK):
            raise ValueError(f"block_n must divide 128 or be a multiple of it, got {bn}")
        if self.kind == "cublas":
            return  # cuBLAS picks its own tiles: the other fields are unused
        for name in ("block_m", "block_n"):  # tl.dot tiles: powers of two of at least 16
            v = getattr(self, name)
            if v < 16 or v & (v - 1):
                raise ValueError(f"GemmConfig.{name} must be a power of two >= 16, got {v}")
        if not 1 <= self.num_warps <= 32 or self.num_warps & (self.num_warps - 1):
            raise ValueError(f"GemmConfig.num_warps must be a power of two from 1 to 32, got {self.num_warps}")
        limits = {"num_stages": MAX_STAGES, "group_m": MAX_GROUP_M, "split_k": MAX_SPLIT_K,
                  "ctas_per_sm": MAX_CTAS_PER_SM}  # fmt: skip
        for name, most in limits.items():
            if not 1 <= getattr(self, name) <= most:
                raise ValueError(f"GemmConfig.{name} must be from 1 to {most}, got {getattr(self, name)}")
        if self.block_m * self.block_n > MAX_TILE_NUMEL:
            raise ValueError(
                f"GemmConfig tile {self.block_m}x{self.block_n} exceeds Triton's {MAX_TILE_NUMEL} elements per tensor"
            )
        smem = smem_estimate(self.block_m, self.block_n, self.num_stages)
        if smem > SMEM_LIMIT:
            raise ValueError(
                f"GemmConfig {self.block_m}x{self.block_n} with {self.num_stages} stages needs about {smem} bytes "
                f"of shared memory, more than the {SMEM_LIMIT} of a CTA (fewer stages or smaller tiles)"
            )


# The configurations the heuristic below picks from, with the H100 kernel-lab numbers that chose them
# (benchmarks/kernel_lab.py, 2026-11-25, triton 3.6). Tested one by one in tests/test_kernels.py.
CONFIGS: dict[str, GemmConfig] = {
    # M >= 2048: 841 (4096^3), 825 (2048x6144x4096), 903 (8192x7168x16384) TFLOP/s
    "tma_128x128": GemmConfig("tma", 128, 128, 8, 4, flatten=False),
    # 64 < M <= 1024: 2 CTAs per SM; 849 (2048x6144x4096), 830 at 512x4096x14336 was 128x128
    "tma_64x128": GemmConfig("tma", 64, 128, 4, 4, ctas_per_sm=2, flatten=True),
    # pointer fallbacks (non-contiguous or K % 16 != 0): 738-799 at large M; 64x64: best M=64 tiles
    "tiles_128x128": GemmConfig("tiles", 128, 128, 8, 4),
    "tiles_64x64": GemmConfig("tiles", 64, 64, 4, 4),
    # decode: BLOCK_M = 16 (mma.sync, exact accumulation)
    "tiles_16x64": GemmConfig("tiles", 16, 64, 4, 4),
    "tiles_16x128": GemmConfig("tiles", 16, 128, 4, 4),
    "splitk_16x64": GemmConfig("splitk", 16, 64, 4, 4, split_k=8),
}
# cuBLAS blockwise, where kernels/cublas.py admits the shape. GEMM-only time of our best Triton config /
# cuBLAS's over the 22 shapes of the H100 table (tune at c94e49f, docs/tuning.md): M = 64 0.52-1.18
# (median 1.03: mixed), 128 0.70-1.27 (1.10), 512 0.72-1.42 (1.28), 2048 1.10-1.50 (1.27), 8192
# 1.18-1.47 (1.28). Shapes without a table entry get cuBLAS from M = 128.
CUBLAS = GemmConfig("cublas", 128, 128, 0, 0)
CUBLAS_MIN_M = 128  # the heuristic's threshold (shapes without a tuned entry)


def pick_config(m: int, n: int, k: int, num_sms: int, tma_ok: bool, cublas_ok: bool = False) -> GemmConfig:
    """Heuristic from the H100 kernel lab (see CONFIGS), for shapes without a tuned entry.

    cublas_ok: ``kernels.cublas.usable`` holds for this call (cuBLAS is then chosen from M = 128).
    """
    if cublas_ok and m >= CUBLAS_MIN_M:
        return CUBLAS
    if m <= 64:
        bm = 16 if m <= 16 else 64
        bn = 128 if n >= 16384 else 64
        tiles = ceil_div(m, bm) * ceil_div(n, bn)
        # Too few tiles to stream the weights with every SM busy: split K (M=16, N=2112, K=7168:
        # 43 vs 23 TFLOP/s; N=4096, K=4096: 50 vs 39). Enough tiles: one program per tile.
        if tiles < (num_sms if m <= 16 else num_sms // 2):
            return CONFIGS["splitk_16x64"]
        return CONFIGS["tiles_16x128" if bn == 128 else "tiles_16x64"] if m <= 16 else CONFIGS["tiles_64x64"]
    if tma_ok:
        return CONFIGS["tma_64x128" if m <= 1024 else "tma_128x128"]
    return CONFIGS["tiles_128x128"]
