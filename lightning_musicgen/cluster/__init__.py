"""Deprecated: SLURM submission moved to `lightning_musicgen.slurm`, resume, checkpoint IO, logger, FSDP and
compile to `lightning_musicgen.training`. Old imports and YAML class paths
(`lightning_musicgen.cluster.resume.RNGStateCheckpoint`, ...) keep working for one release, with a
`DeprecationWarning` naming the new path."""
from lightning_musicgen.moved import alias_package

_MODULES = {m: f"lightning_musicgen.training.{m}" for m in ["checkpoint_io", "compile", "fsdp", "logger", "resume"]}
_NAMES = ["AtomicCheckpointIO", "CompileLayers", "LogConfig", "PreemptionCheckpoint", "RNGStateCheckpoint",
          "ResumableWandbLogger", "TransformerFSDPStrategy"]

__getattr__ = alias_package(globals(), dict(_MODULES, submit="lightning_musicgen.slurm.submit"),
                            {n: "lightning_musicgen.training" for n in _NAMES})
