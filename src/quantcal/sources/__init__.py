"""Where weights come from: bundled names, ``.gguf`` files, local checkpoints (float or pack-quantized), hub ids, and
the on-disk cache that keeps what can be rebuilt (dequantized GGUF copies, built variants)."""
