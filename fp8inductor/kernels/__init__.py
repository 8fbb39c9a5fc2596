"""Triton kernels of the fine-grained FP8 scheme (numerics: ``fp8inductor.reference``).

* ``act_quant``: per-token 1x128 activation quantization (``act_quant_1x128``);
* ``weight_quant``: 128x128 block weight quantization (``weight_quant_128x128``);
* ``block_gemm``: block-scaled FP8 GEMM with fp32 accumulation (``fp8_block_gemm``,
  ``fp8_block_linear``).

The submodules are not imported here, so importing this package does not import Triton.
"""
