"""Where this process runs: reductions over the torch.distributed ranks, and the SLURM job it belongs to.

- `mean_across_ranks(t)`: the element-wise mean of `t` over all ranks (a new tensor; `t` itself when
  torch.distributed is not initialised or has one rank), so every replica takes the same decision.
- `slurm_job_id()`: `SLURM_JOB_ID`, or `ARRAYJOB_TASK` for an array task (what `scontrol requeue` takes);
  `slurm_run_id()`: `<cluster>-<job id>`, the W&B run id of a SLURM job (stable across requeues).
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Optional

import torch


def is_distributed() -> bool:
    """torch.distributed is initialised with more than one rank."""
    return torch.distributed.is_available() and torch.distributed.is_initialized() \
        and torch.distributed.get_world_size() > 1


def mean_across_ranks(t: torch.Tensor) -> torch.Tensor:
    """Element-wise mean of `t` over the ranks (all-reduce of a detached copy, divided by the world size)."""
    if not is_distributed():
        return t
    t = t.detach().clone()
    torch.distributed.all_reduce(t)
    return t.div_(torch.distributed.get_world_size())


def slurm_job_id(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """`SLURM_JOB_ID`, or `ARRAYJOB_TASK` for an array task; None outside SLURM."""
    env = os.environ if environ is None else environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID") or None


def slurm_run_id(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """`<cluster>-<job id>` (cluster name from `SLURM_CLUSTER_NAME`, default `slurm`, reduced to
    [A-Za-z0-9-]); None outside SLURM."""
    env = os.environ if environ is None else environ
    job = slurm_job_id(env)
    if not job:
        return None
    cluster = re.sub(r"[^A-Za-z0-9]+", "-", env.get("SLURM_CLUSTER_NAME", "slurm")).strip("-") or "slurm"
    return f"{cluster}-{job}"


if __name__ == "__main__":  # the sbatch script asks for the run id this way
    print(slurm_run_id() or "")
