"""`submit`: the rendered sbatch script, one-line errors, and a real local SLURM (`make slurm-up`):
submit the demo LM -> 2 DDP tasks (srun) -> checkpoint -> `scontrol requeue` -> resume at the saved step ->
SIGUSR1 (the time-limit warning) -> step-boundary checkpoint + self-requeue -> resume there -> done."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, run_cli
from lightning_musicgen.slurm.submit import JobSpec, SubmitError, render_sbatch


IN_CI = os.environ.get("CI", "").lower() == "true"
needs_slurm = pytest.mark.skipif(shutil.which("sbatch") is None and not IN_CI,
                                 reason="no SLURM here (sbatch not on PATH): `make slurm-up` starts a local one; "
                                        "in CI (CI=true) this test runs and fails without it")
TRAIN = ["--config", "configs/trainer/default.yaml", "--config", "configs/trainer/ddp.yaml"]


def directives(script: str) -> dict[str, str]:
    out = {}
    for line in script.splitlines():
        m = re.match(r"#SBATCH --([a-z-]+)(?:=(.*))?$", line)
        if m:
            out[m.group(1)] = m.group(2) if m.group(2) is not None else True
    return out


def test_dry_run_renders_one_task_per_gpu_with_requeue_signal():
    out = run_cli("submit", *TRAIN, "--nodes", 2, "--gpus-per-node", 8, "--partition", "gpu", "--time", "2-00:00:00",
                  "--account", "acc", "--qos", "high", "--constraint", "h100", "--mem", "480G", "--env", "FOO=b r",
                  "--setup", "module load cuda", "--dry-run", "--", "--trainer.max_steps", "500")
    assert out.returncode == 0, out.stderr
    d = directives(out.stdout)
    assert d["nodes"] == "2" and d["ntasks-per-node"] == "8" and d["gpus-per-node"] == "8"
    assert d["partition"] == "gpu" and d["time"] == "2-00:00:00" and d["account"] == "acc"
    assert d["qos"] == "high" and d["constraint"] == "h100" and d["mem"] == "480G"
    assert d["signal"] == "USR1@90" and d["requeue"] is True and d["open-mode"] == "append"
    assert d["output"].endswith("runs/slurm/%x-%j.out") and d["error"].endswith("runs/slurm/%x-%j.err")
    assert d["job-name"] == "ddp"
    srun = [ln for ln in out.stdout.splitlines() if ln.startswith("srun ")]
    assert len(srun) == 1
    assert ("-m lightning_musicgen fit --config configs/trainer/default.yaml --config configs/trainer/ddp.yaml "
            "--trainer.num_nodes=2 --trainer.devices=8 --trainer.accelerator=gpu --ckpt_path=last "
            "--trainer.max_steps 500") in srun[0]
    assert "export FOO='b r'" in out.stdout and "module load cuda" in out.stdout
    assert out.stdout.index("module load cuda") < out.stdout.index("srun ")
    assert 'WANDB_RUN_ID="${WANDB_RUN_ID:-' in out.stdout
    syntax = subprocess.run(["bash", "-n"], input=out.stdout, text=True, capture_output=True)
    assert syntax.returncode == 0, syntax.stderr


def test_cpu_job_and_cluster_config(tmp_path):
    cluster = tmp_path / "c.yaml"
    cluster.write_text("partition: debug\ntime: '00:30:00'\nenv: {A: 1}\nsetup: ['echo hi']\ncpus_per_task: 3\n")
    spec_out = run_cli("submit", *TRAIN, "--cluster-config", cluster, "--gpus-per-node", 0, "--tasks-per-node", 2,
                       "--time", "10", "--dry-run")
    assert spec_out.returncode == 0, spec_out.stderr
    d = directives(spec_out.stdout)
    assert d["ntasks-per-node"] == "2" and "gpus-per-node" not in d and d["cpus-per-task"] == "3"
    assert d["partition"] == "debug" and d["time"] == "10"          # the command line wins over the file
    assert "--trainer.accelerator=cpu" in spec_out.stdout and "export A=1" in spec_out.stdout
    assert "export OMP_NUM_THREADS=3" in spec_out.stdout


@pytest.mark.parametrize("args, message", [
    (["--config", "missing.yaml"], "--config: file not found: missing.yaml"),
    ([*TRAIN, "--time", "3h"], "--time: expected"),
    ([*TRAIN, "--mem", "lots"], "--mem: expected a size"),
    ([*TRAIN, "--nodes", "0"], "--nodes: must be >= 1"),
    ([*TRAIN, "--gpus-per-node", "4", "--tasks-per-node", "2"], "one task per GPU"),
    ([*TRAIN, "--env", "NOEQUALS"], "--env: expected KEY=VALUE"),
    ([*TRAIN, "--cluster-config", "configs/nope.yaml"], "--cluster-config: file not found"),
    ([], "--config: at least one"),
])
def test_bad_input_is_one_line_exit_2(args, message):
    out = run_cli("submit", *args, "--dry-run")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out.stderr


def test_bad_cluster_config_key_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("partiton: gpu\n")
    out = run_cli("submit", *TRAIN, "--cluster-config", bad, "--dry-run")
    assert out.returncode == 2 and "unknown key 'partiton'" in out.stderr and str(bad) in out.stderr
    bad.write_text("nodes: two\n")
    out = run_cli("submit", *TRAIN, "--cluster-config", bad, "--dry-run")
    assert out.returncode == 2 and "nodes: expected an integer, got 'two'" in out.stderr


def test_shipped_cluster_configs_render():
    for cfg in sorted((ROOT / "configs/cluster").glob("*.yaml")):
        out = run_cli("submit", *TRAIN, "--cluster-config", cfg, "--dry-run")
        assert out.returncode == 0, (cfg, out.stderr)
        assert re.fullmatch(r"USR1@\d+", directives(out.stdout)["signal"])


def test_render_validates_spec():
    with pytest.raises(SubmitError, match="job-name"):
        render_sbatch(JobSpec(configs=["configs/trainer/ddp.yaml"], workdir=str(ROOT), job_name="a b"))


# ---------------------------------------------------------------------------------------------
# the real local SLURM
def _job_state(job: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    m = re.search(r"JobState=(\w+)", out)
    return m.group(1) if m else "UNKNOWN"


def _release(job: str) -> None:
    """A requeued job waits for a begin time (2 min by default); start it now."""
    subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], capture_output=True)


def _wait(predicate, timeout: float, what: str, log: Path | None = None, job: str | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if job and _job_state(job) in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            tail = log.read_text()[-4000:] if log and log.exists() else ""
            pytest.fail(f"job {job} ended ({_job_state(job)}) while waiting for {what}\n{tail}")
        time.sleep(0.5)
    tail = log.read_text()[-4000:] if log and log.exists() else ""
    pytest.fail(f"timed out waiting for {what}\n{tail}")


def _log_text(log_dir: Path, job: str) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(log_dir.glob(f"*-{job}.*")) if p.is_file())


@needs_slurm
def test_slurm_submit_requeue_and_signal_resume_at_saved_step(own_tmp):
    tmp_path = own_tmp
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    assert "UP" in ping.stdout, f"SLURM controller not answering (run `make slurm-up`): {ping.stdout} {ping.stderr}"
    from test_ddp import DEMO_LM, demo_lm_override
    steps = 45
    slow = "    - class_path: test_resume.SlowDown\n      init_args: {seconds: 0.2}\n"
    cfg = demo_lm_override(tmp_path, steps=steps, ckpt_every=3, devices=2, extra_callbacks=slow)
    log_dir = tmp_path / "logs"
    out = run_cli("submit", *TRAIN, "--config", DEMO_LM, "--config", cfg, "--gpus-per-node", 0, "--tasks-per-node", 2,
                  "--cpus-per-task", 1, "--time", "10", "--log-dir", log_dir, "--job-name", "lmg-test",
                  "--env", f"PYTHONPATH={ROOT / 'tests'}", "--env", "WANDB_MODE=offline", "--env", f"WANDB_DIR={tmp_path}",
                  "--", "--trainer.max_steps", steps)
    assert out.returncode == 0, out.stderr
    job = re.search(r"submitted job (\d+)", out.stdout).group(1)
    log = log_dir / f"lmg-test-{job}.err"
    try:
        cluster = re.search(r"ClusterName\s*=\s*(\S+)",
                            subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout)
        ckpt_dir = tmp_path / "lightning_musicgen" / f"{cluster.group(1) if cluster else 'slurm'}-{job}" / "checkpoints"

        def saved_step() -> int:
            try:
                return torch.load(ckpt_dir / "last.ckpt", weights_only=True)["global_step"]
            except (FileNotFoundError, RuntimeError, EOFError):
                return 0

        # 1) two tasks train and write checkpoints (every 3 steps)
        _wait(lambda: saved_step() >= 6, 240, "a checkpoint of the first attempt", log, job)
        text = _log_text(log_dir, job)
        assert "restart 0" in text and "(2 tasks)" in text
        assert "MEMBER: 1/2" in text and "MEMBER: 2/2" in text, text[-3000:]   # Lightning's DDP ranks

        # 2) an external requeue (preemption without warning): SLURM kills the tasks
        subprocess.run(["scontrol", "requeue", job], check=True)
        _wait(lambda: _job_state(job) == "PENDING", 60, "the requeued job to be pending", log, job)
        first = saved_step()
        _release(job)
        _wait(lambda: f"train start: global_step={first} " in _log_text(log_dir, job), 240,
              f"the requeued job to resume at step {first}", log, job)
        assert "restart 1" in _log_text(log_dir, job)

        # 3) the time-limit warning: SIGUSR1 to the tasks -> checkpoint at a step boundary, self-requeue
        _wait(lambda: saved_step() >= first + 3, 120, "progress after the resume", log, job)
        subprocess.run(["scancel", "--signal=USR1", job], check=True)
        m = _wait(lambda: re.search(r"signal SIGUSR1: saved \S+ at global_step=(\d+)", _log_text(log_dir, job)),
                  120, "the preemption checkpoint", log, job)
        second = int(m.group(1))
        assert second > first
        _wait(lambda: "requeued SLURM job" in _log_text(log_dir, job), 60, "the self-requeue", log, job)
        _wait(lambda: _job_state(job) == "PENDING", 60, "the job to be pending again", log, job)
        assert saved_step() == second
        _release(job)
        _wait(lambda: f"train start: global_step={second} " in _log_text(log_dir, job), 240,
              f"the job to resume at step {second}", log, job)
        assert "restart 2" in _log_text(log_dir, job)

        # 4) it finishes the run
        _wait(lambda: _job_state(job) == "COMPLETED", 240, "the job to complete", log, job)
        assert saved_step() == steps
        # the external requeue SIGTERMs attempt 1 (Lightning raises SIGTERMException); the last is clean
        last_attempt = _log_text(log_dir, job).split("restart 2", 1)[1]
        assert "Traceback" not in last_attempt and "Error" not in last_attempt, last_attempt[-3000:]
    finally:
        if _job_state(job) not in ("COMPLETED", "UNKNOWN"):
            subprocess.run(["scancel", job])
