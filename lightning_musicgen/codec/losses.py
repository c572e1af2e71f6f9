"""Codec losses and metrics (all computed in fp32, also under bf16 autocast) and EnCodec's balancer.

- `MultiScaleMelLoss`: L1 + L2 on log-mel spectrograms at windows 2**5 .. 2**11 (EnCodec's msspec);
- `MelDistance`: one-scale log-mel L1 distance, the quality metric the tests and logs track;
- `si_snr`: scale-invariant SNR in dB;
- adversarial losses (hinge, hinge2, mse: audiocraft's names) and feature matching (relative or
  plain L1);
- `Balancer`: each loss gets a fixed share of the gradient w.r.t. the decoder output.
"""
from __future__ import annotations


import torch
from torch import nn
from torch.nn import functional as F

from lightning_musicgen.audio.dsp import MelSpectrogram
from lightning_musicgen.distributed import mean_across_ranks
from lightning_musicgen.errors import ConfigError


def _fp32(fn):
    """Run `fn` with autocast off and floating tensor arguments in fp32."""
    def wrapper(*args, **kwargs):
        device = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
        with torch.autocast(device, enabled=False):
            args = [a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
            return fn(*args, **kwargs)
    wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
    return wrapper


class _LogMel(nn.Module):
    def __init__(self, sample_rate: int, n_fft: int, hop_length: int, n_mels: int, floor: float = 1e-5):
        super().__init__()
        self.mel = MelSpectrogram(sample_rate, n_fft=n_fft, win_length=n_fft, hop_length=hop_length,
                                  n_mels=n_mels, f_min=0.0, normalized=False, center=True, power=1.0)
        self.floor = floor

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """wav[B, C, T] -> (mel, log mel) [B, C, n_mels, frames]."""
        mel = self.mel(wav)
        return mel, torch.log(mel.clamp(min=self.floor))


class MultiScaleMelLoss(nn.Module):
    """Sum over scales 2**5..2**11 of L1(mel) + L2(log mel) (EnCodec's multi-scale spectral loss)."""

    def __init__(self, sample_rate: int, range_start: int = 5, range_end: int = 11, n_mels: int = 64,
                 alpha: float = 1.0):
        super().__init__()
        # small FFTs leave a few empty low mel bands: harmless zeros
        self.scales = nn.ModuleList(_LogMel(sample_rate, 2 ** i, 2 ** i // 4, min(n_mels, 2 ** i // 8))
                                    for i in range(range_start, range_end + 1))
        self.alpha = alpha

    def forward(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return _fp32(self._loss)(y, x)

    def _loss(self, y, x):
        total = y.new_zeros(())
        for scale in self.scales:
            (my, ly), (mx, lx) = scale(y), scale(x)
            total = total + F.l1_loss(my, mx) + self.alpha * (ly - lx).pow(2).mean(dim=-2).sqrt().mean()
        return total / len(self.scales)


class MelDistance(nn.Module):
    """L1 distance between log-mel spectrograms (n_fft 2048, hop 512, 80 mels by default)."""

    def __init__(self, sample_rate: int, n_fft: int = 2048, hop_length: int = 512, n_mels: int = 80):
        super().__init__()
        self.logmel = _LogMel(sample_rate, n_fft, hop_length, n_mels)

    def forward(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return _fp32(self._dist)(y, x)

    def _dist(self, y, x):
        return F.l1_loss(self.logmel(y)[1], self.logmel(x)[1])


@_fp32
def si_snr(estimate: torch.Tensor, reference: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale-invariant SNR in dB, averaged over the batch (inputs [B, C, T])."""
    est = estimate.flatten(1) - estimate.flatten(1).mean(-1, keepdim=True)
    ref = reference.flatten(1) - reference.flatten(1).mean(-1, keepdim=True)
    proj = (est * ref).sum(-1, keepdim=True) / (ref.pow(2).sum(-1, keepdim=True) + eps) * ref
    noise = est - proj
    return (10 * torch.log10((proj.pow(2).sum(-1) + eps) / (noise.pow(2).sum(-1) + eps))).mean()


ADV_LOSSES = ("hinge", "hinge2", "mse")


def discriminator_loss(real_logits: list[torch.Tensor], fake_logits: list[torch.Tensor],
                       kind: str = "hinge") -> torch.Tensor:
    """Mean over sub-discriminators of the real + fake terms: hinge (and hinge2) relu(1 - D(x)) +
    relu(1 + D(y)); mse (LSGAN) (D(x) - 1)**2 + D(y)**2."""
    _check_adv_loss(kind)
    total = 0.0
    for r, f in zip(real_logits, fake_logits):
        r, f = r.float(), f.float()
        if kind == "mse":
            total = total + (r - 1).pow(2).mean() + f.pow(2).mean()
        else:
            total = total + F.relu(1 - r).mean() + F.relu(1 + f).mean()
    return total / len(real_logits)


def generator_adversarial_loss(fake_logits: list[torch.Tensor], kind: str = "hinge2") -> torch.Tensor:
    """Mean over sub-discriminators of the generator's term (audiocraft's names): "hinge" -D(y)
    (EnCodec's recipe), "hinge2" relu(1 - D(y)) (no gradient once D(y) > 1), "mse" (D(y) - 1)**2."""
    _check_adv_loss(kind)
    terms = {"hinge": lambda f: -f.mean(), "hinge2": lambda f: F.relu(1 - f).mean(),
             "mse": lambda f: (f - 1).pow(2).mean()}[kind]
    return sum(terms(f.float()) for f in fake_logits) / len(fake_logits)


def _check_adv_loss(kind: str) -> None:
    if kind not in ADV_LOSSES:
        raise ConfigError(f"adversarial loss must be one of {ADV_LOSSES}, got {kind!r}")


def hinge_discriminator_loss(real_logits: list[torch.Tensor], fake_logits: list[torch.Tensor]) -> torch.Tensor:
    return discriminator_loss(real_logits, fake_logits, "hinge")


def hinge_generator_loss(fake_logits: list[torch.Tensor]) -> torch.Tensor:
    """relu(1 - D(y)): audiocraft's "hinge2" (kept under its old name)."""
    return generator_adversarial_loss(fake_logits, "hinge2")


FEATURE_MATCHING = ("relative", "l1")


def feature_matching_loss(fake_feats: list[list[torch.Tensor]], real_feats: list[list[torch.Tensor]],
                          kind: str = "relative") -> torch.Tensor:
    """Mean over discriminators of the mean over their layers of L1(fake, real) (real features
    detached); "relative" divides each layer's L1 by mean|real|, "l1" does not (audiocraft)."""
    if kind not in FEATURE_MATCHING:
        raise ConfigError(f"feature matching must be one of {FEATURE_MATCHING}, got {kind!r}")
    total = 0.0
    for fakes, reals in zip(fake_feats, real_feats):
        layers = 0.0
        for f, r in zip(fakes, reals):
            r = r.detach().float()
            l1 = F.l1_loss(f.float(), r)
            layers = layers + (l1 / (r.abs().mean() + 1e-8) if kind == "relative" else l1)
        total = total + layers / max(len(fakes), 1)
    return total / max(len(fake_feats), 1)


class Balancer:
    """EnCodec's loss balancer: the gradient of loss i w.r.t. the model output y is rescaled so
    that it makes up `weights[i] / sum(weights)` of a gradient of norm `total_norm`.

    Norms are averaged over batch items and smoothed by an EMA (decay `ema_decay`, bias-corrected).
    `backward_gradient(losses, y)` returns the gradient to push into y (`y.backward(grad)`); losses
    without a weight (or weight 0) are ignored. With `balance=False` it is the plain weighted sum.
    """

    def __init__(self, weights: dict[str, float], balance: bool = True, total_norm: float = 1.0,
                 ema_decay: float = 0.999, per_batch_item: bool = True, epsilon: float = 1e-12):
        self.weights, self.balance, self.total_norm = dict(weights), balance, total_norm
        self.ema_decay, self.per_batch_item, self.epsilon = ema_decay, per_batch_item, epsilon
        self._ema_sum: dict[str, float] = {}
        self._ema_count: dict[str, float] = {}
        self.scales: dict[str, float] = {}
        self.norms: dict[str, float] = {}

    def _ema(self, name: str, value: float) -> float:
        self._ema_sum[name] = self._ema_sum.get(name, 0.0) * self.ema_decay + value
        self._ema_count[name] = self._ema_count.get(name, 0.0) * self.ema_decay + 1.0
        return self._ema_sum[name] / self._ema_count[name]

    def backward_gradient(self, losses: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        active = {k: v for k, v in losses.items() if self.weights.get(k, 0.0) > 0}
        if not active:
            return torch.zeros_like(y)
        grads = {k: torch.autograd.grad(v, y, retain_graph=True)[0] for k, v in active.items()}
        total_weight = sum(self.weights[k] for k in active)
        out = torch.zeros_like(y, dtype=torch.float32)
        self.scales, self.norms = {}, {}
        for name, g in grads.items():
            g = g.float()
            if self.per_batch_item:
                norm = g.flatten(1).norm(dim=1).mean()
            else:
                norm = g.norm()
            norm = float(mean_across_ranks(norm))  # identical balancer scales on every replica
            avg = self._ema(name, norm)
            self.norms[name] = avg
            if self.balance:
                scale = self.weights[name] / total_weight * self.total_norm / (self.epsilon + avg)
            else:
                scale = self.weights[name]
            self.scales[name] = scale
            out += scale * g
        return out.to(y.dtype)

    def state_dict(self) -> dict:
        return {"ema_sum": dict(self._ema_sum), "ema_count": dict(self._ema_count)}

    def load_state_dict(self, state: dict) -> None:
        self._ema_sum = dict(state.get("ema_sum", {}))
        self._ema_count = dict(state.get("ema_count", {}))
