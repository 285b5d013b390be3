"""Kafka's default partitioner for bucket keys: murmur2 as Kafka (and aiokafka) compute it, in half the time.

A worker hashes a key to find its partition, and with it the RocksDB store
to read, on every cache miss: for a rate limiter's most common request, a
user seen for the first time. aiokafka's ``murmur2`` reads the key a byte at
a time and masks after every operation (3.4 µs for a 22-byte key here);
this one reads it a 32-bit word at a time with one ``struct`` call and masks
only where a product can overflow 32 bits (1.7 µs). The two agree on every
input: ``tests/test_keyhash.py`` checks it with hypothesis against
aiokafka's, the reference the producer uses, and on Kafka's own test vectors.
"""

from __future__ import annotations

import struct

__all__ = ["murmur2", "partition"]

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
#: unpackers of n little-endian 32-bit words, for the key lengths bucket keys have
_WORDS = [struct.Struct(f"<{n}I").unpack_from for n in range(64)]


def murmur2(data: bytes) -> int:
    """MurmurHash2 (32 bits, Kafka's seed) of ``data``, as an unsigned int."""
    length = len(data)
    h = _SEED ^ length
    n = length >> 2
    words = _WORDS[n](data) if n < 64 else struct.unpack_from(f"<{n}I", data)
    for k in words:
        k = (k * _M) & _MASK
        k ^= k >> 24
        h = ((h * _M) & _MASK) ^ ((k * _M) & _MASK)
    extra = length & 3
    if extra:
        i = n << 2
        if extra == 3:
            h ^= data[i + 2] << 16
        if extra >= 2:
            h ^= data[i + 1] << 8
        h = ((h ^ data[i]) * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)


def partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` among ``partitions``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
