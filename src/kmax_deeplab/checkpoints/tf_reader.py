"""Read TensorFlow 2 checkpoints (tensor bundles) without TensorFlow.

A TF checkpoint ``PREFIX`` is an ``PREFIX.index`` file plus data shards
``PREFIX.data-SSSSS-of-NNNNN``. The index is an SSTable (LevelDB table format): a
footer pointing at an index block, whose entries point at data blocks, whose entries
map a tensor name to a serialised ``BundleEntryProto`` (dtype, shape, shard id, byte
offset, byte size, masked CRC32C). The empty key holds the ``BundleHeaderProto``
(number of shards, endianness). Tensor bytes are stored raw, row-major, little-endian.

Only the pieces needed for model checkpoints are decoded, by hand: uncompressed blocks,
prefix-compressed keys, varints and the protobuf fields listed above. Partitioned
(sliced) variables and compressed tables are refused with a clear error.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

__all__ = ["TFCheckpointError", "list_variables", "load_variables", "read_bundle_entries"]

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_LEN = 48
_BLOCK_TRAILER_LEN = 5  # 1 byte compression type + 4 bytes masked crc32c

# tensorflow/core/framework/types.proto DataType -> (name, numpy dtype or None).
_DTYPES: dict[int, tuple[str, np.dtype | None]] = {
    1: ("float32", np.dtype("<f4")),
    2: ("float64", np.dtype("<f8")),
    3: ("int32", np.dtype("<i4")),
    4: ("uint8", np.dtype("u1")),
    6: ("int8", np.dtype("i1")),
    7: ("string", None),
    9: ("int64", np.dtype("<i8")),
    10: ("bool", np.dtype("?")),
    14: ("bfloat16", np.dtype("<u2")),  # decoded to float32 (exact)
    19: ("float16", np.dtype("<f2")),
}


class TFCheckpointError(ValueError):
    """A TF checkpoint file is missing, truncated, corrupt or uses an unsupported feature."""


# --------------------------------------------------------------------------- crc32c
# One implementation for the package (google-crc32c, or a tested pure-Python fallback).
from kmax_deeplab.checkpoints.checksums import crc32c as _crc32c  # noqa: E402
from kmax_deeplab.checkpoints.checksums import unmask_crc32c as _unmask_crc  # noqa: E402


# --------------------------------------------------------------------------- varints / protobuf
def _varint(buf: bytes, pos: int, where: str) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise TFCheckpointError(f"{where}: truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise TFCheckpointError(f"{where}: malformed varint")


def _proto_fields(buf: bytes, where: str) -> Iterable[tuple[int, int, int | bytes]]:
    """Yield ``(field_number, wire_type, value)`` for a serialised protobuf message."""
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos, where)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos, where)
        elif wire == 1:
            if pos + 8 > len(buf):
                raise TFCheckpointError(f"{where}: truncated protobuf fixed64")
            value = struct.unpack_from("<Q", buf, pos)[0]
            pos += 8
        elif wire == 2:
            n, pos = _varint(buf, pos, where)
            if pos + n > len(buf):
                raise TFCheckpointError(f"{where}: truncated protobuf field {field}")
            value = bytes(buf[pos:pos + n])
            pos += n
        elif wire == 5:
            if pos + 4 > len(buf):
                raise TFCheckpointError(f"{where}: truncated protobuf fixed32")
            value = struct.unpack_from("<I", buf, pos)[0]
            pos += 4
        else:
            raise TFCheckpointError(f"{where}: unsupported protobuf wire type {wire}")
        yield field, wire, value


def _parse_shape(buf: bytes, where: str) -> tuple[int, ...] | None:
    dims: list[int] = []
    for field, _, value in _proto_fields(buf, where):
        if field == 2:  # Dim
            size = 0
            for f2, _, v2 in _proto_fields(value, where):  # type: ignore[arg-type]
                if f2 == 1:
                    size = v2 if v2 < 1 << 63 else v2 - (1 << 64)  # type: ignore[operator]
            dims.append(int(size))
        elif field == 3 and value:  # unknown_rank
            return None
    return tuple(dims)


class _Entry:
    __slots__ = ("dtype", "shape", "shard", "offset", "size", "crc32c", "sliced")

    def __init__(self) -> None:
        self.dtype, self.shape, self.shard, self.offset, self.size = 1, (), 0, 0, 0
        self.crc32c: int | None = None
        self.sliced = False


def _parse_entry(buf: bytes, where: str) -> _Entry:
    e = _Entry()
    for field, _, value in _proto_fields(buf, where):
        if field == 1:
            e.dtype = int(value)  # type: ignore[arg-type]
        elif field == 2:
            shape = _parse_shape(value, where)  # type: ignore[arg-type]
            if shape is None:
                raise TFCheckpointError(f"{where}: tensor of unknown rank")
            e.shape = shape
        elif field == 3:
            e.shard = int(value)  # type: ignore[arg-type]
        elif field == 4:
            e.offset = int(value)  # type: ignore[arg-type]
        elif field == 5:
            e.size = int(value)  # type: ignore[arg-type]
        elif field == 6:
            e.crc32c = int(value)  # type: ignore[arg-type]
        elif field == 7:
            e.sliced = True
    return e


# --------------------------------------------------------------------------- SSTable
def _read_block(data: bytes, offset: int, size: int, path: Path) -> bytes:
    end = offset + size + _BLOCK_TRAILER_LEN
    if offset < 0 or end > len(data):
        raise TFCheckpointError(f"{path}: truncated index (block at {offset}+{size} beyond file end)")
    block = data[offset:offset + size]
    ctype = data[offset + size]
    if ctype != 0:
        raise TFCheckpointError(f"{path}: compressed index block (type {ctype}) is not supported")
    stored = struct.unpack_from("<I", data, offset + size + 1)[0]
    if _crc32c(block + bytes([ctype])) != _unmask_crc(stored):
        raise TFCheckpointError(f"{path}: corrupt index (block checksum mismatch at offset {offset})")
    return block


def _block_entries(block: bytes, path: Path) -> Iterable[tuple[bytes, bytes]]:
    where = str(path)
    if len(block) < 4:
        raise TFCheckpointError(f"{path}: corrupt index block (too short)")
    num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    limit = len(block) - 4 - 4 * num_restarts
    if limit < 0:
        raise TFCheckpointError(f"{path}: corrupt index block (bad restart count)")
    pos, key = 0, b""
    while pos < limit:
        shared, pos = _varint(block, pos, where)
        non_shared, pos = _varint(block, pos, where)
        vlen, pos = _varint(block, pos, where)
        if shared > len(key) or pos + non_shared + vlen > limit:
            raise TFCheckpointError(f"{path}: corrupt index block entry")
        # Keys are prefix-compressed: reuse `shared` bytes of the previous key.
        key = key[:shared] + block[pos:pos + non_shared]
        pos += non_shared
        yield key, block[pos:pos + vlen]
        pos += vlen


def _read_index(prefix: Path) -> tuple[int, dict[str, _Entry]]:
    path = Path(f"{prefix}.index")
    if not path.is_file():
        raise TFCheckpointError(f"{path}: TF checkpoint index not found (pass the prefix, "
                                f"e.g. 'ckpt-150000', not the .index or .data file)")
    data = path.read_bytes()
    if len(data) < _FOOTER_LEN:
        raise TFCheckpointError(f"{path}: truncated index ({len(data)} bytes)")
    magic = struct.unpack_from("<Q", data, len(data) - 8)[0]
    if magic != _TABLE_MAGIC:
        raise TFCheckpointError(f"{path}: not a TF checkpoint index (bad table magic; truncated?)")
    footer = data[len(data) - _FOOTER_LEN:]
    _, pos = _varint(footer, 0, str(path))  # metaindex offset (unused)
    _, pos = _varint(footer, pos, str(path))  # metaindex size
    idx_off, pos = _varint(footer, pos, str(path))
    idx_size, pos = _varint(footer, pos, str(path))
    index_block = _read_block(data, idx_off, idx_size, path)
    num_shards = 1
    entries: dict[str, _Entry] = {}
    for _, handle in _block_entries(index_block, path):
        off, p = _varint(handle, 0, str(path))
        size, _ = _varint(handle, p, str(path))
        for key, value in _block_entries(_read_block(data, off, size, path), path):
            if key == b"":  # BundleHeaderProto
                for field, _, v in _proto_fields(value, str(path)):
                    if field == 1:
                        num_shards = int(v)  # type: ignore[arg-type]
                    elif field == 2 and v != 0:
                        raise TFCheckpointError(f"{path}: big-endian checkpoints are not supported")
                continue
            name = key.decode("utf-8")
            entries[name] = _parse_entry(value, f"{path} ({name})")
    return num_shards, entries


def read_bundle_entries(prefix: str | Path) -> dict[str, _Entry]:
    """The raw index entries of a checkpoint (for tests and debugging)."""
    return _read_index(Path(prefix))[1]


def list_variables(prefix: str | Path, name_prefix: str = "") -> dict[str, tuple[str, tuple[int, ...]]]:
    """List the tensors of a TF checkpoint, like ``tf.train.list_variables``.

    Args:
        prefix: checkpoint prefix (``.../ckpt-150000``; the ``.index`` file is read).
        name_prefix: keep only names starting with this string.

    Returns:
        ``{name: (dtype_name, shape)}`` in index (sorted) order; dtype names are
        ``float32``, ``float16``, ``bfloat16``, ``int64``, ``string``, ...

    Raises:
        TFCheckpointError: the index is missing, truncated or corrupt.
    """
    _, entries = _read_index(Path(prefix))
    out = {}
    for name, e in entries.items():
        if name.startswith(name_prefix):
            out[name] = (_DTYPES.get(e.dtype, (f"dtype{e.dtype}", None))[0], e.shape)
    return out


def load_variables(prefix: str | Path, *, skip: Callable[[str], bool] | None = None,
                   verify_checksums: bool = True) -> dict[str, np.ndarray]:
    """Load the tensors of a TF checkpoint as numpy arrays.

    Args:
        prefix: checkpoint prefix (``.../ckpt-150000``).
        skip: predicate on the name; matching tensors are not read. String tensors
            (``_CHECKPOINTABLE_OBJECT_GRAPH``) are always skipped.
        verify_checksums: check each tensor's CRC32C (default; ``google-crc32c``, a core
            dependency, or the pure-Python fallback of :mod:`kmax_deeplab.checkpoints.checksums`);
            ``False`` checks only byte sizes (debugging only).

    Returns:
        ``{name: array}``; float32/float16/int64/... keep their dtype, bfloat16 is
        widened to float32 exactly.

    Raises:
        TFCheckpointError: missing/truncated/corrupt index or data shard (the file is
            named), checksum mismatch, partitioned variables or unsupported dtypes.
    """
    prefix = Path(prefix)
    num_shards, entries = _read_index(prefix)
    crc = _crc32c if verify_checksums else None
    shards: dict[int, bytes] = {}
    out: dict[str, np.ndarray] = {}
    for name, e in entries.items():
        if (skip is not None and skip(name)) or e.dtype == 7:
            continue
        where = f"{prefix}.index ({name})"
        if e.sliced:
            raise TFCheckpointError(f"{where}: partitioned (sliced) variables are not supported")
        if e.dtype not in _DTYPES or _DTYPES[e.dtype][1] is None:
            raise TFCheckpointError(f"{where}: unsupported dtype enum {e.dtype}")
        if not 0 <= e.shard < num_shards:
            raise TFCheckpointError(f"{where}: shard id {e.shard} out of range (0..{num_shards - 1})")
        if e.shard not in shards:
            shard_path = Path(f"{prefix}.data-{e.shard:05d}-of-{num_shards:05d}")
            if not shard_path.is_file():
                raise TFCheckpointError(f"{shard_path}: TF checkpoint data shard not found")
            shards[e.shard] = shard_path.read_bytes()
        blob = shards[e.shard]
        shard_name = f"{prefix}.data-{e.shard:05d}-of-{num_shards:05d}"
        dtype_name, np_dtype = _DTYPES[e.dtype]
        count = int(np.prod(e.shape, dtype=np.int64)) if e.shape else 1
        if e.size != count * np_dtype.itemsize:
            raise TFCheckpointError(f"{where}: entry size {e.size} does not match shape {list(e.shape)} "
                                    f"of {dtype_name}")
        if e.offset + e.size > len(blob):
            raise TFCheckpointError(f"{shard_name}: truncated data file ({len(blob)} bytes; tensor "
                                    f"{name!r} needs bytes {e.offset}..{e.offset + e.size})")
        raw = memoryview(blob)[e.offset:e.offset + e.size]
        if crc is not None and e.crc32c is not None and crc(raw) != _unmask_crc(e.crc32c):
            raise TFCheckpointError(f"{shard_name}: corrupt data (CRC32C mismatch for {name!r})")
        arr = np.frombuffer(raw, dtype=np_dtype, count=count).reshape(e.shape)
        if dtype_name == "bfloat16":
            # bfloat16 is the top half of a float32: shift the 16 bits into place.
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        out[name] = arr.copy()
    return out
