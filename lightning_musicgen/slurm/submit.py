"""`python -m lightning_musicgen submit`: render an sbatch script for a training run and submit it.

    python -m lightning_musicgen submit --config configs/trainer/ddp.yaml --config configs/musicgen/small.yaml \\
        --nodes 2 --gpus-per-node 8 --partition gpu --time 72:00:00 [--dry-run] [-- --trainer.max_steps 500000]

One SLURM task per GPU (`--ntasks-per-node` = GPUs); `srun` starts the tasks and Lightning's
SLURMEnvironment reads ranks and the master address from SLURM. The job asks for
`--signal=USR1@90` and is requeueable: on the signal, PreemptionCheckpoint (configs/trainer/ddp.yaml)
writes last.ckpt and requeues; the requeued job runs the same command, which resumes with
`--ckpt_path last`. The W&B run id is derived from the SLURM job id, so it survives requeues.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import yaml

from lightning_musicgen.errors import RunError, SubmitError

TIME_RE = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$|^\d+-\d+$")
MEM_RE = re.compile(r"^\d+[KMGT]?$", re.IGNORECASE)
NAME_RE = re.compile(r"^[A-Za-z0-9_.+-]+$")
CLUSTER_KEYS = {"nodes", "gpus_per_node", "tasks_per_node", "cpus_per_task", "partition", "time", "account", "qos",
                "constraint", "mem", "job_name", "log_dir", "setup", "env", "signal_seconds", "python", "workdir",
                "exclusive"}


@dataclass
class JobSpec:
    """Everything the sbatch script is rendered from."""

    configs: list[str]
    nodes: int = 1
    gpus_per_node: int = 1
    tasks_per_node: int | None = None       # default: one task per GPU (1 on CPU)
    cpus_per_task: int = 8
    partition: str | None = None
    time: str = "24:00:00"
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    mem: str | None = None
    job_name: str | None = None
    log_dir: str = "runs/slurm"
    signal_seconds: int = 90
    exclusive: bool = False
    setup: list[str] = field(default_factory=list)          # shell lines before srun (module load, conda activate)
    env: dict[str, str] = field(default_factory=dict)
    python: str = sys.executable
    workdir: str = field(default_factory=os.getcwd)
    fit_args: list[str] = field(default_factory=list)       # extra LightningCLI arguments

    @property
    def ntasks_per_node(self) -> int:
        return self.tasks_per_node or max(1, self.gpus_per_node)

    @property
    def name(self) -> str:
        return self.job_name or Path(self.configs[-1]).stem

    def validate(self) -> None:
        if not self.configs:
            raise SubmitError("--config: at least one training config is required")
        for cfg in self.configs:
            if not Path(self.workdir, cfg).is_file():
                raise SubmitError(f"--config: file not found: {cfg}")
        if self.nodes < 1:
            raise SubmitError(f"--nodes: must be >= 1, got {self.nodes}")
        if self.gpus_per_node < 0:
            raise SubmitError(f"--gpus-per-node: must be >= 0, got {self.gpus_per_node}")
        if self.tasks_per_node is not None and self.tasks_per_node < 1:
            raise SubmitError(f"--tasks-per-node: must be >= 1, got {self.tasks_per_node}")
        if self.gpus_per_node and self.tasks_per_node and self.tasks_per_node != self.gpus_per_node:
            raise SubmitError(f"--tasks-per-node: Lightning needs one task per GPU "
                              f"({self.gpus_per_node}), got {self.tasks_per_node}")
        if self.cpus_per_task < 1:
            raise SubmitError(f"--cpus-per-task: must be >= 1, got {self.cpus_per_task}")
        if not TIME_RE.match(self.time):
            raise SubmitError(f"--time: expected [D-]HH:MM:SS, MM or D-HH, got {self.time!r}")
        if self.mem is not None and not MEM_RE.match(self.mem):
            raise SubmitError(f"--mem: expected a size such as 64G or 32000M, got {self.mem!r}")
        if not NAME_RE.match(self.name):
            raise SubmitError(f"--job-name: only letters, digits and _.+- allowed, got {self.name!r}")
        if self.signal_seconds < 1:
            raise SubmitError(f"--signal-seconds: must be >= 1, got {self.signal_seconds}")
        for key in self.env:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
                raise SubmitError(f"--env: invalid variable name {key!r}")


def fit_command(spec: JobSpec) -> list[str]:
    """The command every task runs (Lightning reads its rank from SLURM_PROCID)."""
    cmd = [spec.python, "-m", "lightning_musicgen", "fit"]
    for cfg in spec.configs:
        cmd += ["--config", cfg]
    cmd += [f"--trainer.num_nodes={spec.nodes}", f"--trainer.devices={spec.ntasks_per_node}",
            f"--trainer.accelerator={'gpu' if spec.gpus_per_node else 'cpu'}"]
    if not any(a.startswith("--ckpt_path") for a in spec.fit_args):
        cmd.append("--ckpt_path=last")   # no checkpoint yet: a warning and a fresh start
    return cmd + list(spec.fit_args)


def render_sbatch(spec: JobSpec) -> str:
    """The sbatch script for `spec` (validated first)."""
    spec.validate()
    log_dir = spec.log_dir if os.path.isabs(spec.log_dir) else os.path.join(spec.workdir, spec.log_dir)
    directives = [
        ("job-name", spec.name),
        ("nodes", spec.nodes),
        ("ntasks-per-node", spec.ntasks_per_node),
        ("cpus-per-task", spec.cpus_per_task),
        ("gpus-per-node", spec.gpus_per_node or None),
        ("partition", spec.partition), ("account", spec.account), ("qos", spec.qos),
        ("constraint", spec.constraint), ("mem", spec.mem),
        ("time", spec.time),
        ("output", f"{log_dir}/%x-%j.out"),
        ("error", f"{log_dir}/%x-%j.err"),
        ("open-mode", "append"),                      # a requeued job appends to the same logs
        ("signal", f"USR1@{spec.signal_seconds}"),    # warning before the time limit / preemption
        ("requeue", True),
        ("exclusive", spec.exclusive or None),
    ]
    lines = ["#!/bin/bash", "# rendered by `python -m lightning_musicgen submit`"]
    for key, value in directives:
        if value is None:
            continue
        lines.append(f"#SBATCH --{key}" if value is True else f"#SBATCH --{key}={value}")
    env = {
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": str(spec.cpus_per_task),
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
        "WANDB_RESUME": "allow",
        **spec.env,
    }
    lines += ["", "set -euo pipefail", f"cd {shlex.quote(spec.workdir)}", f"mkdir -p {shlex.quote(log_dir)}"]
    lines += [f"export {k}={shlex.quote(str(v))}" for k, v in env.items()]
    lines += list(spec.setup)
    # one W&B run (and one checkpoint folder) per job, kept across requeues: <cluster>-<job id>, array-aware
    run_id = shlex.join([spec.python, "-m", "lightning_musicgen.distributed"])
    lines.append(f'export WANDB_RUN_ID="${{WANDB_RUN_ID:-$({run_id})}}"')
    lines += ['echo "[submit] job $SLURM_JOB_ID restart ${SLURM_RESTART_COUNT:-0} on $SLURM_JOB_NODELIST '
              '($SLURM_NTASKS tasks) at $(date -u +%FT%TZ)"',
              "srun --kill-on-bad-exit=1 " + shlex.join(fit_command(spec))]
    return "\n".join(lines) + "\n"


def submit(script: str, log_dir: Path) -> str:
    """Write the script next to the logs, `sbatch` it, return the job id."""
    if shutil.which("sbatch") is None:
        raise RunError("sbatch: not found on PATH (use --dry-run to only print the script; "
                       "`make slurm-up` starts a local SLURM)")
    log_dir.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["sbatch", "--parsable"], input=script, capture_output=True, text=True)
    if out.returncode != 0:
        raise RunError(f"sbatch: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else 'failed'}")
    job_id = out.stdout.strip().split(";")[0]
    (log_dir / f"submit-{job_id}.sbatch").write_text(script)
    return job_id


def load_cluster_config(path: str) -> dict:
    """A configs/cluster/*.yaml file: defaults for the options above (keys as in JobSpec)."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise SubmitError(f"--cluster-config: file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise SubmitError(f"--cluster-config: {path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise SubmitError(f"--cluster-config: {path}: expected a mapping of options")
    unknown = sorted(set(data) - CLUSTER_KEYS)
    if unknown:
        raise SubmitError(f"--cluster-config: {path}: unknown key {unknown[0]!r} (known: {', '.join(sorted(CLUSTER_KEYS))})")
    return data


def spec_from_args(args, fit_args: list[str]) -> JobSpec:
    """The job of the command-line options `args` (attributes as in submit_command), over --cluster-config."""
    values = load_cluster_config(args.cluster_config) if args.cluster_config else {}
    env = {str(k): str(v) for k, v in (values.pop("env", None) or {}).items()}
    for item in args.env or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise SubmitError(f"--env: expected KEY=VALUE, got {item!r}")
        env[key] = value
    for key in CLUSTER_KEYS - {"env", "setup", "python", "workdir"}:
        given = getattr(args, key, None)
        if given is not None:
            values[key] = given
    for key in ("nodes", "gpus_per_node", "tasks_per_node", "cpus_per_task", "signal_seconds"):
        if values.get(key) is not None:
            try:
                values[key] = int(values[key])
            except (TypeError, ValueError):
                raise SubmitError(f"{args.cluster_config}: {key}: expected an integer, got {values[key]!r}") from None
    for key in ("time", "mem", "partition", "account", "qos", "constraint", "job_name", "log_dir"):
        if values.get(key) is not None:
            values[key] = str(values[key])
    setup = list(values.pop("setup", None) or []) + list(args.setup or [])
    return JobSpec(configs=list(args.config), env=env, setup=setup, fit_args=fit_args, **values)


def submit_command(*fit_args: str, config: list[str] = (), cluster_config: Optional[str] = None,
                   nodes: Optional[int] = None, gpus_per_node: Optional[int] = None,
                   tasks_per_node: Optional[int] = None, cpus_per_task: Optional[int] = None,
                   partition: Optional[str] = None, time: Optional[str] = None, account: Optional[str] = None,
                   qos: Optional[str] = None, constraint: Optional[str] = None, mem: Optional[str] = None,
                   job_name: Optional[str] = None, log_dir: Optional[str] = None,
                   signal_seconds: Optional[int] = None, exclusive: Optional[bool] = None,
                   setup: list[str] = (), env: list[str] = (), dry_run: bool = False) -> None:
    """Render and submit a SLURM (sbatch) training job.

    The script runs `fit` with one task per GPU through srun, is requeueable, asks for --signal=USR1@90
    and logs under --log-dir; it is submitted with sbatch (or printed with --dry-run). Arguments after
    `--` go to `fit` (e.g. -- --trainer.max_steps 1000). Options left out take their value from
    --cluster-config (configs/cluster/*.yaml), then the defaults.

    Args:
        fit_args: arguments for `fit`, given after `--`.
        config: training config(s) for `fit`, in order (repeatable).
        cluster_config: cluster defaults (partition, time, setup lines, env), a YAML file.
        nodes: number of nodes (default 1).
        gpus_per_node: GPUs per node = tasks per node (default 1; 0 = CPU).
        tasks_per_node: tasks per node for CPU runs (default: one per GPU).
        cpus_per_task: CPU cores per task (data loading workers; default 8).
        partition: SLURM partition.
        time: time limit, [D-]HH:MM:SS (default 24:00:00).
        account: SLURM account.
        qos: SLURM quality of service.
        constraint: node features, e.g. h100.
        mem: memory per node, e.g. 200G.
        job_name: job name (default: the last config's file name).
        log_dir: where SLURM writes %x-%j.out/.err and the script is kept (default runs/slurm).
        signal_seconds: send SIGUSR1 this long before the time limit (default 90).
        exclusive: do not share nodes.
        setup: shell line run before srun (repeatable).
        env: KEY=VALUE environment variable for the job (repeatable).
        dry_run: print the sbatch script, submit nothing.
    """
    options = SimpleNamespace(config=list(config), cluster_config=cluster_config, nodes=nodes,
                              gpus_per_node=gpus_per_node, tasks_per_node=tasks_per_node,
                              cpus_per_task=cpus_per_task, partition=partition, time=time, account=account, qos=qos,
                              constraint=constraint, mem=mem, job_name=job_name, log_dir=log_dir,
                              signal_seconds=signal_seconds, exclusive=exclusive, setup=list(setup), env=list(env))
    spec = spec_from_args(options, list(fit_args))
    script = render_sbatch(spec)
    if dry_run:
        print(script, end="")
        return
    log_dir = Path(spec.log_dir if os.path.isabs(spec.log_dir) else os.path.join(spec.workdir, spec.log_dir))
    job_id = submit(script, log_dir)
    print(f"submitted job {job_id}: logs {log_dir}/{spec.name}-{job_id}.out (script {log_dir}/submit-{job_id}.sbatch)")
