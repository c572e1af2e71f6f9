"""EvaluateGeneration under 2-process ddp_spawn equals the single-process values.

Both runs happen in fresh interpreters (tests/ddp_evaluate_generation_run.py): spawning DDP
children from a pytest process that had already run in-process W&B runs aborted a child now and
then (SIGABRT), so the test must not depend on what ran before it.
"""
import json
import subprocess
import sys

import pytest

from conftest import ROOT

WORKER = ROOT / "tests" / "ddp_evaluate_generation_run.py"


def _run(tmp_path, mode: str) -> dict:
    proc = subprocess.run([sys.executable, str(WORKER), str(tmp_path), mode], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"{mode} run failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_evaluate_generation_same_values_in_two_process_ddp(tmp_path):
    """Under 2-process DDP each rank generates for half of the prompts; the metric states are summed,
    so the logged values equal the single-process ones."""
    single, ddp = _run(tmp_path, "single"), _run(tmp_path, "ddp")
    assert single["row"].keys() == ddp["row"].keys() and len(single["row"]) == 5
    for key, value in single["row"].items():
        assert ddp["row"][key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    assert ddp["wavs"] == 2  # rank 0 only: 1 generated + 1 reference
