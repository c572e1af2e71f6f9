"""compat.py against the installed torch and Lightning: every wrapper of a private name is exercised, so an
upgrade that renames or changes one fails here; and the installed versions satisfy setup.cfg's ranges."""
from __future__ import annotations

import configparser
import multiprocessing
import signal
import time
from importlib.metadata import version
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.strategies import DDPStrategy
from packaging.requirements import Requirement
from packaging.version import Version

from lightning_musicgen import compat

SETUP_CFG = Path(__file__).resolve().parents[1] / "setup.cfg"


def declared_requirements() -> dict[str, Requirement]:
    cfg = configparser.ConfigParser()
    cfg.read(SETUP_CFG)
    lines = [ln.strip() for ln in cfg["options"]["install_requires"].splitlines() if ln.strip()]
    return {req.name: req for req in map(Requirement, lines)}


@pytest.mark.parametrize("name", ["torch", "lightning"])
def test_installed_versions_are_in_the_declared_ranges(name):
    req = declared_requirements()[name]
    assert any(s.operator == "<" for s in req.specifier), f"setup.cfg: {name} has no tested upper bound"
    installed = Version(version(name))
    assert req.specifier.contains(installed, prereleases=True), f"{name} {installed} not in setup.cfg's {req}"


def test_cpu_probes_use_names_this_torch_has():
    assert hasattr(torch.cpu, "_is_avx512_bf16_supported") and hasattr(torch.cpu, "_is_amx_tile_supported")
    assert isinstance(compat.cpu_has_bf16_instructions(), bool)
    assert compat.cpu_capability() in {"DEFAULT", "AVX2", "AVX512", "NO AVX", "ZVECTOR", "VSX", "SVE256", "SVE"} \
        or compat.cpu_capability().startswith(("AVX", "SVE", "NEON"))


def test_onednn_packed_linear_equals_linear():
    if not compat.onednn_linear_kernels_available(torch.float32):
        assert not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        pytest.skip("this torch build has no oneDNN packed linear kernels")
    torch.manual_seed(0)
    x, w, b = torch.randn(3, 16), torch.randn(8, 16), torch.randn(8)
    packed = compat.onednn_pack_linear_weight(w, 3)
    torch.testing.assert_close(compat.onednn_linear(x, packed, b), torch.nn.functional.linear(x, w, b))


def test_foreach_lerp_moves_each_target_towards_its_source():
    targets = [torch.zeros(3), torch.full((2, 2), 4.0)]
    sources = [torch.ones(3), torch.zeros(2, 2)]
    compat.foreach_lerp_(targets, sources, 0.25)
    torch.testing.assert_close(targets[0], torch.full((3,), 0.25))
    torch.testing.assert_close(targets[1], torch.full((2, 2), 3.0))


class RecordLoopState(L.Callback):
    def __init__(self):
        self.accumulating, self.processed = [], []

    def on_before_backward(self, trainer, pl_module, loss):
        self.accumulating.append(compat.is_accumulating(trainer))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.processed.append((batch_idx, compat.batches_processed_in_epoch(trainer)))


def test_fit_loop_state_accumulation_and_processed_batches(tmp_path):
    record = RecordLoopState()
    trainer = L.Trainer(default_root_dir=tmp_path, accelerator="cpu", devices=1, max_epochs=2, limit_train_batches=4,
                        limit_val_batches=0, accumulate_grad_batches=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[record])
    trainer.fit(BoringModel())
    assert record.accumulating == [True, False, True, False] * 2
    assert record.processed == [(i, i + 1) for i in range(4)] * 2  # counted per epoch, after the backward


def test_attached_trainer_and_ddp_kwargs():
    module = BoringModel()
    assert compat.attached_trainer(module) is None
    trainer = L.Trainer(accelerator="cpu", devices=2, logger=False,
                        strategy=DDPStrategy(process_group_backend="gloo", find_unused_parameters=True))
    module.trainer = trainer
    assert compat.attached_trainer(module) is trainer
    assert compat.ddp_kwargs(trainer.strategy) == {"find_unused_parameters": True}
    assert compat.ddp_kwargs(L.Trainer(accelerator="cpu", devices=1, logger=False).strategy) is None


def _sleep_until_killed(ready) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the handler a Trainer of an earlier test installed
    ready.set()
    time.sleep(60)


def test_spawn_launcher_is_recognised_and_forwards_signals():
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False)
    assert compat.launched_by_spawn(trainer.strategy)
    assert not compat.launched_by_spawn(L.Trainer(accelerator="cpu", devices=1, logger=False).strategy)
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    child = context.Process(target=_sleep_until_killed, args=(ready,))
    child.start()
    try:
        assert ready.wait(60)
        trainer.strategy.launcher.procs = [child]
        compat.forward_signal_to_launched_processes(trainer, signal.SIGTERM)
        child.join(30)
        assert child.exitcode == -signal.SIGTERM
    finally:
        if child.is_alive():
            child.kill()
            child.join()


def test_setup_activation_checkpointing_wraps_the_policy_modules():
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    compat.setup_activation_checkpointing(model, {"auto_wrap_policy": ModuleWrapPolicy({torch.nn.Linear})})
    assert [type(m).__name__ for m in model] == ["CheckpointWrapper", "ReLU", "CheckpointWrapper"]
    x = torch.randn(3, 4, requires_grad=True)
    model(x).sum().backward()  # still trains through the checkpointed layers
    assert x.grad is not None and all(p.grad is not None for p in model.parameters())


def test_skip_checkpoint_saves_at_this_step_holds_model_checkpoint_back(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    class HoldStep2(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 2:
                compat.skip_checkpoint_saves_at_this_step(trainer)

    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1, save_last=True)
    trainer = L.Trainer(default_root_dir=tmp_path, accelerator="cpu", max_steps=3, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[HoldStep2(), ckpt])
    trainer.fit(BoringModel())
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["epoch=0-step=1.ckpt", "epoch=0-step=3.ckpt",
                                                                "last.ckpt"]
