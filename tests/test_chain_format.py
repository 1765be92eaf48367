"""Format fixtures: ledgers written by every released format must load and verify forever."""

import json
import shutil
from pathlib import Path

import pytest

from chain import codec
from chain.audit import open_verified, verify_store
from chain.store import STORE_FILE_NAME, Store
from chain.verify import verify_chain, verify_fork_proof, verify_inclusion_proof

FIXTURES = Path(__file__).parent / "fixtures" / "ledger"


@pytest.mark.parametrize("version", ["v1"])
def test_fixture_loads_and_verifies(tmp_path, version):
    src = FIXTURES / version
    expected = json.loads((src / "expected.json").read_text())
    shutil.copy(src / STORE_FILE_NAME, tmp_path / STORE_FILE_NAME)
    store, errors = open_verified(tmp_path / STORE_FILE_NAME)
    try:
        assert errors == []
        assert [h.to_dict() for h in store.heads()] == expected["heads"]
        assert all(r.error is None for r in verify_store(store))
        assert store.counts()["records"] == expected["records"]
        assert [(a, h) for a, h, _ in store.fork_proofs()] == [(expected["bob"], 2)]
        verify_fork_proof(store.fork_proofs()[0][2])
    finally:
        store.close()
    blocks = codec.decode((src / "blocks-alice.cbor").read_bytes(), max_size=10**7, what="fixture")
    assert verify_chain(blocks, author=expected["alice"]).hash.hex() == expected["heads"][0]["hash"]
    proof = verify_inclusion_proof((src / "inclusion-proof.bin").read_bytes())
    want = expected["proof"]
    assert (proof.header.author_id, proof.header.height, proof.index, proof.record.type) == \
        (want["author"], want["height"], want["index"], want["type"])
    fork = verify_fork_proof((src / "fork-proof.bin").read_bytes())
    assert (fork.author, fork.height) == (expected["bob"], 2)


def test_fixture_is_readable_in_place_without_writing(tmp_path):
    shutil.copytree(FIXTURES / "v1", tmp_path / "v1")
    store = Store.open(tmp_path / "v1" / STORE_FILE_NAME, readonly=True)
    try:
        assert len(store.heads()) == 2
    finally:
        store.close()
