"""`EvaluateGeneration`: generate from fixed validation prompts during training and log FAD, KL,
CLAP score and chroma cosine (`eval/...`) with audio, mel and chroma images.

What the LightningModule must offer (one of):
- `generator(use_ema: bool = True)` returning an object with `generate(descriptions, duration,
  melody=None, cfg_coef=..., top_k=..., top_p=..., temperature=..., seed=...) -> wav [B, C, T]`,
  `sample_rate`, `has_melody` and (for token-only validation data) `decode(codes) -> wav`, and
  that leaves the training modules' modes and weights as they were; `lightning_musicgen.MusicGen`
  is such an object;
- or MusicGenModule's attributes `lm`, `conditioner`, `codec` (and `ema`, a `lightning_musicgen.ema.EMA`
  of `lm`, when EMA is on), from which a `MusicGen` is built around the live weights: it generates
  with dropout off and leaves every module's device, dtype, weights and training flags as they were.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

from lightning_musicgen.audio import convert_channels, resample
from lightning_musicgen.errors import ConfigError, InputError
from lightning_musicgen.metrics import CLAPScore, ChromaCosine, FrechetAudioDistance, KLDivergence
from lightning_musicgen.media import chroma_image, log_media, log_scalars, mel_image
from lightning_musicgen.training.periodic import PeriodicEvaluation, validation_batches

# metric name -> (kind, embedder); logged as eval/<name>
METRICS = {
    "fad_vggish": ("fad", "vggish"), "fad_panns": ("fad", "panns"), "fad_clap": ("fad", "clap"),
    "fad_musicnn_vgg": ("fad", "musicnn_vgg"), "kl_panns": ("kl", "panns"), "kl_musicnn_vgg": ("kl", "musicnn_vgg"),
    "clap": ("clap", "clap"), "chroma_cosine": ("chroma", None),
}


@dataclass
class Prompt:
    text: str | None
    wav: torch.Tensor  # reference audio [C, T] at `sample_rate`
    sample_rate: int


class EvaluateGeneration(PeriodicEvaluation):
    """Every `every_n_steps` optimizer steps and/or `every_n_epochs` epochs, generate one clip per
    validation prompt with the current model (its EMA weights when `use_ema` and EMA is on),
    compute the metrics on all ranks (states summed across ranks) and log `eval/<metric>` scalars
    and, from rank 0, `num_audio_samples` clips with mel and chroma images.

    Prompts: the first `num_prompts` (caption, reference audio) pairs of the validation data,
    read once and kept; under DDP each rank takes every world_size-th of them. Melody models get
    the reference audio as melody, so `chroma_cosine` is the paper's melody metric; for text-only
    models it measures pitch-class agreement with the reference clip of the same caption.

    Args:
        metrics: names among fad_vggish, fad_panns, fad_clap, fad_musicnn_vgg, kl_panns,
            kl_musicnn_vgg, clap, chroma_cosine. A metric whose weights are not configured is
            skipped with one warning; `*_musicnn_vgg` use the weights shipped in the `musicnn` package.
        vggish_checkpoint, vggish_pca_params: torchvggish files (FAD-VGGish).
        panns_checkpoint: PANNs `Cnn14_mAP=0.431.pth` (KL and FAD over AudioSet classes/embeddings).
        clap_path: a ClapModel `save_pretrained` folder (CLAP score and FAD-CLAP).
        musicnn_model: `MTT_vgg` or `MSD_vgg`.
        reference_stats: {metric name: .npz of mu/sigma} to compare FAD against dataset statistics.
        duration: seconds to generate (default: the reference clips' length).
        score_base: fine-tuning: also evaluate once when training starts from step 0, before any
            update, that is the base model (`init_from`; LoRA adapters start at zero), and log it as
            `eval_base/<metric>` next to the fine-tuned model's `eval/<metric>`. A resumed run
            (global step > 0) does not repeat it.
    """

    def __init__(self, every_n_steps: int | None = None, every_n_epochs: int | None = None,
                 metrics: list[str] = ("fad_vggish", "kl_panns", "clap", "chroma_cosine"),
                 num_prompts: int = 16, batch_size: int = 4, duration: float | None = None,
                 vggish_checkpoint: str | None = None, vggish_pca_params: str | None = None,
                 panns_checkpoint: str | None = None, clap_path: str | None = None,
                 musicnn_model: str = "MTT_vgg", reference_stats: dict[str, str] | None = None,
                 use_ema: bool = True, cfg_coef: float = 3.0, top_k: int = 250, top_p: float = 0.0,
                 temperature: float = 1.0, seed: int = 1234, num_audio_samples: int = 4, log_images: bool = True,
                 score_base: bool = False):
        super().__init__(every_n_steps, every_n_epochs)
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise ConfigError(f"EvaluateGeneration.metrics: unknown {unknown}; choose from {sorted(METRICS)}")
        if num_prompts < 1 or batch_size < 1:
            raise ConfigError(f"EvaluateGeneration: num_prompts={num_prompts}, batch_size={batch_size} must be >= 1")
        self.metric_names = list(dict.fromkeys(metrics))
        self.num_prompts, self.batch_size, self.duration = num_prompts, batch_size, duration
        self.weights = {"vggish": vggish_checkpoint, "panns": panns_checkpoint, "clap": clap_path,
                        "musicnn_vgg": musicnn_model}
        self.vggish_pca_params = vggish_pca_params
        self.reference_stats = dict(reference_stats or {})
        self.use_ema = use_ema
        self.sampling = dict(cfg_coef=cfg_coef, top_k=top_k, top_p=top_p, temperature=temperature)
        self.seed, self.num_audio_samples, self.log_images = seed, num_audio_samples, log_images
        self.score_base = score_base
        self.metrics: dict[str, torch.nn.Module] = {}
        self.prompts: list[Prompt] | None = None

    # ---- setup ----------------------------------------------------------------------------------
    def _embedder(self, name: str, cache: dict):
        if name not in cache:
            from lightning_musicgen.metrics import ClapEmbedder, Cnn14, MusicnnVGG, VGGish
            path = self.weights[name]
            if name == "vggish":
                cache[name] = VGGish(path, self.vggish_pca_params, postprocess=self.vggish_pca_params is not None)
            elif name == "panns":
                cache[name] = Cnn14(path)
            elif name == "clap":
                cache[name] = ClapEmbedder(path)
            else:
                cache[name] = MusicnnVGG(model=path)
        return cache[name]

    def _available(self, embedder: str | None) -> bool:
        if embedder is None or embedder == "musicnn_vgg":
            if embedder == "musicnn_vgg":
                import importlib.util
                return importlib.util.find_spec("musicnn") is not None
            return True
        return bool(self.weights[embedder])

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.metrics or stage != "fit":
            return
        cache: dict = {}
        skipped = []
        for name in self.metric_names:
            kind, embedder = METRICS[name]
            if not self._available(embedder):
                skipped.append(name)
                continue
            if kind == "fad":
                metric = FrechetAudioDistance(self._embedder(embedder, cache),
                                              reference_stats=self.reference_stats.get(name))
            elif kind == "kl":
                metric = KLDivergence(self._embedder(embedder, cache))
            elif kind == "clap":
                metric = CLAPScore(self._embedder(embedder, cache))
            else:
                metric = ChromaCosine()
            self.metrics[name] = metric
        if skipped:
            hint = {"vggish": "vggish_checkpoint", "panns": "panns_checkpoint", "clap": "clap_path",
                    "musicnn_vgg": "the musicnn package (pip install --no-deps musicnn)"}
            needs = sorted({hint[METRICS[m][1]] for m in skipped})
            rank_zero_warn(f"EvaluateGeneration: skipping {', '.join(skipped)} (not configured: {', '.join(needs)})")

    # ---- the model ------------------------------------------------------------------------------
    def _generator(self, pl_module: LightningModule):
        maker = getattr(pl_module, "generator", None)
        if callable(maker) and not isinstance(maker, torch.nn.Module):  # a method, not a submodule named so
            return pl_module.generator(use_ema=self.use_ema)
        from lightning_musicgen.generation import MusicGen
        ema = getattr(pl_module, "ema", None)
        lm = ema.module if (self.use_ema and ema is not None) else pl_module.lm
        # the live modules, used as they are: MusicGen never moves, casts or re-modes what it is given
        return MusicGen(lm, pl_module.conditioner, pl_module.codec)

    # ---- prompts --------------------------------------------------------------------------------
    def _collect_prompts(self, trainer: Trainer, generator) -> list[Prompt]:
        sample_rate = int(generator.sample_rate)
        data_rate = int(getattr(trainer.datamodule, "sample_rate", None) or sample_rate)
        prompts: list[Prompt] = []
        for batch in validation_batches(trainer):
            if "wav" in batch:
                wavs = resample(batch["wav"].float(), data_rate, sample_rate)
            elif "codes" in batch:
                wavs = generator.decode(batch["codes"]).float()
            else:
                raise InputError("EvaluateGeneration: validation batches need 'wav' or 'codes' and 'text'")
            mask = batch.get("mask") if "wav" in batch else None
            for i, text in enumerate(batch["text"]):
                wav = wavs[i]
                if mask is not None:
                    wav = wav[..., :int(int(mask[i].sum()) * sample_rate / data_rate)]
                if wav.shape[-1] == 0:
                    continue
                text = text.strip() if isinstance(text, str) and text.strip() else None  # empty: unconditional
                prompts.append(Prompt(text, wav.cpu(), sample_rate))
                if len(prompts) >= self.num_prompts:
                    break
            if len(prompts) >= self.num_prompts:
                break
        if not prompts:
            raise InputError("EvaluateGeneration: the validation data gave no prompts")
        return prompts

    # ---- evaluation -----------------------------------------------------------------------------
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.score_base and trainer.global_step == 0:
            self.evaluate(trainer, pl_module, prefix="eval_base")

    @torch.no_grad()
    def evaluate(self, trainer: Trainer, pl_module: LightningModule, prefix: str = "eval") -> dict[str, float]:
        """Generate for this rank's prompts, update and compute every metric, log as
        `<prefix>/<metric>`; returns the scalars."""
        self._last_step = trainer.global_step
        for name, metric in self.metrics.items():  # setup() runs before the strategy moves the model
            if metric.device != pl_module.device:
                self.metrics[name] = metric.to(pl_module.device)
        generator = self._generator(pl_module)
        if self.prompts is None:
            self.prompts = self._collect_prompts(trainer, generator)
        rank, world = trainer.global_rank, trainer.world_size
        mine = self.prompts[rank::world]
        samples = []
        for start in range(0, len(mine), self.batch_size):
            chunk = mine[start:start + self.batch_size]
            samples += self._generate_and_update(trainer, generator, chunk, seed=self.seed + 7919 * rank + start)
        scalars = {}
        for name, metric in self.metrics.items():
            try:
                value = metric.compute()  # all ranks take part: states are summed across processes
            except ValueError as exc:  # e.g. no captioned prompt for CLAP: same on every rank after the sync
                rank_zero_warn(f"EvaluateGeneration: {prefix}/{name} not computed ({exc})")
                metric.reset()
                continue
            if isinstance(value, dict):
                scalars[f"{prefix}/{name}"] = float(value["kl"])
                scalars[f"{prefix}/{name}_reverse"] = float(value["kl_reverse"])
                scalars[f"{prefix}/{name}_symmetric"] = float(value["kl_symmetric"])
            else:
                scalars[f"{prefix}/{name}"] = float(value)
            metric.reset()
        log_scalars(trainer, scalars)
        self._log_samples(trainer, samples, prefix)
        return scalars

    def _generate_and_update(self, trainer, generator, prompts: list[Prompt], seed: int) -> list:
        sr = int(generator.sample_rate)
        length = min(p.wav.shape[-1] for p in prompts)
        duration = self.duration or length / sr
        refs = torch.stack([p.wav[..., :length] for p in prompts])
        melody = (refs, sr) if getattr(generator, "has_melody", False) else None
        with trainer.precision_plugin.forward_context():
            wav = generator.generate([p.text for p in prompts], duration, melody=melody, seed=seed, **self.sampling)
        wav = wav.float()
        device = next(iter(self.metrics.values())).device if self.metrics else wav.device
        gen, ref = wav.to(device), refs[..., :wav.shape[-1]].to(device)
        if ref.shape[1] != gen.shape[1]:
            ref = convert_channels(ref, gen.shape[1])
        for name, metric in self.metrics.items():
            kind = METRICS[name][0]
            if kind == "fad":
                metric.update(gen, sample_rate=sr)
                if metric.reference_mu is None:
                    metric.update(ref, real=True, sample_rate=sr)
            elif kind == "kl":
                metric.update(gen, ref, sample_rate=sr)
            elif kind == "clap":  # unconditional prompts have no caption to compare with
                keep = [i for i, p in enumerate(prompts) if p.text]
                if keep:
                    metric.update(gen[keep], [prompts[i].text for i in keep], sample_rate=sr)
            else:
                metric.update(gen, ref, sample_rate=sr)
        return [(p.text, g.cpu(), r.cpu(), sr) for p, g, r in zip(prompts, gen, ref)]

    def _log_samples(self, trainer: Trainer, samples: list, prefix: str = "eval") -> None:
        samples = samples[:self.num_audio_samples]
        if not trainer.is_global_zero or not samples:
            return
        sr = samples[0][3]
        audios, captions = [], []
        for i, (text, gen, ref, _) in enumerate(samples):
            audios += [gen, ref]
            captions += [f"{i} generated: {text or '(unconditional)'}", f"{i} reference"]
        images = None
        if self.log_images:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                images = {"mel": [mel_image(a, sr) for a in audios], "chroma": [chroma_image(a, sr) for a in audios]}
        log_media(trainer, prefix, audios, sr, captions, images)
