"""LM training equals audiocraft 1.3.0's solver on the same weights and batches.

20 steps of our MusicGenModule through a Lightning Trainer (its loss with `keep_only_valid_steps`,
the trainer's gradient clipping, AdamW with weight decay on every parameter, the warmup-cosine
schedule) against 20 calls of audiocraft's `MusicGenSolver.run_step` (its `compute_predictions`,
cross-entropy with its mask, clipping, AdamW from its builders, its cosine scheduler) on an
audiocraft `LMModel` holding the same weights. Both are conditioned on the same precomputed
cross-attention tensors (audiocraft's `condition_tensors`), as the conditioners are not part of
the comparison. audiocraft's attention is its own ("custom", as in MusicGen) with the plain torch
kernel (`memory_efficient=False`); xformers' `ops.unbind` is substituted by `torch.unbind`.
"""
import contextlib
import types

import pytest
import torch
from torch import nn

from audiocraft_ref import import_audiocraft
from lightning_musicgen.lm.conditioners import LMConditions
from lightning_musicgen.lm.module import MusicGenModule

pytestmark = pytest.mark.usefixtures("one_thread")

K, CARD, DIM, HEADS, LAYERS = 4, 16, 16, 2, 2
B, T, COND_LEN, STEPS, WARMUP, LR = 3, 10, 4, 20, 5, 3e-3
CLIP = 0.4  # gradient norms of this tiny model are about 0.38-0.47: the clipping acts
PATTERNS = {"delay": ("DelayedPatternProvider", {"delays": [0, 1, 2, 3]}),
            "parallel": ("ParallelPatternProvider", {}),
            "partial_delay": ("DelayedPatternProvider", {"delays": [0, 1, 1, 1]})}


def load_audiocraft() -> types.SimpleNamespace:
    names = {"lm": "audiocraft.models.lm", "patterns": "audiocraft.modules.codebooks_patterns",
             "conditioners": "audiocraft.modules.conditioners", "builders": "audiocraft.solvers.builders",
             "musicgen": "audiocraft.solvers.musicgen"}
    # xformers is CUDA-only: its `ops.unbind` (audiocraft's custom attention) is torch.unbind
    mods = import_audiocraft(*names.values(), substitutes={"xformers.ops.unbind": torch.unbind})
    return types.SimpleNamespace(**dict(zip(names, mods)))


@pytest.fixture(scope="module")
def ac():
    return load_audiocraft()


class PrecomputedConditions(MusicGenModule):
    """Our module, conditioned on the batch's cross-attention tensors instead of captions."""

    def conditions(self, batch):
        return LMConditions(cross=batch["cross"], cross_mask=batch["cross_mask"])


def _their_lm(ac, pattern: str, interpolated: list[str] = ()):
    provider_name, kw = PATTERNS[pattern]
    provider = getattr(ac.patterns, provider_name)(K, **({"delays": kw["delays"]} if kw else {}))
    return ac.lm.LMModel(provider, ac.conditioners.ConditioningProvider({}),
                         ac.conditioners.ConditionFuser(
                             {"cross": ["description"], "prepend": [], "sum": [],
                              "input_interpolate": list(interpolated)}), n_q=K, card=CARD, dim=DIM,
                         num_heads=HEADS, hidden_scale=4, norm="layer_norm", norm_first=True, bias_proj=False,
                         cross_attention=True, num_layers=LAYERS, bias_ff=False, bias_attn=False, causal=True,
                         activation="gelu", positional_embedding="sin", dropout=0.0, memory_efficient=False,
                         custom=True)


def _pairs(ours: nn.Module, theirs: nn.Module):
    """(our tensor view, their tensor) for every LM weight; audiocraft's cross-attention in_proj
    stacks our q and kv projections."""
    t = dict(theirs.named_parameters())
    for k in range(K):
        yield ours.emb[k].weight, t[f"emb.{k}.weight"]
        yield ours.heads[k].weight, t[f"linears.{k}.weight"]
    for i, layer in enumerate(ours.transformer.layers):
        p = f"transformer.layers.{i}."
        yield layer.self_attn.qkv.weight, t[p + "self_attn.in_proj_weight"]
        yield layer.self_attn.out.weight, t[p + "self_attn.out_proj.weight"]
        yield layer.cross_attn.q.weight, t[p + "cross_attention.in_proj_weight"][:DIM]
        yield layer.cross_attn.kv.weight, t[p + "cross_attention.in_proj_weight"][DIM:]
        yield layer.cross_attn.out.weight, t[p + "cross_attention.out_proj.weight"]
        yield layer.ffn[0].weight, t[p + "linear1.weight"]
        yield layer.ffn[2].weight, t[p + "linear2.weight"]
        for ours_norm, their_norm in ((layer.norm_self, "norm1"), (layer.norm_cross, "norm_cross"),
                                      (layer.norm_ffn, "norm2")):
            yield ours_norm.weight, t[p + their_norm + ".weight"]
            yield ours_norm.bias, t[p + their_norm + ".bias"]
    yield ours.out_norm.weight, t["out_norm.weight"]
    yield ours.out_norm.bias, t["out_norm.bias"]


def _audiocraft_solver(ac, model):
    """The state `MusicGenSolver.run_step` reads, built with audiocraft's builders."""
    from omegaconf import OmegaConf
    cfg = OmegaConf.create({
        "fsdp": {"use": False},
        "optim": {"lr": LR, "optimizer": "adamw", "max_norm": CLIP, "eager_sync": True,
                  "adam": {"betas": [0.9, 0.95], "weight_decay": 0.1, "eps": 1e-8}},
        "schedule": {"lr_scheduler": "cosine", "cosine": {"warmup": WARMUP, "lr_min_ratio": 0.0, "cycle_length": 1.0}},
    })
    solver = types.SimpleNamespace(cfg=cfg, model=model, device="cpu", is_training=True, scaler=None,
                                   autocast=contextlib.nullcontext(),
                                   deadlock_detect=types.SimpleNamespace(update=lambda stage: None))
    solver.optimizer = ac.builders.get_optimizer(ac.builders.get_optim_parameter_groups(model), cfg.optim)
    solver.lr_scheduler = ac.builders.get_lr_scheduler(solver.optimizer, cfg.schedule, STEPS)
    solver._compute_cross_entropy = types.MethodType(ac.musicgen.MusicGenSolver._compute_cross_entropy, solver)
    return solver


def train_both(ac, pattern: str, tmp, **module_overrides) -> dict:
    """STEPS steps of audiocraft's solver and of our module (its recipe options, or
    `module_overrides`) from the same weights and batches. Returns the largest per-tensor relative
    difference of the final weights ("max_rel_diff": value, tensor shape), how far training moved
    the weights ("rel_moved": norm of the change over the norm of the initial weights, all tensors
    together), audiocraft's gradient norms and our module's step count."""
    import lightning as L

    torch.manual_seed(0)
    _, kw = PATTERNS[pattern]
    options = dict(lr=LR, betas=(0.9, 0.95), weight_decay=0.1, weight_decay_on="all", keep_only_valid_steps=True,
                   warmup_steps=WARMUP, total_steps=STEPS, min_lr_ratio=0.0)
    module = PrecomputedConditions(
        lm={"n_q": K, "card": CARD, "dim": DIM, "num_heads": HEADS, "num_layers": LAYERS,
            "pattern": "delay" if kw else "parallel", "pattern_kwargs": kw},
        conditioner={"text": {"name": "minilm"}, "cfg_dropout": 0.0}, **{**options, **module_overrides})
    model = _their_lm(ac, pattern)
    with torch.no_grad():
        for ours, theirs in _pairs(module.lm, model):
            theirs.copy_(ours)
    initial = [ours.detach().clone() for ours, _ in _pairs(module.lm, model)]

    g = torch.Generator().manual_seed(1)
    batches = [{"codes": torch.randint(0, CARD, (B, K, T), generator=g), "mask": torch.ones(B, T, dtype=torch.bool),
                "text": [""] * B, "cross": torch.randn(B, COND_LEN, DIM, generator=g),
                "cross_mask": torch.ones(B, COND_LEN, dtype=torch.bool)} for _ in range(STEPS)]

    solver = _audiocraft_solver(ac, model)
    model.train()
    grad_norms = []
    for i, batch in enumerate(batches):
        prepared = ({"description": (batch["cross"], batch["cross_mask"].float())}, batch["codes"],
                    batch["mask"][:, None, :].expand(B, K, T))
        solver._prepare_tokens_and_attributes = lambda batch, check=False, prepared=prepared: prepared
        metrics = ac.musicgen.MusicGenSolver.run_step(solver, i, batch, {})
        grad_norms.append(float(metrics["grad_norm"]))

    trainer = L.Trainer(max_steps=STEPS, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, gradient_clip_val=CLIP, default_root_dir=tmp)
    trainer.fit(module, torch.utils.data.DataLoader(batches, batch_size=None))

    errors, moved, size = [], 0.0, 0.0
    for (ours, theirs), start in zip(_pairs(module.lm, model), initial):
        ours, theirs = ours.detach(), theirs.detach()
        errors.append((float((ours - theirs).norm() / theirs.norm()), tuple(ours.shape)))
        moved, size = moved + float((theirs - start).norm() ** 2), size + float(start.norm() ** 2)
    return {"max_rel_diff": max(errors), "rel_moved": (moved / size) ** 0.5, "grad_norms": grad_norms,
            "global_step": module.global_step}


@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_twenty_lm_training_steps_equal_audiocrafts(ac, pattern, own_tmp):
    result = train_both(ac, pattern, own_tmp)
    assert max(result["grad_norms"]) > CLIP  # the clipping acted
    assert result["global_step"] == STEPS
    err, shape = result["max_rel_diff"]
    assert err <= 1e-5, f"{pattern}: relative difference {err:.2e} on a tensor of shape {shape}"


def test_paper_lm_configs_select_audiocrafts_recipe(root):
    import yaml
    for path in sorted((root / "configs/musicgen").glob("*.yaml")):
        args = yaml.safe_load(path.read_text())["model"]["init_args"]
        assert args["keep_only_valid_steps"] is True and args["weight_decay_on"] == "all", path.name
        assert (args["lr"], args["weight_decay"], tuple(args["betas"])) == (1e-4, 0.1, (0.9, 0.95)), path.name


def test_weight_decay_on_all_decays_every_parameter():
    from lightning_musicgen.optim import decay_groups
    net = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    decay, no_decay = decay_groups(net.named_parameters(), 0.1, "all")
    assert len(decay["params"]) == 4 and not no_decay["params"]
    decay, no_decay = decay_groups(net.named_parameters(), 0.1, "matrices")
    assert len(decay["params"]) == 1 and len(no_decay["params"]) == 3
    with pytest.raises(ValueError, match="weight_decay_on"):
        decay_groups(net.named_parameters(), 0.1, "some")
    with pytest.raises(ValueError, match="weight_decay_on"):
        MusicGenModule(lm={"n_q": K, "card": CARD, "dim": DIM, "num_heads": HEADS, "num_layers": 1},
                       conditioner={"text": {"name": "minilm"}}, weight_decay_on="vectors")


@pytest.mark.parametrize("chroma_frames", [3, 7, 40])
def test_time_aligned_melody_equals_audiocrafts_input_interpolate(ac, chroma_frames):
    """melody fuse `input_interpolate`: the chroma embedding stretched (nearest) over the sequence and
    added to the token embeddings gives audiocraft's logits (its ConditionFuser op of that name)."""
    from lightning_musicgen.lm.model import MusicGenLM
    torch.manual_seed(0)
    ours = MusicGenLM(n_q=K, card=CARD, dim=DIM, num_heads=HEADS, num_layers=LAYERS).eval()
    theirs = _their_lm(ac, "delay", interpolated=["self_wav"]).eval()
    with torch.no_grad():
        for mine, their in _pairs(ours, theirs):
            their.copy_(mine)
    g = torch.Generator().manual_seed(2)
    seq = torch.randint(0, CARD + 1, (B, K, 12), generator=g)
    cross, chroma = torch.randn(B, COND_LEN, DIM, generator=g), torch.randn(B, chroma_frames, DIM, generator=g)
    ones = lambda t: torch.ones(t.shape[:2], dtype=torch.bool)  # noqa: E731
    with torch.no_grad():
        want = theirs(seq, [], {"description": (cross, ones(cross)), "self_wav": (chroma, ones(chroma))})
        got = ours(seq, LMConditions(cross=cross, cross_mask=ones(cross), summed=chroma))
        plain = ours(seq, LMConditions(cross=cross, cross_mask=ones(cross)))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got - plain).abs().max() > 1e-2  # the chroma changes the logits
