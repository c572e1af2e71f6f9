"""Official weights in transformers' layout -> lightning_musicgen checkpoints."""
