"""Deployable checkpoints: a built variant written in the format its deployment engine loads with its own kernels
(compressed-tensors pack-quantized for integer grids, transformers' bitsandbytes serialization)."""
