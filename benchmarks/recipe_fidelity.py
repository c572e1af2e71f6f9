"""How closely the paper recipe trains like audiocraft 1.3.0: the figures behind tests/test_recipe_*.py.

Runs the comparisons of tests/test_recipe_codec.py and tests/test_recipe_lm.py (same weights, same
batches, audiocraft's own source as the reference) and prints, as one JSON document:
- the MS-STFT discriminator, mono and stereo: max |ours - theirs| and that over max |theirs|,
  for the logits and for the feature maps (worst scale / layer);
- the LM after 20 steps, per pattern: the largest relative difference of a weight tensor
  (||ours - theirs|| / ||theirs||) and, for scale, how far the 20 steps moved the weights (norm of
  the change over the norm of the initial weights, all tensors together);
- the codec after 10 generator + discriminator steps: the same for the generator, the
  discriminator and the EMA codebooks;
- controls: the same runs with one of this project's own choices instead of audiocraft's, to show
  the size of a real difference next to the rounding noise of the recipe runs. (`adv_loss: hinge2`
  is no control here: it differs from audiocraft's loss only where D(fake) > 1, which these 10
  steps never reach; tests/test_recipe_codec.py compares the losses themselves.)

Needs audiocraft 1.3.0 and the small packages its tested paths run, installed without their
dependencies (`make install-dev` does). One thread; a few minutes on a 2-core CPU.

    python benchmarks/recipe_fidelity.py [--no-controls]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import test_recipe_codec as codec_test  # noqa: E402
import test_recipe_lm as lm_test  # noqa: E402


def _errors(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> dict:
    abs_err = max(float((a - b).abs().max()) for a, b in zip(ours, theirs))
    rel_err = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(ours, theirs))
    return {"max_abs": abs_err, "max_abs_over_max_ref": rel_err}


def discriminator_figures(ac) -> dict:
    out = {}
    for channels in (1, 2):
        with torch.no_grad():
            _, (logits, feats), (their_logits, their_feats) = codec_test.run_both_discriminators(ac, channels)
        out["mono" if channels == 1 else "stereo"] = {
            "logits": _errors(logits, their_logits),
            "feature_maps": _errors([f for fs in feats for f in fs], [f for fs in their_feats for f in fs])}
    return out


def lm_figures(ac, tmp: Path, controls: bool) -> dict:
    runs = {pattern: (pattern, {}) for pattern in lm_test.PATTERNS}
    if controls:
        runs["delay, every code scored (keep_only_valid_steps=False)"] = ("delay", {"keep_only_valid_steps": False})
        runs["delay, decay on matrices only (weight_decay_on=matrices)"] = ("delay", {"weight_decay_on": "matrices"})
    out = {}
    for label, (pattern, overrides) in runs.items():
        result = lm_test.train_both(ac, pattern, tmp, **overrides)
        err, shape = result["max_rel_diff"]
        out[label] = {"max_rel_diff": err, "worst_tensor_shape": list(shape), "rel_moved": result["rel_moved"]}
    return out


def codec_figures(ac, tmp: Path, controls: bool) -> dict:
    runs = {"recipe": {}}
    if controls:
        runs["feature_matching=relative"] = {"feature_matching": "relative"}
        runs["discriminator: this project's spectrogram defaults"] = {
            "discriminator_kwargs": {"filters": 4, "n_ffts": codec_test.N_FFTS, "norm_first_conv": False,
                                     "activation_slope": 0.3}}
    out = {}
    for label, overrides in runs.items():
        result = codec_test.train_both(ac, tmp, **overrides)
        out[label] = {part: {"max_rel_diff": result[part][0], "worst": result[part][1]}
                      for part in ("generator", "discriminator", "codebooks")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-controls", action="store_true", help="only the recipe runs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    codec_ac, lm_ac = codec_test.load_audiocraft(), lm_test.load_audiocraft()
    with tempfile.TemporaryDirectory(prefix="recipe-fidelity-") as tmp:
        figures = {"torch": torch.__version__,
                   "discriminator": discriminator_figures(codec_ac),
                   "lm_20_steps": lm_figures(lm_ac, Path(tmp), not args.no_controls),
                   "codec_10_steps": codec_figures(codec_ac, Path(tmp), not args.no_controls)}
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
