"""Streaming crops from WebDataset shards: a resampled endless train stream and a deterministic valid stream.

Train stream (`TrainStream`): every (node rank, dataloader worker) draws shards with replacement and crop
positions/captions from its own generator seeded by `(seed, rank, worker, epoch)`; samples pass through a
shuffle buffer; the worker assembles whole batches. Worker w of W produces the global batches i with
i % W == w of the epoch, which the DataLoader returns in order 0, 1, 2, ... so the batch sequence depends
only on (seed, rank, epoch, num_workers). Skipping the first `skip_batches` batches (resume) replays the
same random draws but does not decode audio, so it costs only the tar reads; each skipped batch is a tiny
placeholder (dropped by the datamodule's loader) so the DataLoader's worker round-robin stays aligned.

Valid stream (`ValidStream`): each sample exactly once, in shard order, split over (rank, worker) slots
(whole shards when there are at least as many shards as slots, else every n-th sample), cropped from the
start, deterministic captions.

Decoders turn a raw sample into a tensor: `AudioCrops` (FLAC/wav/ogg/mp3 blobs -> wav crops) and
`CodeCrops` (`codes.npy` -> code crops). A sample with a melody conditioning file (`melody.flac`, written by
`prepare` from `melody_path`) also gets that file cropped at the same time span; a batch in which any sample
has one carries `melody` [B, C, T] (the samples without one get their own crop there). A sample that fails to
decode, has no audio, has non-finite values or an absurd peak (above `max_peak`, e.g. a float file of
+-1e30), lacks or has invalid JSON is skipped and counted under a short reason; an unreadable or missing shard
counts once. The counts travel in each item's `meta["skipped_samples"]` and `meta["skip_reasons"]` (per
worker, cumulative, with one example per reason in `meta["skip_examples"]`) and the datamodule sums and
reports them.

No usable data never means a silent spin: a train stream raises `NoUsableSamples` (naming the shards and the
skip reasons) when 2000 samples in a row failed before any decoded (10000 after one did) and every shard gave
one of the failures, or when shard after shard is unreadable.
"""
from __future__ import annotations

import io
import json
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from lightning_musicgen.audio.io import AudioReadError, convert_channels, read_audio, resample
from lightning_musicgen.config_dict import current_names
from lightning_musicgen.data.shards import AUDIO_EXTS, MELODY_MEMBER, iter_tar_samples
from lightning_musicgen.data.text import TextAugment
from lightning_musicgen.errors import ConfigError, InputError


REPLAYED = "__replayed_batch__"  # key of the placeholder a worker yields for a fast-forwarded batch


class CorruptSample(Exception):
    """A sample that cannot be used (undecodable, empty, non-finite, missing members); `reason` is the
    short category it is counted under, the message the detail."""

    def __init__(self, message: str, reason: str = "undecodable"):
        super().__init__(message)
        self.reason = reason


class NoUsableSamples(RuntimeError):
    """No sample of the train shards can be used: training cannot make progress."""


def _meta_of(sample: dict) -> dict:
    try:
        meta = json.loads(sample["json"])
    except KeyError:
        raise CorruptSample(f"{sample.get('__key__')}: no json member", "no json member") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptSample(f"{sample.get('__key__')}: invalid json ({exc})", "invalid json") from None
    if not isinstance(meta, dict):
        raise CorruptSample(f"{sample.get('__key__')}: json is not an object", "invalid json")
    return meta


class AudioCrops:
    """Decode audio samples into fixed-length crops [C, T] with a validity length.

    Train: the crop start is uniform in [0, max(0, duration - segment * min_segment_ratio)], so at least
    `min_segment_ratio` of the crop is real audio whenever the file is that long; shorter files and
    crops that run past the end are zero-padded (the mask marks the real part).
    Valid: crops start at 0. `segment_duration=None` keeps whole files (padded to the batch's longest).
    A crop whose peak exceeds `max_peak` (full scale is 1.0) is skipped like a non-finite one.
    """

    def __init__(self, sample_rate: int = 32000, channels: int = 1, segment_duration: float | None = 30.0,
                 min_segment_ratio: float = 0.8, text: TextAugment | None = None,
                 normalize_loudness: bool = False, loudness_target: float = -14.0, max_peak: float = 10.0):
        check_crop_options(segment_duration, min_segment_ratio)
        self.sample_rate, self.channels = sample_rate, channels
        self.segment_duration, self.min_segment_ratio = segment_duration, min_segment_ratio
        self.text = text or TextAugment()
        self.normalize_loudness, self.loudness_target = normalize_loudness, loudness_target
        if not max_peak > 0:
            raise ConfigError(f"max_peak={max_peak}: must be > 0 (full scale is 1.0)")
        self.max_peak = max_peak

    def plan(self, sample: dict, rng: np.random.Generator | None) -> dict:
        """Cheap part (no decoding): metadata, crop position and caption. rng=None -> validation."""
        meta = _meta_of(sample)
        u = float(rng.random()) if rng is not None else 0.0
        text = self.text.sample(meta, rng) if rng is not None else TextAugment.deterministic(meta)
        return {"meta": meta, "u": u, "text": text}

    def _audio_member(self, sample: dict) -> bytes:
        for ext in AUDIO_EXTS:
            if ext in sample:
                return sample[ext]
        raise CorruptSample(f"{sample.get('__key__')}: no audio member ({'/'.join(AUDIO_EXTS)})", "no audio member")

    def load(self, sample: dict, plan: dict) -> dict:
        blob, meta, seg = self._audio_member(sample), plan["meta"], self.segment_duration
        duration = meta.get("duration")
        try:
            if seg is not None and isinstance(duration, (int, float)) and duration > 0:
                start = plan["u"] * max(0.0, duration - seg * self.min_segment_ratio)
                wav, sr = read_audio(io.BytesIO(blob), start=start, duration=seg)
            else:  # unknown duration: decode everything, then crop
                wav, sr = read_audio(io.BytesIO(blob))
                duration = wav.shape[-1] / sr
                start = 0.0
                if seg is not None:
                    start = plan["u"] * max(0.0, duration - seg * self.min_segment_ratio)
                    first = int(round(start * sr))
                    wav = wav[:, first:first + int(round(seg * sr))]
        except AudioReadError as exc:
            raise CorruptSample(str(exc), "undecodable audio") from None
        if wav.shape[-1] == 0:
            raise CorruptSample(f"{sample.get('__key__')}: no audio samples", "empty audio")
        if not torch.isfinite(wav).all():
            raise CorruptSample(f"{sample.get('__key__')}: non-finite audio samples", "non-finite audio")
        peak = float(wav.abs().max())
        if peak > self.max_peak:
            raise CorruptSample(f"{sample.get('__key__')}: peak {peak:.3g} above max_peak={self.max_peak:g}",
                                "absurd peak")
        wav = resample(convert_channels(wav, self.channels), sr, self.sample_rate)
        if self.normalize_loudness:
            from lightning_musicgen.audio.loudness import normalize_loudness
            wav = normalize_loudness(wav, self.sample_rate, self.loudness_target)
        if seg is not None:
            wav = wav[:, :int(round(seg * self.sample_rate))]
        info = {**meta, "key": sample.get("__key__"), "shard": sample.get("__url__"),
                "start": round(start, 4), "duration": duration}
        item = {"x": wav, "length": wav.shape[-1], "text": plan["text"], "meta": info}
        if MELODY_MEMBER in sample:
            item["melody"] = self._melody_crop(sample, start, wav.shape[-1])
        return item

    def _melody_crop(self, sample: dict, start: float, length: int) -> torch.Tensor:
        """The melody file's [C, length] crop over the same time span as the audio (zero-padded past its end)."""
        try:
            wav, sr = read_audio(io.BytesIO(sample[MELODY_MEMBER]), start=start,
                                 duration=length / self.sample_rate)
        except AudioReadError as exc:
            raise CorruptSample(f"{sample.get('__key__')}: melody: {exc}", "undecodable melody") from None
        if not torch.isfinite(wav).all():
            raise CorruptSample(f"{sample.get('__key__')}: non-finite melody samples", "non-finite melody")
        if wav.shape[-1] == 0:  # the melody file ended before this crop: silence, i.e. the null melody
            return torch.zeros(self.channels, length)
        wav = resample(convert_channels(wav, self.channels), sr, self.sample_rate)[:, :length]
        return torch.nn.functional.pad(wav, (0, length - wav.shape[-1]))

    def collate(self, items: list[dict]) -> dict:
        target = (int(round(self.segment_duration * self.sample_rate)) if self.segment_duration is not None
                  else max(it["length"] for it in items))
        wav = torch.zeros(len(items), self.channels, target)
        mask = torch.zeros(len(items), target, dtype=torch.bool)
        for i, it in enumerate(items):
            wav[i, :, :it["length"]] = it["x"]
            mask[i, :it["length"]] = True
        batch = {"wav": wav, "mask": mask, "text": [it["text"] for it in items],
                 "meta": [it["meta"] for it in items]}
        if any("melody" in it for it in items):
            melody = wav.clone()  # samples without a melody file: the chroma of their own crop
            for i, it in enumerate(items):
                if "melody" in it:
                    melody[i].zero_()
                    melody[i, :, :it["length"]] = it["melody"]
            batch["melody"] = melody
        return batch


def check_crop_options(segment_duration: float | None, min_segment_ratio: float) -> None:
    if segment_duration is not None and not segment_duration > 0:
        raise ConfigError(f"segment_duration={segment_duration}: must be > 0 (or None for whole files)")
    if not 0.0 <= min_segment_ratio <= 1.0:
        raise ConfigError(f"min_segment_ratio={min_segment_ratio}: must be in [0, 1]")


class CodeCrops:
    """Decode token samples (`codes.npy`: int [K, F]) into crops of `segment_duration` seconds of frames.

    Same crop rule as `AudioCrops`, in frames; padding positions hold 0 and mask False. Samples written by
    `tokenize --chroma` also give the chroma of the crop: the stored argmax bins from the chroma frame
    nearest the crop start (within half a chroma hop), as many frames as the extractor makes for the
    crop's audio (T // hop + 1), one-hot; frames past the end of the piece hold bin 0 (the null melody).
    """

    def __init__(self, segment_duration: float | None = 30.0, min_segment_ratio: float = 0.8,
                 text: TextAugment | None = None):
        check_crop_options(segment_duration, min_segment_ratio)
        self.segment_duration, self.min_segment_ratio = segment_duration, min_segment_ratio
        self.text = text or TextAugment()

    plan = AudioCrops.plan

    def load(self, sample: dict, plan: dict) -> dict:
        try:  # token shards of earlier versions: cardinality -> card, num_codebooks -> n_q
            meta = current_names(plan["meta"], f"{sample.get('__key__')}: token metadata")
        except ConfigError as exc:
            raise CorruptSample(str(exc), "invalid json") from None
        if "codes.npy" not in sample:
            raise CorruptSample(f"{sample.get('__key__')}: no codes.npy member", "no codes member")
        try:
            codes = np.load(io.BytesIO(sample["codes.npy"]), allow_pickle=False)
        except Exception as exc:
            raise CorruptSample(f"{sample.get('__key__')}: unreadable codes ({exc})", "unreadable codes") from None
        frame_rate = meta.get("frame_rate")
        if codes.ndim != 2 or codes.shape[1] == 0 or not frame_rate:
            raise CorruptSample(f"{sample.get('__key__')}: codes shape {codes.shape} / frame_rate {frame_rate}",
                                "unreadable codes")
        frames, start = codes.shape[1], 0
        if self.segment_duration is not None:
            seg = int(round(self.segment_duration * frame_rate))
            max_start = max(0, frames - int(round(seg * self.min_segment_ratio)))
            start = min(int(plan["u"] * (max_start + 1)), max_start)
            codes = codes[:, start:start + seg]
        x = torch.from_numpy(codes.astype(np.int64))
        info = {**meta, "key": sample.get("__key__"), "shard": sample.get("__url__"),
                "start": round(start / frame_rate, 4)}
        item = {"x": x, "length": x.shape[-1], "text": plan["text"], "meta": info, "frame_rate": frame_rate}
        if "chroma.npy" in sample:
            item["chroma"] = self.chroma_crop(sample, meta, start / frame_rate)
        return item

    def chroma_frames(self, meta: dict, seconds: float) -> int:
        c = meta["chroma"]
        return int(round(seconds * c["sample_rate"])) // c["hop_length"] + 1

    def chroma_crop(self, sample: dict, meta: dict, start_seconds: float) -> torch.Tensor:
        """The crop's chroma bins, long [Fc] (see the class docstring)."""
        c = meta.get("chroma")
        try:
            bins = np.load(io.BytesIO(sample["chroma.npy"]), allow_pickle=False)
            rate = c["sample_rate"] / c["hop_length"]
        except Exception as exc:
            raise CorruptSample(f"{sample.get('__key__')}: unreadable chroma ({exc})", "unreadable chroma") from None
        seconds = self.segment_duration if self.segment_duration is not None else meta["duration"]
        first, count = int(round(start_seconds * rate)), self.chroma_frames(meta, seconds)
        out = np.zeros(count, dtype=np.int64)
        part = bins[first:first + count]
        out[:len(part)] = part
        return torch.from_numpy(out)

    def collate(self, items: list[dict]) -> dict:
        k = items[0]["x"].shape[0]
        if any(it["x"].shape[0] != k for it in items):
            raise InputError("token shards mix different numbers of codebooks")
        target = (int(round(self.segment_duration * items[0]["frame_rate"])) if self.segment_duration is not None
                  else max(it["length"] for it in items))
        codes = torch.zeros(len(items), k, target, dtype=torch.long)
        mask = torch.zeros(len(items), target, dtype=torch.bool)
        for i, it in enumerate(items):
            codes[i, :, :it["length"]] = it["x"]
            mask[i, :it["length"]] = True
        batch = {"codes": codes, "mask": mask, "text": [it["text"] for it in items],
                 "meta": [it["meta"] for it in items]}
        with_chroma = sum("chroma" in it for it in items)
        if with_chroma:
            settings = {json.dumps({k: v for k, v in it["meta"].get("chroma", {}).items() if k != "source"},
                                   sort_keys=True) for it in items if "chroma" in it}
            if with_chroma != len(items) or len(settings) != 1:
                raise InputError("token shards mix samples with and without chroma (or with different chroma "
                                 "hops): tokenize them all the same way (--chroma, --chroma-hop-length)")
            frames = max(len(it["chroma"]) for it in items)
            bins = torch.zeros(len(items), frames, dtype=torch.long)
            for i, it in enumerate(items):
                bins[i, :len(it["chroma"])] = it["chroma"]
            n_chroma = int(items[0]["meta"]["chroma"].get("n_chroma", 12))
            batch["chroma"] = torch.nn.functional.one_hot(bins.clamp(max=n_chroma - 1), n_chroma).float()
        return batch


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def skip_reason(exc: BaseException) -> str:
    """The short category a skipped sample or shard is counted under."""
    if isinstance(exc, CorruptSample):
        return exc.reason
    if isinstance(exc, FileNotFoundError) or "No such file" in str(exc):
        return "missing shard"
    return "unreadable shard"


class _Counter:
    """Skipped-sample bookkeeping of one worker: total, per reason, first example of each reason."""

    def __init__(self, slot: int):
        self.slot, self.skipped, self.errors = slot, 0, []
        self.reasons: dict[str, int] = {}
        self.examples: dict[str, str] = {}

    def add(self, exc: Exception) -> None:
        self.skipped += 1
        reason = skip_reason(exc)
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        detail = str(exc).splitlines()[0][:300] if str(exc) else repr(exc)
        self.examples.setdefault(reason, detail)
        if len(self.errors) < 20:
            self.errors.append(detail)

    def annotate(self, meta: dict) -> None:
        meta.update(worker=self.slot, skipped_samples=self.skipped, skip_reasons=dict(self.reasons),
                    skip_examples=dict(self.examples))

    def summary(self) -> str:
        return ", ".join(f"{reason} x{n} (e.g. {self.examples[reason]})" for reason, n in self.reasons.items())


class TrainStream(IterableDataset):
    """Endless, resampled training batches; one "epoch" is `epoch_batches` batches (see module docstring).

    `epoch` and `skip_batches` are set by the datamodule before each new iterator (they reach the workers
    because the DataLoader pickles the dataset when it starts them).
    """

    def __init__(self, urls: list[str], decoder, batch_size: int, epoch_batches: int, seed: int = 0,
                 shuffle_buffer: int = 256, rank: int = 0, world_size: int = 1):
        if not urls:
            raise InputError("train stream: empty shard list")
        if batch_size < 1 or epoch_batches < 1:
            raise ConfigError(f"batch_size={batch_size}, epoch_steps={epoch_batches}: both must be >= 1")
        self.urls, self.decoder, self.batch_size = list(urls), decoder, batch_size
        self.epoch_batches, self.seed, self.shuffle_buffer = epoch_batches, seed, shuffle_buffer
        self.rank, self.world_size = rank, world_size
        self.epoch, self.skip_batches = 0, 0

    def __len__(self) -> int:
        return self.epoch_batches

    def _no_usable_samples(self, counter: _Counter, what: str) -> NoUsableSamples:
        shards = sorted(set(self.urls))
        named = ", ".join(shards[:5]) + (f" and {len(shards) - 5} more" if len(shards) > 5 else "")
        return NoUsableSamples(f"no usable training sample: {what} in {len(shards)} shard(s) ({named}); "
                               f"skipped: {counter.summary() or 'the shards hold no samples'}")

    def _samples(self, rng: np.random.Generator, counter: _Counter, bad_shards: set) -> Iterator[dict]:
        empty_run = 0
        while True:
            url = self.urls[int(rng.integers(len(self.urls)))]
            got = 0
            for sample in iter_tar_samples(url, counter.add):
                got += 1
                yield sample
            if not got:
                bad_shards.add(url)
            empty_run = 0 if got else empty_run + 1
            if empty_run > 2 * len(self.urls) + 10:
                raise self._no_usable_samples(counter, f"{empty_run} shard reads in a row gave no sample")

    def _shuffled(self, rng: np.random.Generator, counter: _Counter, bad_shards: set) -> Iterator[dict]:
        buffer: list[dict] = []
        for sample in self._samples(rng, counter, bad_shards):
            if len(buffer) < self.shuffle_buffer:
                buffer.append(sample)
                if len(buffer) < self.shuffle_buffer:
                    continue
            i = int(rng.integers(len(buffer)))
            buffer[i], buffer[-1] = buffer[-1], buffer[i]
            yield buffer.pop()

    def __iter__(self) -> Iterator[dict]:
        worker, num_workers = _worker()
        rng = np.random.default_rng([self.seed, self.rank, worker, self.epoch])
        counter = _Counter(self.rank * num_workers + worker)
        # shards that gave no usable sample since the last sample that decoded (and whether one ever did)
        bad_shards: set[str] = set()
        all_shards, decoded_any, failures_in_a_row = set(self.urls), False, 0
        stream = self._shuffled(rng, counter, bad_shards) if self.shuffle_buffer > 1 \
            else self._samples(rng, counter, bad_shards)
        for batch_index in range(worker, self.epoch_batches, num_workers):
            replay = batch_index < self.skip_batches
            items = []
            while len(items) < self.batch_size:
                sample = next(stream)
                try:
                    plan = self.decoder.plan(sample, rng)
                    items.append(None if replay else self.decoder.load(sample, plan))
                    decoded_any, failures_in_a_row = True, 0
                    bad_shards.clear()
                except CorruptSample as exc:
                    counter.add(exc)
                    failures_in_a_row += 1
                    bad_shards.add(sample.get("__url__"))
                    limit = 10_000 if decoded_any else 2_000
                    if failures_in_a_row >= limit and bad_shards >= all_shards:
                        raise self._no_usable_samples(counter, f"{failures_in_a_row} samples in a row failed, "
                                                      "from every shard") from None
            if replay:  # a placeholder keeps the DataLoader's worker round-robin aligned with batch indices
                yield {REPLAYED: batch_index}
                continue
            for it in items:
                counter.annotate(it["meta"])
                it["meta"]["epoch"] = self.epoch
            yield self.decoder.collate(items)


class ValidStream(IterableDataset):
    """Every sample exactly once, deterministically (see module docstring)."""

    def __init__(self, urls: list[str], decoder, batch_size: int, rank: int = 0, world_size: int = 1):
        if not urls:
            raise InputError("validation stream: empty shard list")
        self.urls, self.decoder, self.batch_size = list(urls), decoder, batch_size
        self.rank, self.world_size = rank, world_size

    def _my_samples(self, counter: _Counter, slot: int, slots: int) -> Iterator[dict]:
        if len(self.urls) >= slots:
            for url in self.urls[slot::slots]:
                yield from iter_tar_samples(url, counter.add)
        else:
            index = 0
            for url in self.urls:
                for sample in iter_tar_samples(url, counter.add):
                    if index % slots == slot:
                        yield sample
                    index += 1

    def __iter__(self) -> Iterator[dict]:
        worker, num_workers = _worker()
        slots, slot = self.world_size * num_workers, self.rank * num_workers + worker
        counter = _Counter(slot)
        items = []
        for sample in self._my_samples(counter, slot, slots):
            try:
                items.append(self.decoder.load(sample, self.decoder.plan(sample, None)))
            except CorruptSample as exc:
                counter.add(exc)
            if len(items) == self.batch_size:
                yield self._finish(items, counter)
                items = []
        if items:
            yield self._finish(items, counter)

    def _finish(self, items: list[dict], counter: _Counter) -> dict:
        for it in items:
            counter.annotate(it["meta"])
        return self.decoder.collate(items)
