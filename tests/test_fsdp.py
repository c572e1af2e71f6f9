"""FSDP (configs/trainer/fsdp.yaml): the strategy builds with one FSDP unit and one activation
checkpoint per transformer layer; Lightning runs FSDP on CUDA only, so the same wrapping
(the strategy's own FSDP arguments) is run here with torch on 2 CPU processes (gloo): one
optimizer step of the LM equals the unsharded step on the union of both ranks' batches."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

from conftest import ROOT
from lightning_musicgen.training import TransformerFSDPStrategy
from lightning_musicgen.lm.transformer import DecoderLayer


def fsdp_yaml_strategy() -> TransformerFSDPStrategy:
    strategy = yaml.safe_load((ROOT / "configs/trainer/fsdp.yaml").read_text())["trainer"]["strategy"]
    assert strategy["class_path"] == "lightning_musicgen.training.TransformerFSDPStrategy"
    return TransformerFSDPStrategy(**strategy["init_args"])


def test_fsdp_yaml_wraps_and_checkpoints_each_transformer_layer():
    from torch.distributed.fsdp import ShardingStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    s = fsdp_yaml_strategy()
    kw = s.fsdp_kwargs
    assert isinstance(kw["auto_wrap_policy"], ModuleWrapPolicy)
    assert set(kw["auto_wrap_policy"]._module_classes) == {DecoderLayer}
    assert kw["use_orig_params"] is True and kw["sharding_strategy"] == ShardingStrategy.FULL_SHARD
    policy = s.activation_checkpointing_kwargs["auto_wrap_policy"]
    assert set(policy._module_classes) == {DecoderLayer}
    assert TransformerFSDPStrategy(activation_checkpointing=False).activation_checkpointing_kwargs == {}


def test_fsdp_on_cpu_is_a_clear_error():
    from lightning.pytorch import Trainer
    from lightning.pytorch.demos.boring_classes import BoringModel
    trainer = Trainer(accelerator="cpu", devices=1, strategy=fsdp_yaml_strategy(), logger=False, max_steps=1)
    with pytest.raises(ValueError, match="needs CUDA GPUs .* use configs/trainer/ddp.yaml"):
        trainer.fit(BoringModel())


def test_bad_layer_class_is_one_line_error():
    with pytest.raises(ValueError, match=r"'lightning_musicgen.lm.transformer.NoSuchLayer' cannot be imported"):
        TransformerFSDPStrategy(layer_classes=["lightning_musicgen.lm.transformer.NoSuchLayer"])
    with pytest.raises(ValueError, match="not an nn.Module"):
        TransformerFSDPStrategy(layer_classes=["lightning_musicgen.training.fsdp.import_class"])


STEP_SCRIPT = textwrap.dedent("""
    import os, sys, torch, torch.distributed as dist, torch.multiprocessing as mp

    CFG = dict(n_q=4, card=32, dim=32, num_heads=4, num_layers=3, cross_attention=True)

    def batch(rank):
        from lightning_musicgen.lm.conditioners import LMConditions
        g = torch.Generator().manual_seed(100 + rank)
        codes = torch.randint(0, 32, (2, 4, 12), generator=g)
        cond = LMConditions(cross=torch.randn(2, 5, 32, generator=g), cross_mask=torch.ones(2, 5, dtype=torch.bool))
        return codes, cond

    def run(rank, out):
        from lightning.fabric.strategies.fsdp import _setup_activation_checkpointing
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP, FullStateDictConfig, StateDictType
        from lightning_musicgen.training import TransformerFSDPStrategy
        from lightning_musicgen.lm.model import MusicGenLM

        class LossOf(torch.nn.Module):
            # FSDP unshards the root parameters in forward(): the loss goes through it, as
            # Lightning routes training_step through its module wrapper
            def __init__(self, lm):
                super().__init__()
                self.lm = lm
            def forward(self, codes, cond):
                return self.lm.loss(codes, cond)[0]

        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["PORT"])
        dist.init_process_group("gloo", rank=rank, world_size=2)
        torch.manual_seed(0)
        model = MusicGenLM(**CFG)
        reference = MusicGenLM(**CFG)
        reference.load_state_dict(model.state_dict())
        strategy = TransformerFSDPStrategy(layer_classes=["lightning_musicgen.lm.DecoderLayer"])
        sharded = FSDP(LossOf(model), device_id=torch.device("cpu"), **strategy.fsdp_kwargs)
        _setup_activation_checkpointing(sharded, strategy.activation_checkpointing_kwargs)
        units = sum(isinstance(m, FSDP) for m in sharded.modules())
        wrapped = sum(isinstance(m, CheckpointWrapper) for m in sharded.modules())
        opt = torch.optim.AdamW(sharded.parameters(), lr=1e-2)
        codes, cond = batch(rank)
        loss = sharded(codes, cond)
        loss.backward()   # FSDP averages the gradients over ranks (reduce-scatter)
        opt.step()
        with FSDP.state_dict_type(sharded, StateDictType.FULL_STATE_DICT, FullStateDictConfig(rank0_only=True)):
            full = sharded.state_dict()
        if rank == 0:
            ref_opt = torch.optim.AdamW(reference.parameters(), lr=1e-2)
            losses = [reference.loss(*batch(r))[0] for r in range(2)]
            (sum(losses) / 2).backward()
            ref_opt.step()
            torch.save({"units": units, "wrapped": wrapped, "full": full, "ref": reference.state_dict(),
                        "loss": float(loss)}, out)
        dist.destroy_process_group()

    if __name__ == "__main__":
        mp.start_processes(run, args=(sys.argv[1],), nprocs=2, start_method="spawn")
""")


def test_fsdp_layer_wrapped_step_on_two_cpu_processes_equals_unsharded(tmp_path):
    script = tmp_path / "fsdp_step.py"
    script.write_text(STEP_SCRIPT)
    out = tmp_path / "result.pt"
    with socket.socket() as sock:   # a free port for the gloo rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, PORT=str(port), OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-4000:]
    r = torch.load(out, weights_only=False)
    assert r["units"] == 3 + 1                       # one FSDP unit per DecoderLayer + the root
    assert r["wrapped"] == 3                         # one activation checkpoint per DecoderLayer
    full = {k.replace("_checkpoint_wrapped_module.", "").removeprefix("lm."): v for k, v in r["full"].items()}
    assert set(full) == set(r["ref"])
    for key, ref in r["ref"].items():
        torch.testing.assert_close(full[key], ref, rtol=1e-5, atol=1e-6, msg=key)
    # and the step did train: AdamW moved every weight the loss reaches
    torch.manual_seed(0)
    from lightning_musicgen.lm.model import MusicGenLM
    init = MusicGenLM(n_q=4, card=32, dim=32, num_heads=4, num_layers=3, cross_attention=True).state_dict()
    assert not torch.equal(init["heads.0.weight"], full["heads.0.weight"])
