"""Atomic checkpoint writes: a killed job never leaves a half-written `last.ckpt` behind."""
from __future__ import annotations

import os
import tempfile
from typing import Any, Optional

import torch
from lightning.fabric.utilities.cloud_io import _atomic_save, get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` that writes to a temporary file in the target folder, fsyncs it and
    renames it over the target (`os.replace` is atomic on POSIX). A SIGKILL or a node failure
    during the write leaves the previous checkpoint intact and at most a stray `.tmp` file.
    Remote (fsspec) paths use Lightning's write: an object-store PUT is atomic already."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options, got {storage_options!r}")
        path = os.fspath(path)
        if "file" not in get_filesystem(path).protocol:
            _atomic_save(checkpoint, path)
            return
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        dir_fd = os.open(folder, os.O_RDONLY)
        try:  # make the rename itself durable
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
