"""Checkpoint files that are either complete or absent, and errors that name the file.

`AtomicCheckpointIO` (every config in configs/trainer/ uses it) writes a local checkpoint to a temporary
file in the destination folder, fsyncs it, renames it over the target (`os.replace`, atomic on POSIX) and
fsyncs the folder. Nothing goes through /tmp (Lightning's default write stages local files in /tmp and
moves them, which is a copy when the checkpoint folder is on another filesystem). So:
- a kill at any moment leaves the previous checkpoint intact; the temporary file a killed process leaves
  (`.NAME.HOST.PID.tmp`) is removed by the next write into that folder from the same host;
- a write that fails (full disk, quota, I/O error) removes its temporary file and ends the run with one line
  (`RunAborted`): no file appears under a checkpoint name and ModelCheckpoint deletes no older one;
- a state dict with a NaN/inf tensor is never written (one line naming the first such key);
- loading an unreadable file (truncated, empty, not a checkpoint) ends with one line naming it and the newest
  readable checkpoint of its folder.
Remote (fsspec) paths are serialised in memory and written in one `pipe`: an object-store PUT is atomic already.

`set_aside_diverged` is what NonFiniteGuard does with a local checkpoint folder when a run diverged: the
checkpoints this run wrote from weights of the divergence (global_step >= its first step) are renamed
`NAME.diverged` (not deleted; no longer `*.ckpt`, so neither `--ckpt_path last` nor a glob picks them), and a
`last.ckpt` so set aside is replaced by a hard link to the newest remaining checkpoint from before.
"""
from __future__ import annotations

import errno
import io
import os
import shutil
import socket
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import fsspec
import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lightning_musicgen.reliability import RunAborted


def _is_local(path: str) -> bool:
    return "file" in get_filesystem(path).protocol


def _host() -> str:
    return socket.gethostname().replace(".", "_")


def _temp_prefix(path: str) -> str:
    return f".{os.path.basename(path)}.{_host()}."


def _remove_stale_temps(folder: str) -> None:
    """Temporary files of processes of this host that no longer exist (killed mid-write)."""
    host = _host()
    for entry in os.scandir(folder):
        name = entry.name
        if not (name.startswith(".") and name.endswith(".tmp")):
            continue
        parts = name[1:-4].rsplit(".", 3)  # NAME.HOST.PID.RANDOM
        if len(parts) != 4 or parts[1] != host or not parts[2].isdigit():
            continue
        pid = int(parts[2])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            Path(entry.path).unlink(missing_ok=True)
        except PermissionError:
            pass


def _save_remote(checkpoint: dict[str, Any], path: str) -> None:
    """Serialise in memory, then write the object in one `pipe` (a single PUT on object stores: the
    object appears complete or not at all)."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    fs, urlpath = fsspec.core.url_to_fs(path)
    fs.pipe(urlpath, buffer.getvalue())


def _os_error_in(exc: BaseException | None) -> OSError | None:
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def first_nonfinite_key(state: Any, prefix: str = "") -> str | None:
    """The first floating tensor with a NaN/inf in a (nested) state dict, or None."""
    if isinstance(state, torch.Tensor):
        if state.is_floating_point() or state.is_complex():
            return None if bool(torch.isfinite(state).all()) else (prefix or "<tensor>")
        return None
    if isinstance(state, dict):
        items = state.items()
    elif isinstance(state, (list, tuple)):
        items = enumerate(state)
    else:
        return None
    for key, value in items:
        found = first_nonfinite_key(value, f"{prefix}.{key}" if prefix else str(key))
        if found is not None:
            return found
    return None


def is_readable_checkpoint(path: str | os.PathLike) -> bool:
    """A complete torch zip archive whose members pass their CRC check (reads the file, loads nothing)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None and any(n.endswith("data.pkl") for n in archive.namelist())
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False


def newest_readable_checkpoint(folder: str | os.PathLike, exclude: str | os.PathLike | None = None) -> str | None:
    paths = sorted(Path(folder).glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in paths:
        if exclude is not None and os.path.abspath(path) == os.path.abspath(exclude):
            continue
        if is_readable_checkpoint(path):
            return str(path)
    return None


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The `global_step` stored in a checkpoint file, or None when it has none or cannot be read. Reads the
    pickle only: the tensors are memory-mapped, not loaded."""
    for weights_only in (True, False):  # our own files: a class in hyper_parameters needs the full unpickler
        try:
            checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=weights_only)
        except Exception:
            continue
        step = checkpoint.get("global_step") if isinstance(checkpoint, dict) else None
        return int(step) if isinstance(step, int) else None
    return None


@dataclass
class SetAside:
    """What `set_aside_diverged` did in one folder."""
    moved: list[str] = field(default_factory=list)   # the new names (NAME.diverged)
    good: str | None = None                          # newest checkpoint from before the divergence
    good_step: int | None = None
    relinked: str | None = None                      # last.ckpt, now a hard link to `good`


def _unused_name(path: Path) -> Path:
    candidate, n = path.with_name(path.name + ".diverged"), 1
    while candidate.exists() or candidate.is_symlink():
        candidate, n = path.with_name(f"{path.name}.diverged-{n}"), n + 1
    return candidate


def set_aside_diverged(folder: str | os.PathLike, first_bad_step: int, written_since: float,
                       last_name: str = "last.ckpt") -> SetAside:
    """Rename the `*.ckpt` of `folder` written at or after `written_since` (a time.time()) whose global_step is
    >= `first_bad_step` to `NAME.diverged`; files written before are never touched. If `last_name` was set
    aside, it becomes a hard link (a copy where links fail) to the newest remaining checkpoint with a
    global_step < `first_bad_step`, if there is one."""
    folder, result = Path(folder), SetAside()
    if not folder.is_dir():
        return result
    last = folder / last_name
    for path in sorted(folder.glob("*.ckpt")):
        if path.is_symlink():  # save_last="link": a link into a file that is set aside goes with it
            target = path.resolve()
            step = checkpoint_step(target) if target.exists() else None
            if step is not None and step >= first_bad_step and path.lstat().st_mtime >= written_since:
                path.unlink()
                result.moved.append(f"{path.name} (a link)")
            continue
        if not path.is_file() or path.stat().st_mtime < written_since:
            continue
        step = checkpoint_step(path)
        if step is not None and step >= first_bad_step:
            target = _unused_name(path)
            os.replace(path, target)
            result.moved.append(target.name)
    good = [(step, path.name != last_name, path) for path in folder.glob("*.ckpt")
            if not path.is_symlink() and (step := checkpoint_step(path)) is not None and step < first_bad_step]
    if good:
        result.good_step, _, best = max(good)
        result.good = str(best)
        if not last.exists() and not last.is_symlink() and any(m.startswith(last_name) for m in result.moved):
            tmp = folder / f"{_temp_prefix(str(last))}{os.getpid()}.link.tmp"
            try:
                os.link(best, tmp)
            except OSError:
                shutil.copy2(best, tmp)
            os.replace(tmp, last)
            result.relinked = str(last)
    return result


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` with atomic local writes, a non-finite check and one-line errors (module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options, got {storage_options!r}")
        path = os.fspath(path)
        bad = first_nonfinite_key(checkpoint.get("state_dict", {}))
        if bad is not None:
            raise RunAborted(f"not writing checkpoint {path}: weight {bad} is not finite (NaN/inf); the previous "
                             "checkpoints are kept")
        if not _is_local(path):
            _save_remote(checkpoint, path)
            return
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        _remove_stale_temps(folder)
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=f"{_temp_prefix(path)}{os.getpid()}.", suffix=".tmp", dir=folder)
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except Exception as exc:  # torch.save reports a failed write as a RuntimeError: find the OSError
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            os_error = _os_error_in(exc)
            if os_error is None and not isinstance(exc, RuntimeError):
                raise
            free = shutil.disk_usage(folder).free / 2**20
            if os_error is not None and os_error.errno not in (errno.ENOSPC, errno.EDQUOT):
                reason = os_error.strerror or str(os_error)
            else:
                reason = "no space left on device" if os_error is not None or free < 1 else str(exc).splitlines()[0]
            raise RunAborted(f"cannot write checkpoint {path}: {reason} ({free:.1f} MiB free in {folder}); "
                             "nothing was written under that name and the previous checkpoints are intact") from None
        except BaseException:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(folder, os.O_RDONLY)
        try:  # make the rename itself durable
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def load_checkpoint(self, path, map_location: Optional[Any] = None, weights_only: Optional[bool] = None):
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except FileNotFoundError:
            raise
        except Exception as exc:
            path = os.fspath(path)
            if not _is_local(path) or is_readable_checkpoint(path):
                raise  # readable archive: the error is about its content, not the file
            size = os.path.getsize(path) if os.path.exists(path) else 0
            newest = newest_readable_checkpoint(os.path.dirname(os.path.abspath(path)), exclude=path)
            hint = (f"the newest readable checkpoint there is {newest} (resume with --ckpt_path {newest})"
                    if newest else "no other readable checkpoint in that folder")
            raise RunAborted(f"cannot read checkpoint {path} ({size} bytes, {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0].split('. ')[0] if str(exc) else 'truncated'}); "
                             f"{hint}") from None
