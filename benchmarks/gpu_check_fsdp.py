"""GPU check: MusicGenModule steps with configs/trainer/fsdp.yaml's strategy on one GPU against plain training
(fp32; relative difference of the weight updates).
"""
from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a clone
    sys.path.insert(0, str(ROOT))

from gpu_check_codec import lightning_trainer  # noqa: E402
from gpu_check_setup import Check, Context, LMSize, TEXTS, free_memory  # noqa: E402
from side_by_side import relative  # noqa: E402


def _normalise(key: str) -> str:
    for part in ("_checkpoint_wrapped_module.", "_fsdp_wrapped_module.", "_orig_mod."):
        key = key.replace(part, "")
    return key


def fsdp_module(ctx: Context, size: LMSize):
    from lightning_musicgen.lm.module import MusicGenModule
    torch.manual_seed(0)
    module = MusicGenModule(lm=size.lm_kwargs(min(size.layers, ctx.plan.equal_layers)),
                            conditioner={"text": {"name": "minilm"}, "cfg_dropout": 0.0},
                            lr=1e-4, warmup_steps=0, total_steps=ctx.plan.fsdp_steps)
    return module


def fsdp_batches(ctx: Context, size: LMSize) -> list[dict]:
    g = torch.Generator().manual_seed(3)
    return [{"codes": torch.randint(0, size.card, (ctx.plan.fsdp_batch, size.n_q, ctx.plan.fsdp_frames), generator=g),
             "text": TEXTS[i % 4: i % 4 + ctx.plan.fsdp_batch]} for i in range(ctx.plan.fsdp_steps)]


def fsdp_strategy_args() -> dict:
    import yaml
    strategy = yaml.safe_load((ROOT / "configs/trainer/fsdp.yaml").read_text())["trainer"]["strategy"]
    return strategy["init_args"]


def trained_with_lightning(ctx: Context, module, batches: list[dict], strategy=None) -> tuple[list[float], dict]:
    from lightning.pytorch.callbacks import Callback
    from torch.utils.data import DataLoader
    losses, state = [], {}

    class Record(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

        def on_train_end(self, trainer, pl_module):  # before the strategy's teardown
            state.update(trainer.strategy.lightning_module_state_dict())

    kwargs = {} if strategy is None else {"strategy": strategy}
    trainer = lightning_trainer(ctx, "32-true", len(batches), [Record()], gradient_clip_val=None, **kwargs)
    trainer.fit(module, DataLoader(batches, batch_size=None))
    return losses, {_normalise(k): v.detach().cpu() for k, v in state.items()}


def trained_with_torch_fsdp(ctx: Context, module, batches: list[dict]) -> tuple[list[float], dict]:
    """CPU: Lightning runs FSDP on CUDA only, so wrap the same module with torch's FSDP and the
    strategy's own arguments (auto-wrap and activation checkpointing per DecoderLayer) on a
    one-process gloo group, and run Lightning's step order by hand."""
    import socket

    import torch.distributed as dist
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    from lightning_musicgen.compat import setup_activation_checkpointing
    from lightning_musicgen.training import TransformerFSDPStrategy
    strategy = TransformerFSDPStrategy(**fsdp_strategy_args())

    class Step(torch.nn.Module):  # FSDP unshards the root parameters in forward: the step goes through it
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, batch):
            codes, mask = self.m.tokens(batch)
            return self.m.lm.loss(codes, self.m.conditions(batch), mask)[0]

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # FSDP's notes about frozen parameters in one flat parameter
            wrapped = FSDP(Step(module), device_id=torch.device("cpu"), **strategy.fsdp_kwargs)
        setup_activation_checkpointing(wrapped, strategy.activation_checkpointing_kwargs)
        config = module.configure_optimizers()
        opt, sched = config["optimizer"], config["lr_scheduler"]["scheduler"]
        losses = []
        for batch in batches:
            loss = wrapped(batch)
            loss.backward()
            opt.step()
            opt.zero_grad()
            sched.step()
            losses.append(float(loss.detach()))
        with FSDP.state_dict_type(wrapped, StateDictType.FULL_STATE_DICT, FullStateDictConfig(rank0_only=True)):
            state = wrapped.state_dict()
    finally:
        dist.destroy_process_group()
    return losses, {_normalise(k).removeprefix("m."): v.detach().cpu() for k, v in state.items()}


def check_fsdp(ctx: Context) -> list[Check]:
    from lightning_musicgen.training import TransformerFSDPStrategy
    size, device = ctx.plan.sizes["small"], ctx.device
    batches = fsdp_batches(ctx, size)
    init = {k: v.detach().cpu().clone() for k, v in fsdp_module(ctx, size).state_dict().items()}
    plain_losses, plain = trained_with_lightning(ctx, fsdp_module(ctx, size), batches)
    free_memory(device)
    if device.type == "cuda":
        how = "Lightning Trainer with configs/trainer/fsdp.yaml's TransformerFSDPStrategy on 1 GPU (NCCL)"
        fsdp_losses, sharded = trained_with_lightning(ctx, fsdp_module(ctx, size), batches,
                                                      TransformerFSDPStrategy(**fsdp_strategy_args()))
    else:
        how = "torch FSDP with the strategy's wrapping on a 1-process gloo group (Lightning's FSDP is CUDA-only)"
        fsdp_losses, sharded = trained_with_torch_fsdp(ctx, fsdp_module(ctx, size), batches)
    free_memory(device)
    trainable = [k for k in plain if k.startswith("lm.") or k.startswith("conditioner.text.proj.")]
    missing = [k for k in trainable if k not in sharded]
    if missing:
        return [Check("fsdp_vs_plain", "FAIL", f"{how}: {len(missing)} weights missing from the FSDP state dict, "
                      f"e.g. {missing[:3]}")]
    diff = math.sqrt(sum(float((sharded[k].float() - plain[k].float()).pow(2).sum()) for k in trainable))
    update = math.sqrt(sum(float((plain[k].float() - init[k].float()).pow(2).sum()) for k in trainable))
    rel_update = diff / max(update, 1e-30)
    loss_rel = max(relative(a, b) for a, b in zip(fsdp_losses, plain_losses))
    ok = len(fsdp_losses) == len(plain_losses) == ctx.plan.fsdp_steps and loss_rel <= 1e-4 \
        and rel_update <= 1e-3 and update > 0
    return [Check("fsdp_vs_plain", "PASS" if ok else "FAIL",
                  f"{len(plain_losses)} steps fp32: losses relative difference {loss_rel:.1e} (<= 1e-4), weight "
                  f"updates relative difference {rel_update:.1e} (<= 1e-3); {how}; world size 1, so FSDP takes "
                  f"its NO_SHARD path (wrapping, checkpointing, flat parameters; sharding needs >= 2 GPUs)",
                  dict(how=how, losses_plain=plain_losses, losses_fsdp=fsdp_losses, loss_relative_difference=loss_rel,
                       update_norm=update, update_relative_difference=rel_update))]
