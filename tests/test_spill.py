"""The spill file: what a worker that stops while Kafka is away keeps for the next start.

Pure file handling (no broker): the round trip, the join with what a file
already holds, and that a damaged file is refused instead of read wrong. The
worker's side (stop with the broker down, start again, nothing lost) is in
``tests/test_worker.py``.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bucketstream import spill
from bucketstream.crdt import decode, encode, join
from tests.helpers import States

Keys = st.binary(min_size=1, max_size=300)
Spills = st.dictionaries(Keys, States.map(encode), max_size=8)


@given(Spills)
def test_what_is_written_is_read_back(states):
    assert spill.decode_states(spill.encode_states(states)) == states


@given(Spills, st.data())
def test_every_cut_or_flipped_byte_is_refused(states, data):
    whole = spill.encode_states(states)
    cut = data.draw(st.integers(0, len(whole) - 1), label="cut at")
    with pytest.raises(spill.SpillError):
        spill.decode_states(whole[:cut])
    at = data.draw(st.integers(0, len(whole) - 1), label="flip at")
    flipped = bytearray(whole)
    flipped[at] ^= data.draw(st.integers(1, 255), label="mask")
    with pytest.raises(spill.SpillError):
        spill.decode_states(bytes(flipped))


def test_a_missing_file_holds_nothing(tmp_path):
    assert spill.read(spill.path_in(tmp_path)) == {}


@given(Spills, Spills)
def test_a_second_stop_joins_its_states_with_those_the_file_holds(tmp_path_factory, first, second):
    path = spill.path_in(tmp_path_factory.mktemp("data"))
    spill.write(path, first)
    assert spill.write(path, second) == len(first.keys() | second.keys())
    held = spill.read(path)
    for key in first.keys() | second.keys():
        states = [decode(s[key]) for s in (first, second) if key in s]
        expected = states[0] if len(states) == 1 else join(*states)
        assert decode(held[key]) == expected
    assert not path.with_name(path.name + ".tmp").exists()


def test_a_damaged_file_is_named_in_the_error(tmp_path):
    path = spill.path_in(tmp_path)
    path.write_bytes(b"not a spill file")
    with pytest.raises(spill.SpillError, match="unpublished.bin"):
        spill.read(path)


def test_a_record_that_is_not_a_bucket_state_is_refused():
    data = spill.encode_states({b"k": b"\x00garbage"})
    with pytest.raises(spill.SpillError, match="not a bucket state"):
        spill.decode_states(data)
