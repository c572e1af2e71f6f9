"""LightningDataModules over WebDataset shards: `AudioDataModule` (wav crops) and `TokenDataModule` (codes).

Resume: `state_dict()` (saved by Lightning in every checkpoint) holds the epoch counter and the number of
batches of that epoch already trained (read from the trainer's progress, so the batch Lightning prefetched
but did not train on is not counted). After `load_state_dict()` the next train iterator restarts that epoch
with the same seeds and fast-forwards past the trained batches (replaying the random draws, not decoding),
so the resumed run sees exactly the batches the uninterrupted run would have seen, provided
num_workers, batch_size, world size and the shard list are unchanged and no sample failed to decode in the
skipped part (a corrupt sample shifts later batches of that epoch by one sample).

Skipped (corrupt) samples: `datamodule.skipped_samples` is the running total for this process and
`datamodule.skip_reasons` its split by reason. The first skip of each reason is a warning line (with an example);
`lightning_musicgen.training.SkippedSamplesLogger` (added to every fit of this package's modules) logs
the count as `train/skipped_samples` and shows it on the progress bar once it is non-zero. At setup, local shards
named by an index but missing are a warning, and a shard folder without `index.json` (an interrupted `prepare`)
is used with a warning naming what is missing. If no train sample can be used at all the run ends with one line
naming the shards and the reasons (`RunAborted`), within seconds, instead of spinning.
"""
from __future__ import annotations

import glob
import os
import signal
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader

from lightning_musicgen.compat import batches_processed_in_epoch
from lightning_musicgen.data.pipeline import (REPLAYED, AudioCrops, CodeCrops, NoUsableSamples, TrainStream,
                                              ValidStream)
from lightning_musicgen.data.shards import INDEX_NAME, expand_shards
from lightning_musicgen.data.text import TextAugment
from lightning_musicgen.errors import ConfigError
from lightning_musicgen.reliability import RunAborted


def _worker_ignores_stop_signals(worker_id: int) -> None:
    """SLURM's SIGUSR1 warning reaches every process of the job step: it is for the main process (which
    checkpoints, then stops the workers); by default it would kill a worker and crash the loader first.
    SIGTERM keeps its default action: multiprocessing terminates workers with it at exit."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def _one_line(exc: BaseException) -> str:
    """The message of an exception re-raised from a DataLoader worker (its last line), or its own."""
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else type(exc).__name__
    return last.split(f"{type(exc).__name__}: ", 1)[-1]


def check_shards(spec: Any, urls: list[str], what: str) -> None:
    """Warn about local shards that are missing, and about a shard folder without a complete index."""
    if isinstance(spec, (str, os.PathLike)) and os.path.isdir(spec) and not os.path.exists(Path(spec) / INDEX_NAME):
        partial = sorted(glob.glob(str(Path(spec) / "*.tmp*")))
        warnings.warn(f"{what}: {spec} has no {INDEX_NAME} (an interrupted `prepare`?): using its {len(urls)} "
                      f"*.tar shard(s) without sample counts" + (f"; unfinished files: {', '.join(partial[:3])}"
                                                                 if partial else ""), stacklevel=2)
    local = [u for u in urls if not (u.startswith("pipe:") or "://" in u)]
    missing = [u for u in local if not os.path.exists(u)]
    if missing and len(missing) == len(urls):
        raise RunAborted(f"{what}: none of the {len(urls)} shard(s) exists (first: {missing[0]})")
    if missing:
        warnings.warn(f"{what}: {len(missing)} of {len(urls)} shard(s) named by {spec} are missing "
                      f"({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}); they count as skipped "
                      "('missing shard')", stacklevel=2)


class _TrackedLoader(DataLoader):
    """A DataLoader that tells its datamodule when an epoch starts and what each batch reports."""

    def __init__(self, dataset, datamodule=None, train: bool = True, **kwargs):
        super().__init__(dataset, batch_size=None, **kwargs)
        self._datamodule, self._train = datamodule, train

    def __iter__(self):
        dm = self._datamodule
        if dm is not None and self._train:
            dm._start_epoch(self.dataset)
        try:
            for batch in super().__iter__():
                if REPLAYED in batch:
                    continue
                if dm is not None:
                    dm._observe(batch, self._train)
                yield batch
        except NoUsableSamples as exc:  # (re-raised from a worker with its traceback in the message)
            raise RunAborted(_one_line(exc)) from None

    # Lightning treats loaders with these methods as resumable (and stores their state with the loops):
    # both delegate to the datamodule, whose own state_dict is also in the checkpoint.
    def state_dict(self) -> dict:
        return self._datamodule.state_dict() if self._datamodule is not None and self._train else {}

    def load_state_dict(self, state_dict: dict) -> None:
        if self._datamodule is not None and self._train and state_dict:
            self._datamodule.load_state_dict(state_dict)


class _ShardDataModule(LightningDataModule):
    """Shared machinery: shard expansion, rank/world wiring, loaders, resume state, skip counting."""

    def __init__(self, train_shards, val_shards, batch_size: int, val_batch_size: int | None,
                 num_workers: int, shuffle_buffer: int, epoch_steps: int, seed: int,
                 prefetch_factor: int | None, pin_memory: bool):
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size}: must be >= 1")
        if epoch_steps < 1:
            raise ConfigError(f"epoch_steps={epoch_steps}: must be >= 1")
        self.train_shards, self.val_shards = train_shards, val_shards
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.num_workers, self.shuffle_buffer = num_workers, shuffle_buffer
        self.epoch_steps, self.seed = epoch_steps, seed
        self.prefetch_factor, self.pin_memory = prefetch_factor, pin_memory
        self._epoch = -1            # epoch currently (or last) iterated
        self._yielded = 0           # batches handed out in that epoch (used when no trainer is attached)
        self._resume: dict | None = None
        self._skipped_done = 0      # skipped samples of finished epochs
        self._skipped_now: dict[int, int] = {}  # worker slot -> cumulative count in this epoch
        self._reasons_done: dict[str, int] = {}
        self._reasons_now: dict[int, dict[str, int]] = {}
        self._warned_reasons: set[tuple[bool, str]] = set()
        self._train_stream: TrainStream | None = None
        self._val_stream: ValidStream | None = None

    # -- subclasses provide the decoder ------------------------------------------------------------
    def _decoder(self, train: bool):
        raise NotImplementedError

    def _rank_world(self) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))

    def setup(self, stage: str | None = None) -> None:
        rank, world = self._rank_world()
        if stage in (None, "fit") and self.train_shards is not None:
            urls = expand_shards(self.train_shards)
            check_shards(self.train_shards, urls, "train_shards")
            self._train_stream = TrainStream(urls, self._decoder(True), self.batch_size, self.epoch_steps,
                                             seed=self.seed, shuffle_buffer=self.shuffle_buffer,
                                             rank=rank, world_size=world)
        if stage in (None, "fit", "validate") and self.val_shards is not None:
            urls = expand_shards(self.val_shards)
            check_shards(self.val_shards, urls, "val_shards")
            self._val_stream = ValidStream(urls, self._decoder(False), self.val_batch_size,
                                           rank=rank, world_size=world)

    def _loader(self, dataset, train: bool) -> DataLoader:
        kwargs: dict[str, Any] = {"num_workers": self.num_workers, "pin_memory": self.pin_memory}
        if self.num_workers > 0:
            # workers must be restarted each epoch: they receive the epoch counter with the dataset
            kwargs.update(persistent_workers=False, prefetch_factor=self.prefetch_factor or 2,
                          worker_init_fn=_worker_ignores_stop_signals)
        return _TrackedLoader(dataset, datamodule=self, train=train, **kwargs)

    def train_dataloader(self) -> DataLoader:
        if self._train_stream is None:
            self.setup("fit")
        if self._train_stream is None:
            raise ConfigError("train_shards is not set: no training data")
        return self._loader(self._train_stream, train=True)

    def val_dataloader(self) -> DataLoader:
        if self._val_stream is None:
            self.setup("validate")
        if self._val_stream is None:
            return []
        return self._loader(self._val_stream, train=False)

    # -- epoch / resume bookkeeping ----------------------------------------------------------------
    def _start_epoch(self, stream: TrainStream) -> None:
        self._skipped_done += sum(self._skipped_now.values())
        self._skipped_now = {}
        for counts in self._reasons_now.values():
            for reason, n in counts.items():
                self._reasons_done[reason] = self._reasons_done.get(reason, 0) + n
        self._reasons_now = {}
        if self._resume is not None:
            self._epoch, skip = self._resume["epoch"], self._resume["batches_in_epoch"]
            self._resume = None
        else:
            self._epoch, skip = self._epoch + 1, 0
        stream.epoch, stream.skip_batches = self._epoch, skip
        self._yielded = skip

    def _observe(self, batch: dict, train: bool) -> None:
        if train:
            self._yielded += 1
        slot_counts: dict[int, int] = {}
        for meta in batch.get("meta", []):
            slot = meta.get("worker")
            if slot is not None:
                slot_counts[slot] = max(slot_counts.get(slot, 0), int(meta.get("skipped_samples", 0)))
                self._warn_new_reasons(meta, train)
                if train and meta.get("skip_reasons"):
                    self._reasons_now[slot] = dict(meta["skip_reasons"])
        if train:
            for slot, count in slot_counts.items():
                self._skipped_now[slot] = max(self._skipped_now.get(slot, 0), count)

    def _warn_new_reasons(self, meta: dict, train: bool) -> None:
        for reason, example in (meta.get("skip_examples") or {}).items():
            if (train, reason) not in self._warned_reasons:
                self._warned_reasons.add((train, reason))
                warnings.warn(f"skipped a {'training' if train else 'validation'} sample ({reason}): {example} "
                              "[further ones are counted in train/skipped_samples]", stacklevel=2)

    @property
    def skip_reasons(self) -> dict[str, int]:
        """Skipped training samples of this process by reason (all epochs)."""
        total = dict(self._reasons_done)
        for counts in self._reasons_now.values():
            for reason, n in counts.items():
                total[reason] = total.get(reason, 0) + n
        return total

    @property
    def skipped_samples(self) -> int:
        """Corrupt/undecodable training samples skipped so far by this process (all epochs)."""
        return self._skipped_done + sum(self._skipped_now.values())

    def _trained_batches(self) -> int:
        if self.trainer is not None and self.trainer.state.fn == TrainerFn.FITTING:
            return batches_processed_in_epoch(self.trainer)
        return self._yielded

    def state_dict(self) -> dict:
        if self._resume is not None:  # restored but not started yet: keep it as is
            return dict(self._resume)
        epoch, done = self._epoch, self._trained_batches()
        if epoch < 0 or done >= self.epoch_steps:
            epoch, done = epoch + 1, 0
        return {"epoch": epoch, "batches_in_epoch": done, "seed": self.seed,
                "skipped_samples": self.skipped_samples, "skip_reasons": self.skip_reasons,
                "num_workers": self.num_workers,
                "batch_size": self.batch_size, "epoch_steps": self.epoch_steps}

    def load_state_dict(self, state_dict: dict) -> None:
        if not state_dict:
            return
        self._resume = {"epoch": int(state_dict["epoch"]), "batches_in_epoch": int(state_dict["batches_in_epoch"])}
        self._skipped_done, self._skipped_now = int(state_dict.get("skipped_samples", 0)), {}
        self._reasons_done, self._reasons_now = dict(state_dict.get("skip_reasons", {})), {}
        for name in ("seed", "num_workers", "batch_size", "epoch_steps"):
            if name in state_dict and state_dict[name] != getattr(self, name):
                import warnings
                warnings.warn(f"resuming data with {name}={getattr(self, name)} (checkpoint: {state_dict[name]}): "
                              "the batch sequence will differ from the interrupted run")


class AudioDataModule(_ShardDataModule):
    """Random audio crops from WebDataset shards for codec and LM training.

    Batches: `{"wav": float[B, C, T], "mask": bool[B, T] (True = real audio), "text": list[str],
    "meta": list[dict]}` with T = segment_duration * sample_rate (valid: val_segment_duration).

    Args:
        train_shards / val_shards: a shard directory (uses its index.json), index.json, glob, brace
            pattern, list, or `pipe:` command (see `shards.expand_shards`).
        sample_rate, channels: output format; shards at another rate/channel count are converted.
        segment_duration: crop length in seconds (None: whole files, padded to the longest of the batch).
        min_segment_ratio: a train crop starts in [0, duration - ratio * segment], so it holds at least that
            fraction of real audio when the file is long enough.
        val_segment_duration: crop length of validation (None: same as segment_duration; validation crops
            start at 0).
        batch_size / val_batch_size: per process.
        num_workers, prefetch_factor, pin_memory: DataLoader options (workers are not persistent: they get the
            epoch counter when they start).
        shuffle_buffer: samples held for shuffling per worker (raw encoded files: memory per worker is about
            shuffle_buffer x the average file size; shards are also drawn at random, which mixes too).
        epoch_steps: train batches per epoch (per process); the train stream itself is endless.
        seed: seeds shard choice, shuffling, crop positions and caption dropout together with node rank,
            worker id and epoch.
        merge_text_p, drop_desc_p, drop_other_p, word_dropout: caption augmentation at train time
            (`data.text.TextAugment`). Word dropout defaults to 0 because MusicGen's text conditioner applies
            its own (0.3); enable it here only if the conditioner's is off.
        normalize_loudness, loudness_target: scale each crop to `loudness_target` LUFS (BS.1770).
        max_peak: a crop whose absolute peak exceeds this (full scale 1.0) is skipped and counted ("absurd peak").
    """

    def __init__(self, train_shards: Any = None, val_shards: Any = None, sample_rate: int = 32000,
                 channels: int = 1, segment_duration: float | None = 30.0, min_segment_ratio: float = 0.8,
                 val_segment_duration: float | None = None, batch_size: int = 8,
                 val_batch_size: int | None = None, num_workers: int = 2, shuffle_buffer: int = 32,
                 epoch_steps: int = 1000, seed: int = 0, merge_text_p: float = 0.25, drop_desc_p: float = 0.5,
                 drop_other_p: float = 0.5, word_dropout: float = 0.0, normalize_loudness: bool = False,
                 loudness_target: float = -14.0, prefetch_factor: int | None = 2, pin_memory: bool = False,
                 max_peak: float = 10.0):
        super().__init__(train_shards, val_shards, batch_size, val_batch_size, num_workers, shuffle_buffer,
                         epoch_steps, seed, prefetch_factor, pin_memory)
        self.max_peak = max_peak
        if sample_rate <= 0 or channels not in (1, 2):
            raise ConfigError(f"sample_rate={sample_rate}, channels={channels}: need a positive rate and 1 or 2 channels")
        self.sample_rate, self.channels = sample_rate, channels
        self.segment_duration, self.min_segment_ratio = segment_duration, min_segment_ratio
        self.val_segment_duration = val_segment_duration
        self.text = TextAugment(merge_text_p, drop_desc_p, drop_other_p, word_dropout)
        self.normalize_loudness, self.loudness_target = normalize_loudness, loudness_target
        self._decoder(True)  # validate options now, not in a worker

    def _decoder(self, train: bool) -> AudioCrops:
        seg = self.segment_duration if train else (self.val_segment_duration or self.segment_duration)
        return AudioCrops(self.sample_rate, self.channels, seg, self.min_segment_ratio, self.text,
                          self.normalize_loudness, self.loudness_target, self.max_peak)


class TokenDataModule(_ShardDataModule):
    """Crops of pre-computed codec tokens (written by `python -m lightning_musicgen tokenize`).

    Batches: `{"codes": long[B, K, F], "mask": bool[B, F], "text": list[str], "meta": list[dict]}` with
    F = segment_duration * frame_rate; padded positions hold 0 and mask False. Each meta carries the
    codec's `frame_rate`, `n_q`, `card`, `sample_rate`. Options as `AudioDataModule`.
    """

    def __init__(self, train_shards: Any = None, val_shards: Any = None, segment_duration: float | None = 30.0,
                 min_segment_ratio: float = 0.8, val_segment_duration: float | None = None,
                 batch_size: int = 8, val_batch_size: int | None = None, num_workers: int = 2,
                 shuffle_buffer: int = 32, epoch_steps: int = 1000, seed: int = 0, merge_text_p: float = 0.25,
                 drop_desc_p: float = 0.5, drop_other_p: float = 0.5, word_dropout: float = 0.0,
                 prefetch_factor: int | None = 2, pin_memory: bool = False):
        super().__init__(train_shards, val_shards, batch_size, val_batch_size, num_workers, shuffle_buffer,
                         epoch_steps, seed, prefetch_factor, pin_memory)
        self.segment_duration, self.min_segment_ratio = segment_duration, min_segment_ratio
        self.val_segment_duration = val_segment_duration
        self.text = TextAugment(merge_text_p, drop_desc_p, drop_other_p, word_dropout)
        self._decoder(True)  # validate options now, not in a worker

    def _decoder(self, train: bool) -> CodeCrops:
        seg = self.segment_duration if train else (self.val_segment_duration or self.segment_duration)
        return CodeCrops(seg, self.min_segment_ratio, self.text)
