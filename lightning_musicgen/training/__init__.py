"""Everything a training run uses besides the LightningModules and the data: callbacks, the checkpoint
plugin, the W&B logger and the FSDP strategy. YAML configs name them by this package, e.g.
`class_path: lightning_musicgen.training.EvaluateGeneration`.

    evaluate       EvaluateGeneration: generate from fixed prompts, log audio and FAD/KL/CLAP/chroma
    codec          CodecReconstruction: codec reconstructions and their SI-SNR/mel distance
    periodic       PeriodicEvaluation, validation_batches: the schedule and data the two above share
    throughput     AudioThroughputMonitor: audio seconds/s, tokens/s, MFU, grad norm, peak memory
    nonfinite      NonFiniteGuard: skip steps with a NaN/inf loss or gradient; a diverged run exits 1
    resume         RNGStateCheckpoint, PreemptionCheckpoint: exact resume, checkpoint-and-exit on signals
    checkpoint_io  AtomicCheckpointIO: temp file + fsync + rename checkpoint writes (`trainer.plugins`)
    logger         ResumableWandbLogger (one W&B run across requeues), LogConfig (config as run config)
    fsdp           TransformerFSDPStrategy: one FSDP unit and activation checkpoint per decoder layer
    compile        CompileLayers: torch.compile per decoder layer
    skipped        SkippedSamplesLogger: report the samples the datamodule skipped
    defaults       reliability_callbacks: the callbacks every fit of this package's LightningModules gets

Submodules load on first use: importing this package does not import Lightning.
"""
import importlib

_EXPORTS = {
    "EvaluateGeneration": "evaluate",
    "CodecReconstruction": "codec",
    "PeriodicEvaluation": "periodic", "validation_batches": "periodic",
    "AudioThroughputMonitor": "throughput",
    "NonFiniteGuard": "nonfinite",
    "PreemptionCheckpoint": "resume", "RNGStateCheckpoint": "resume",
    "AtomicCheckpointIO": "checkpoint_io",
    "LogConfig": "logger", "ResumableWandbLogger": "logger",
    "TransformerFSDPStrategy": "fsdp",
    "CompileLayers": "compile",
    "SkippedSamplesLogger": "skipped",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
