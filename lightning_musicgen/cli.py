"""LightningCLI for fit / validate / test / predict (subclass mode, OmegaConf interpolation), and the
one-line form of its errors: jsonargparse's nested validation report -> `CONFIG: KEY=VALUE: reason`,
a YAML syntax error -> `FILE:LINE:COLUMN: invalid YAML (...)` (printed by `lightning_musicgen.__main__`)."""
from __future__ import annotations

import inspect
import re
import warnings
from typing import Literal, Optional, Union, get_type_hints

import lightning.pytorch as pl
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from lightning_musicgen.precision import training_precision


# Lightning warnings that are expected with this package's modules and data, silenced so that real
# ones stand out: our IterableDatasets split shards per worker themselves (their __len__ is the
# per-rank epoch length); CodecModule checkpoints the post-step state on purpose (manual GAN
# optimisation); the LeafSpec deprecation comes from Lightning itself under torch 2.11.
EXPECTED_WARNINGS = (
    r"Your `IterableDataset` has `__len__` defined",
    r"Using ModelCheckpoint with manual optimization and every_n_train_steps",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)


def silence_expected_warnings() -> None:
    for message in EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


# Lightning's own accepted precision values, plus "auto".
PrecisionInput = Optional[Union[Literal["auto"], get_type_hints(pl.Trainer.__init__)["precision"]]]


class Trainer(pl.Trainer):
    """Lightning's Trainer whose `precision` defaults to "auto": bf16-mixed where bf16 is fast (CUDA
    with native bf16, a CPU with AVX512-BF16/AMX), 32-true elsewhere; one log line says which and
    why (`lightning_musicgen.precision.training_precision`). Any other value works as in Lightning.

    A flag that turns a feature off also drops the config's callbacks of that feature, with one log line
    (Lightning refuses the combination): `enable_progress_bar=false` the progress bars,
    `enable_checkpointing=false` the ModelCheckpoints, `logger=false` the LearningRateMonitors. A value
    Lightning rejects (`accelerator: gpu` without a GPU, `devices`, `strategy`, `max_steps`, ...) is a
    `ConfigError` naming the option: one line on the command line."""

    def __init__(self, *args, precision: PrecisionInput = "auto", **kwargs):
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        from lightning_musicgen.errors import ConfigError, one_line
        accelerator = str(kwargs.get("accelerator") or "auto")
        check_accelerator(accelerator, kwargs.get("devices", "auto"))
        kwargs["callbacks"] = drop_disabled_callbacks(kwargs.get("callbacks"), kwargs)
        device_type = "cpu" if accelerator == "cpu" else ("cuda" if accelerator in ("cuda", "gpu") else None)
        precision, reason = training_precision(precision, device_type)
        rank_zero_info(reason)
        if isinstance(kwargs.get("accumulate_grad_batches"), int) and kwargs["accumulate_grad_batches"] < 1:
            raise ConfigError(f"trainer.accumulate_grad_batches={kwargs['accumulate_grad_batches']}: must be >= 1")
        try:
            super().__init__(*args, precision=precision, **kwargs)
        except ConfigError:
            raise
        except ModuleNotFoundError as exc:  # an accelerator/strategy/logger whose package is not installed
            chosen = ", ".join(f"{k}={kwargs[k]!r}" for k in ("accelerator", "strategy") if isinstance(kwargs.get(k), str))
            raise ConfigError(f"trainer ({chosen}): {one_line(str(exc))}") from exc
        except (MisconfigurationException, ValueError) as exc:
            raise ConfigError(lightning_error_line(exc)) from exc


def lightning_error_line(exc: BaseException) -> str:
    """Lightning's message of a rejected Trainer/callback value, in one line that starts with the option
    it names (`trainer.max_steps: ...`)."""
    from lightning_musicgen.errors import one_line
    message = one_line(str(exc)).split(" Find a complete list", 1)[0]
    message = re.sub(r"\. Example choices:.*", "", message)
    if message.startswith("`Timer(duration="):
        return f"trainer.max_time: {message}"
    words = (m.group(1) for m in re.finditer(r"\b([a-z_]+)\b", message))
    named = next((w for w in words if w in TRAINER_OPTIONS), None)
    return f"trainer.{named}: {message}" if named else message


TRAINER_OPTIONS = set(inspect.signature(pl.Trainer.__init__).parameters) - {"self"}


def check_accelerator(accelerator: str, devices) -> None:
    """`accelerator: gpu|cuda` on a machine without CUDA, or more `devices` than it has: a ConfigError."""
    import torch

    from lightning_musicgen.errors import ConfigError
    if accelerator not in ("gpu", "cuda"):
        return
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if available == 0:
        raise ConfigError(f"trainer.accelerator={accelerator!r}: no CUDA GPU is available on this machine "
                          "(use cpu or auto)")
    if isinstance(devices, int) and devices > available:
        raise ConfigError(f"trainer.devices={devices}: this machine has {available} CUDA GPU(s)")


def drop_disabled_callbacks(callbacks, kwargs: dict):
    """`callbacks` without those of a feature its flag turns off (see Trainer), one log line per kind."""
    from lightning.pytorch.callbacks import Checkpoint, LearningRateMonitor, ProgressBar
    if callbacks is None:
        return None
    single = not isinstance(callbacks, (list, tuple))
    callbacks = [callbacks] if single else list(callbacks)
    logger = kwargs.get("logger", None)
    off = [("enable_progress_bar", kwargs.get("enable_progress_bar") is False, ProgressBar),
           ("enable_checkpointing", kwargs.get("enable_checkpointing") is False, Checkpoint),
           ("logger", logger is False or logger == [], LearningRateMonitor)]
    for option, disabled, kind in off:
        dropped = [cb for cb in callbacks if disabled and isinstance(cb, kind)]
        if dropped:
            names = ", ".join(sorted({type(cb).__name__ for cb in dropped}))
            rank_zero_info(f"trainer.{option}=false: not using the {names} callback(s) of the config")
            callbacks = [cb for cb in callbacks if not any(cb is d for d in dropped)]
    return callbacks


class MusicGenCLI(LightningCLI):
    """`python -m lightning_musicgen fit --config configs/...yaml` and friends.

    - model and data are given as class_path + init_args (any LightningModule/DataModule);
    - configs are parsed in OmegaConf mode, so `${data.init_args.segment_duration}` works;
    - every option also reads an environment variable (see `fit --help`);
    - the resolved config is saved next to every run's logs.
    """

    def __init__(self, args=None, run: bool = True, **kwargs):
        silence_expected_warnings()
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("auto_configure_optimizers", False)  # modules own their optimizers
        super().__init__(
            LightningModule, LightningDataModule, trainer_class=Trainer,
            subclass_mode_model=True, subclass_mode_data=True,
            parser_kwargs={"parser_mode": "omegaconf", "default_env": True, "exit_on_error": False},
            args=args, run=run, **kwargs)

    def before_instantiate_classes(self) -> None:
        """A `--ckpt_path` file that does not exist ends the run before any model is built."""
        import os

        from lightning.fabric.utilities.cloud_io import get_filesystem

        from lightning_musicgen.errors import CheckpointNotFoundError
        path = self.config.get(self.subcommand, {}).get("ckpt_path") if self.subcommand else None
        if path and str(path) not in ("last", "best", "hpc") and not str(path).startswith("registry"):
            if "file" in get_filesystem(str(path)).protocol and not os.path.exists(path):
                raise CheckpointNotFoundError(f"--ckpt_path {path}: checkpoint not found")


# ---- one-line errors of the training verbs --------------------------------------------------------

BOILERPLATE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value",
               "- Expected a <class 'NoneType'>", "- Problem with given class_path", "Parser key")


def _nested_error(lines: list[str]) -> tuple[str, str | None, str] | None:
    """jsonargparse's nested report -> (dotted key, given value, reason) for its deepest error."""
    rows = [(len(ln) - len(ln.lstrip()), ln.strip()) for ln in lines if ln.strip()]
    reasons = [(i, ind, text) for i, (ind, text) in enumerate(rows) if not text.startswith(BOILERPLATE)]
    if not reasons:
        return None
    at, depth, reason = max(reasons, key=lambda r: r[1])
    chain, level = [], depth
    for ind, text in reversed(rows[:at]):  # the Parser keys enclosing the deepest reason
        m = re.match(r'Parser key "([^"]+)"', text)
        if m and ind < level:
            chain.insert(0, m.group(1))
            level = ind
    owner = None
    for ind, text in reversed(rows[:at]):
        m = re.match(r"- Problem with given class_path '([^']+)'", text)
        if m:
            owner = m.group(1).rsplit(".", 1)[-1]
            break
    value = None
    unknown = re.match(r"Option '([^']+)' is not accepted", reason)
    if unknown:
        chain.append(unknown.group(1))
        reason = f"unknown option (not a field of {owner})" if owner else "unknown option"
    typed = re.match(r"Expected a <class '([^']+)'>\. Got value: (.*)", reason)
    if typed:
        value, reason = typed.group(2), f"expected {typed.group(1)}"
    given = [re.search(r"NestedArg\(key='[^']*', val='(.*)'\)", text) for _, text in rows]
    given = [g for g in given if g]
    if value is None and given:
        value = given[-1].group(1)
    if value is None:
        plain = [text.split(":", 1)[1].strip() for _, text in rows if text.startswith("Given value:")]
        value = plain[-1] if plain else None
    if not chain:
        return None
    if chain[0] in ("model", "data") and len(chain) > 1:
        chain.insert(1, "init_args")
    return ".".join(chain), value, reason


def config_error_line(message: str, argv: list[str]) -> str:
    """jsonargparse's multi-line validation report -> one line naming the config, key, value and
    what was expected (the deepest error of a nested option such as model.init_args.lm.dim)."""
    from lightning_musicgen.errors import one_line
    lines = message.strip().splitlines()
    stripped = [ln.strip() for ln in lines if ln.strip()]
    head = stripped[0].rstrip(":") if stripped else "invalid configuration"
    in_class = any(ln.startswith("- Problem with given class_path") for ln in stripped)
    nested = _nested_error(lines) if in_class else None
    if nested is not None:
        key, value, reason = nested
        head = f"{key}" + (f"={value!r}" if value is not None else "") + f": {reason}"
    else:
        given = next((ln for ln in stripped if ln.startswith("Given value:")), None)
        key = re.match(r'Parser key "([^"]+)"', head)
        if given and key:
            head = f"{key.group(1)}={given.split(':', 1)[1].strip()!r}: {choices_line(stripped) or 'invalid value'}"
        elif given:
            head += f": invalid value {given.split(':', 1)[1].strip()!r}"
        elif key:
            missing = re.search(r"File does not exist: '([^']+)'", head)
            if key.group(1) == "config" and missing:
                return f"--config {missing.group(1)}: file not found"
            head = f"{key.group(1)}: {head[key.end():].lstrip(': ') or 'invalid value'}"
    configs = config_files(argv)
    return f"{', '.join(configs)}: {head}" if configs else head


def choices_line(report: list[str]) -> str | None:
    """`expected one of a, b, ...` when jsonargparse's `Subtypes: [...]` are all Literals (and None)."""
    subtypes = next((ln for ln in report if ln.startswith("Subtypes:")), None)
    if subtypes is None:
        return None
    body = subtypes.split(":", 1)[1].strip()[1:-1]
    literals = re.findall(r"Literal\[([^\]]*)\]", body)
    rest = re.sub(r"typing\.Literal\[[^\]]*\]|<class 'NoneType'>|[,\s]", "", body)
    if not literals or rest:
        return None
    values = [v.strip().strip("'\"") for group in literals for v in group.split(",")]
    values += ["null"] if "NoneType" in body else []
    return "expected one of " + ", ".join(dict.fromkeys(values))


def config_files(argv: list[str]) -> list[str]:
    """The files given with `--config PATH` or `--config=PATH`."""
    files = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
    return files + [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]


def yaml_error_line(argv: list[str]) -> str | None:
    """`FILE:LINE:COLUMN: invalid YAML (problem)` for the first --config file that does not parse."""
    import yaml
    for path in config_files(argv):
        try:
            with open(path, encoding="utf-8") as f:
                yaml.safe_load(f)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
            return f"{where}: invalid YAML ({exc.problem or exc.context})"
        except (OSError, yaml.YAMLError):
            continue
    return None


def class_name_in(exc: BaseException) -> str | None:
    """The class (`class_path='pkg.Name'`) jsonargparse was instantiating when `exc` was raised."""
    while exc is not None:
        match = re.search(r"class_path='[\w.]*?(\w+)'", str(exc))
        if match:
            return match.group(1)
        exc = exc.__cause__ or exc.__context__
    return None


def training_error_line(exc: BaseException, argv: list[str]) -> str | None:
    """The one line for a training verb's config error (invalid YAML, an option or value the CLI
    rejects, a setting Lightning rejects with its MisconfigurationException), or None when `exc` is none
    of those."""
    from argparse import ArgumentError

    from lightning_musicgen.errors import one_line
    chain, seen = exc, set()
    while chain is not None and id(chain) not in seen:
        seen.add(id(chain))
        if type(chain).__module__.startswith("yaml"):
            return yaml_error_line(argv) or f"invalid YAML ({one_line(str(chain))})"
        chain = chain.__cause__ or chain.__context__
    if isinstance(exc, ArgumentError):
        return config_error_line(str(exc), argv)
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    chain, seen = exc, set()
    while chain is not None and id(chain) not in seen:
        seen.add(id(chain))
        if isinstance(chain, MisconfigurationException):
            return lightning_error_line(chain)
        chain = chain.__cause__ or chain.__context__
    return None
