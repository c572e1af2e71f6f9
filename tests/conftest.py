import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Tests never reach a hub and never log online.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture
def root() -> Path:
    return ROOT


def run_cli(*args, cwd=None, env=None, timeout=600):
    """Run `python -m lightning_musicgen ARGS` in a subprocess; return CompletedProcess."""
    import subprocess
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "lightning_musicgen", *map(str, args)],
                          cwd=cwd or ROOT, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


_BATCH = r"""
import contextlib, io, json, sys, traceback
from lightning_musicgen.__main__ import main
results = []
for argv in json.loads(sys.stdin.read()):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        except BaseException:
            traceback.print_exc()
            code = 1
    results.append([code, out.getvalue(), err.getvalue()])
sys.__stdout__.write("\n@@results@@" + json.dumps(results))
"""


def run_cli_batch(argvs, cwd=None, timeout=900):
    """Run several `python -m lightning_musicgen ARGS` commands one after another in ONE fresh Python
    process (for parse-only commands such as `--print_config`, whose cost is mostly imports); -> one
    CompletedProcess per command with its exit status and what it printed."""
    import json
    import subprocess
    argvs = [[str(a) for a in argv] for argv in argvs]
    res = subprocess.run([sys.executable, "-c", _BATCH], input=json.dumps(argvs), cwd=cwd or ROOT,
                         capture_output=True, text=True, timeout=timeout)
    assert "@@results@@" in res.stdout, res.stderr[-4000:]
    results = json.loads(res.stdout.rsplit("@@results@@", 1)[1])
    return [subprocess.CompletedProcess(argv, code, out, err) for argv, (code, out, err) in zip(argvs, results)]


@pytest.fixture(autouse=True)
def _restore_environment():
    """Tests that run wandb or DDP in-process leave variables in os.environ (the wandb service
    address, LOCAL_RANK/WORLD_SIZE/MASTER_PORT); later subprocesses would inherit them, join a dead
    run or believe they are already a DDP rank. Each test starts from the environment it found."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def own_tmp():
    """A private temporary folder: pytest's shared basetemp keeps only the newest runs, and other
    pytest processes on the machine may rotate it away under a long-running subprocess."""
    path = Path(tempfile.mkdtemp(prefix="lmg-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def one_thread():
    """Small convs: one intra-op thread is fastest, and the test machine's cores are shared
    (modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
