"""Read TensorFlow (v1/v2 "tensor bundle") checkpoints without TensorFlow.

A checkpoint `PREFIX` is `PREFIX.index` (a LevelDB-format table: tensor name -> BundleEntryProto
with dtype, shape, shard, offset, size) and `PREFIX.data-SSSSS-of-NNNNN` (raw little-endian
tensor bytes). Only uncompressed tables and plain (unsliced) numeric tensors are supported,
which is what `tf.train.Saver` writes.
"""
from __future__ import annotations

import os
import struct

import numpy as np

from lightning_musicgen.errors import CheckpointError, MissingFileError

TABLE_MAGIC = 0xDB4775248B80FB57
# TensorFlow DataType enum -> numpy dtype (little-endian)
DTYPES = {1: "<f4", 2: "<f8", 3: "<i4", 4: "u1", 5: "<i2", 6: "i1", 9: "<i8", 10: "?", 14: "<u2", 19: "<f2"}


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes):
    """Yield (field_number, wire_type, value) of a protobuf message (varint, 64-bit, bytes, 32-bit)."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def _block_entries(data: bytes, offset: int, size: int):
    """Yield (key, value) of one table block (prefix-compressed keys, restart array at the end)."""
    block = data[offset:offset + size]
    if data[offset + size] != 0:
        raise ValueError("compressed checkpoint tables are not supported")
    num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    end = len(block) - 4 - 4 * num_restarts
    pos, key = 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        value_len, pos = _varint(block, pos)
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        yield key, block[pos:pos + value_len]
        pos += value_len


def _parse_entry(value: bytes) -> dict:
    entry = {"dtype": 1, "shape": [], "shard_id": 0, "offset": 0, "size": 0, "sliced": False}
    for number, _, v in _fields(value):
        if number == 1:
            entry["dtype"] = v
        elif number == 2:
            for dim_number, _, dim in _fields(v):
                if dim_number == 2:  # TensorShapeProto.dim
                    size = next((s for n, _, s in _fields(dim) if n == 1), 0)
                    entry["shape"].append(size)
        elif number == 3:
            entry["shard_id"] = v
        elif number == 4:
            entry["offset"] = v
        elif number == 5:
            entry["size"] = v
        elif number == 7:
            entry["sliced"] = True
    return entry


def read_tf_checkpoint(prefix: str | os.PathLike) -> dict[str, np.ndarray]:
    """Return {variable name: numpy array} for every tensor of the checkpoint at `prefix`."""
    prefix = os.fspath(prefix)
    index_path = prefix + ".index"
    try:
        with open(index_path, "rb") as f:
            index = f.read()
    except OSError as exc:
        raise MissingFileError(f"{index_path}: cannot read TensorFlow checkpoint index ({exc.strerror})") from None
    if len(index) < 48 or struct.unpack_from("<Q", index, len(index) - 8)[0] != TABLE_MAGIC:
        raise CheckpointError(f"{index_path}: not a TensorFlow checkpoint index")
    footer = index[-48:]
    _, pos = _varint(footer, 0)  # metaindex handle (unused)
    _, pos = _varint(footer, pos)
    index_offset, pos = _varint(footer, pos)
    index_size, _ = _varint(footer, pos)
    entries = {}
    for _, handle in _block_entries(index, index_offset, index_size):
        offset, p = _varint(handle, 0)
        size, _ = _varint(handle, p)
        for key, value in _block_entries(index, offset, size):
            if key:  # the empty key holds the BundleHeaderProto
                entries[key.decode()] = _parse_entry(value)
    num_shards = 1
    shards: dict[int, bytes] = {}
    tensors = {}
    for name, entry in entries.items():
        if entry["sliced"] or entry["dtype"] not in DTYPES:
            continue  # partitioned variables / strings: never used by the embedders
        shard = entry["shard_id"]
        if shard not in shards:
            num_shards = max(num_shards, shard + 1)
            path = f"{prefix}.data-{shard:05d}-of-{num_shards:05d}"
            if not os.path.exists(path):  # the shard count is not in the entries: find the file
                folder, base = os.path.split(prefix)
                match = [n for n in os.listdir(folder or ".") if n.startswith(f"{base}.data-{shard:05d}-of-")]
                if not match:
                    raise MissingFileError(f"{prefix}.data-{shard:05d}-of-*: TensorFlow checkpoint shard missing")
                path = os.path.join(folder, match[0])
            with open(path, "rb") as f:
                shards[shard] = f.read()
        raw = shards[shard][entry["offset"]:entry["offset"] + entry["size"]]
        tensors[name] = np.frombuffer(raw, dtype=DTYPES[entry["dtype"]]).reshape(entry["shape"]).copy()
    return tensors
