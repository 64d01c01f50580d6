"""Fused DAC kernels: `dac_cpu` (C++ compiled on first use), `dac_triton` (CUDA)."""
