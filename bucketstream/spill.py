"""States a stopping worker could not publish, kept on its disk until the next start.

A worker that stops (SIGTERM, a rolling restart) while Kafka is away cannot
hand its last admissions to the update topic. Rather than lose them from the
merged state, it writes its own unconfirmed states to
``<data_dir>/unpublished.bin``; the next process started on that data
directory publishes them before it serves (``agents.publish_spilled``) and
then deletes the file. They are whole lattice states of the old process's
slot, so publishing them twice, or after Kafka got some of them anyway,
changes nothing (the join is idempotent).

The file: ``MAGIC``, then per state a 4-byte big-endian key length, the key,
a 4-byte value length, the encoded state; then a CRC-32 of everything before
it. Written to a temporary file, fsynced and renamed, so a crash mid-write
leaves the previous file (or none), never half of one.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

from bucketstream import crdt

MAGIC = b"BSSPILL1"
FILE_NAME = "unpublished.bin"
_LEN = struct.Struct(">I")


class SpillError(ValueError):
    """The file is not one this module wrote (truncated, corrupted, another format)."""


def path_in(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / FILE_NAME


def encode_states(states: dict[bytes, bytes]) -> bytes:
    out = bytearray(MAGIC)
    for key, raw in states.items():
        out += _LEN.pack(len(key)) + key + _LEN.pack(len(raw)) + raw
    out += _LEN.pack(zlib.crc32(out))
    return bytes(out)


def decode_states(data: bytes) -> dict[bytes, bytes]:
    """The states of a spill file; SpillError if it is not whole and intact."""
    if len(data) < len(MAGIC) + _LEN.size or not data.startswith(MAGIC):
        raise SpillError("not a bucketstream spill file (bad header)")
    body, (crc,) = data[:-_LEN.size], _LEN.unpack(data[-_LEN.size:])
    if zlib.crc32(body) != crc:
        raise SpillError("checksum mismatch (truncated or corrupted)")
    states: dict[bytes, bytes] = {}
    pos = len(MAGIC)
    while pos < len(body):
        fields = []
        for _ in range(2):
            if pos + _LEN.size > len(body):
                raise SpillError(f"record cut short at byte {pos}")
            (n,) = _LEN.unpack_from(body, pos)
            pos += _LEN.size
            if pos + n > len(body):
                raise SpillError(f"record cut short at byte {pos}")
            fields.append(body[pos:pos + n])
            pos += n
        key, raw = fields
        try:
            crdt.decode(raw)
        except crdt.CodecError as exc:
            raise SpillError(f"the state of key {key!r} is not a bucket state: {exc}") from None
        states[key] = raw
    return states


def read(path: Path) -> dict[bytes, bytes]:
    """The states kept in ``path``; empty if there is no such file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    try:
        return decode_states(data)
    except SpillError as exc:
        raise SpillError(f"{path}: {exc}") from None


def write(path: Path, states: dict[bytes, bytes]) -> int:
    """Keep ``states`` in ``path``, joined with what it already holds (a previous
    stop whose states the next process could not publish either). Returns the
    number of keys the file holds."""
    merged = dict(read(path))
    for key, raw in states.items():
        old = merged.get(key)
        merged[key] = raw if old is None else crdt.encode(crdt.join(crdt.decode(old), crdt.decode(raw)))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(encode_states(merged))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return len(merged)
