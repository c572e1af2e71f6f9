"""Next-token selection for MusicGen: classifier-free guidance, temperature, top-k, top-p, greedy.

The semantics follow transformers' logits processors exactly (so that the same logits and the
same seed give the same tokens as `MusicgenForConditionalGeneration.generate`):

- CFG: `uncond + (cond - uncond) * cfg_coef` on the raw logits;
- then temperature (`logits / temperature`), then top-k (keep every logit >= the k-th largest),
  then top-p (drop the smallest tokens whose cumulative probability stays <= 1 - p; the most
  likely token is always kept);
- sampling draws from `softmax(filtered)` with `torch.multinomial` on rows [B*K, card], so a
  `torch.Generator` seeded like transformers' global RNG draws the same tokens.

Conventions of this package (audiocraft's API): `top_k=0` disables top-k, `top_p=0.0` (or 1.0)
disables top-p, and `top_k=1` or `temperature=0` is greedy decoding (argmax, no randomness).
Note: unlike audiocraft, top-k and top-p combine when both are set (transformers' behaviour);
pass `top_k=0` to get audiocraft's "top-p replaces top-k".
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lightning_musicgen.errors import ConfigError


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, cfg_coef: float) -> torch.Tensor:
    """Classifier-free guidance on logits: uncond + (cond - uncond) * cfg_coef."""
    return uncond + (cond - uncond) * cfg_coef


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0 for sampling, got {temperature} (use greedy for 0)")
    return logits if temperature == 1.0 else logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Set every logit below the k-th largest of its row to -inf (ties with the k-th are kept)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of most likely tokens whose probability mass
    exceeds 1 - (mass of the dropped tail) >= p; always keeps the most likely token."""
    if p <= 0.0 or p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=False)
    tail_mass = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = tail_mass <= (1.0 - p)
    drop_sorted[..., -1:] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


@dataclass(frozen=True)
class SamplingParams:
    """How to pick the next token from (guided) logits."""
    top_k: int = 250
    top_p: float = 0.0
    temperature: float = 1.0

    def __post_init__(self):
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0.0 <= self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in [0, 1] (0 disables it), got {self.top_p}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}")

    @property
    def greedy(self) -> bool:
        return self.top_k == 1 or self.temperature == 0.0

    def filter(self, logits: torch.Tensor) -> torch.Tensor:
        """Temperature, then top-k, then top-p (transformers' order)."""
        logits = apply_temperature(logits, self.temperature)
        logits = top_k_filter(logits, self.top_k)
        return top_p_filter(logits, self.top_p)


def sample_next_token(logits: torch.Tensor, params: SamplingParams,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """logits [..., card] -> tokens [...] (greedy or multinomial). Works in float32."""
    logits = logits.float()
    if params.greedy:
        return logits.argmax(dim=-1)
    probs = params.filter(logits).softmax(dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, num_samples=1, generator=generator).view(probs.shape[:-1])


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator | None:
    """A dedicated RNG for one generation call (None: torch's global RNG, not reproducible)."""
    if seed is None:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen
