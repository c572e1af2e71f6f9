"""Deprecated: the training callbacks moved to `lightning_musicgen.training`. Old imports and YAML class
paths (`lightning_musicgen.callbacks.EvaluateGeneration`, `lightning_musicgen.callbacks.evaluate.…`)
keep working for one release, with a `DeprecationWarning` naming the new path."""
from lightning_musicgen.moved import alias_package

_MODULES = ["codec", "evaluate", "media", "nonfinite", "periodic", "throughput"]
_NAMES = ["AudioThroughputMonitor", "CodecReconstruction", "EvaluateGeneration", "NonFiniteGuard",
          "PeriodicEvaluation", "chroma_image", "log_media", "log_scalars", "mel_image", "validation_batches"]

__getattr__ = alias_package(globals(), {m: f"lightning_musicgen.training.{m}" for m in _MODULES},
                            {n: "lightning_musicgen.training" for n in _NAMES})
