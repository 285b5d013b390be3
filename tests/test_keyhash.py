"""Claims about ``bucketstream.keyhash``: it is Kafka's default partitioner, byte for byte."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import murmur2 as reference
from hypothesis import given, settings
from hypothesis import strategies as st

from bucketstream import keyhash
from bucketstream.rules import Rules

# Kafka's own vectors (clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java, testMurmur2),
# as Java's signed ints
KAFKA_VECTORS = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
]


@pytest.mark.parametrize(("data", "java"), KAFKA_VECTORS)
def test_murmur2_gives_kafkas_own_test_vectors(data: bytes, java: int) -> None:
    assert keyhash.murmur2(data) == java & 0xFFFFFFFF


@settings(max_examples=2000)
@given(st.binary(max_size=300))
def test_murmur2_agrees_with_aiokafkas_on_any_bytes(data: bytes) -> None:
    assert keyhash.murmur2(data) == reference(data) & 0xFFFFFFFF


@given(st.text(min_size=1, max_size=64), st.integers(min_value=1, max_value=1024))
def test_a_bucket_key_lands_where_the_producers_partitioner_puts_it(user: str, partitions: int) -> None:
    key = Rules.key(Rules.from_settings(10, 1, None).default, user, None)
    assert keyhash.partition(key, partitions) == (reference(key) & 0x7FFFFFFF) % partitions
