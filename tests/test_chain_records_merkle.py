"""Pure parts: canonical record encoding and the Merkle tree."""

import hashlib

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from chain import codec
from chain.errors import DecodeError, InvalidRecord, UnknownRecordType
from chain.merkle import EMPTY_ROOT, merkle_path, merkle_root, root_from_path
from chain.records import RECORD_TYPES, Record, decode_record, make_record, record_hash

ACTOR = "12D3KooWActor"

scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | \
    st.floats(allow_nan=False) | st.text(max_size=20) | st.binary(max_size=40)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) |
                      st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
payloads = st.dictionaries(st.text(max_size=8), values, max_size=5)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(RECORD_TYPES)), payloads, st.integers(0, 2**53))
def test_record_round_trip(record_type, payload, ts):
    payload = {**{f: 1 for f in RECORD_TYPES[record_type][0]}, **payload}
    record, encoded = make_record(record_type, payload, ACTOR, ts)
    assert decode_record(encoded) == record
    assert record.encode() == encoded
    assert record_hash(encoded) != hashlib.sha256(encoded).digest()  # domain-tagged


def test_unknown_type_and_missing_fields_rejected():
    with pytest.raises(UnknownRecordType) as info:
        make_record("heartbeat", {}, ACTOR, 0)
    assert info.value.code == "unknown_record_type"
    with pytest.raises(InvalidRecord):
        make_record("batch_routed", {"to": "x", "ticks": 3}, ACTOR, 0)
    with pytest.raises(InvalidRecord):
        make_record("peer_joined", {"peer": {1, 2}}, ACTOR, 0)
    with pytest.raises(InvalidRecord):
        make_record("peer_joined", {"peer": "p"}, "", 0)


def test_non_canonical_bytes_rejected():
    good = Record("peer_left", ACTOR, 5, {"peer": "p", "a": 1}).encode()
    decode_record(good)
    long_int = good.replace(b"\x05", b"\x18\x05", 1)  # timestamp 5 in a needlessly long form
    with pytest.raises(DecodeError):
        decode_record(long_int)
    with pytest.raises(DecodeError):
        decode_record(good + b"\x00")
    with pytest.raises(DecodeError):
        decode_record(codec.encode(["heartbeat", ACTOR, 5, {}]))
    with pytest.raises(DecodeError):
        decode_record(b"\xd8\x1e" + good)  # a CBOR tag around the record


def _hashes(n: int) -> list[bytes]:
    return [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(n)]


def test_merkle_shapes():
    assert merkle_root([]) == EMPTY_ROOT
    one = _hashes(1)
    assert merkle_root(one) != one[0]  # leaves are tagged, never raw
    assert merkle_path(one, 0) == []
    assert root_from_path(one[0], 0, 1, []) == merkle_root(one)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 70), st.data())
def test_merkle_proofs_verify_for_every_leaf_and_fail_for_others(n, data):
    hashes = _hashes(n)
    root = merkle_root(hashes)
    for i in range(n):
        path = merkle_path(hashes, i)
        assert len(path) <= max(1, n).bit_length()
        assert root_from_path(hashes[i], i, n, path) == root
    i = data.draw(st.integers(0, n - 1))
    path = merkle_path(hashes, i)
    other = data.draw(st.integers(0, n - 1).filter(lambda j: j != i)) if n > 1 else None
    if other is not None:
        assert root_from_path(hashes[other], i, n, path) != root
        assert root_from_path(hashes[i], other, n, path) != root
    assert root_from_path(hashlib.sha256(b"x").digest(), i, n, path) != root
    if path:
        k = data.draw(st.integers(0, len(path) - 1))
        bad = list(path)
        bad[k] = bytes(32)
        assert root_from_path(hashes[i], i, n, bad) != root
        assert root_from_path(hashes[i], i, n, path[:-1]) != root
    assert root_from_path(hashes[i], i, n, path + [bytes(32)]) != root
