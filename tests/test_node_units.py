"""Pure logic of the node foundation: identity, certificates, config, peer table, adverts, codec."""

from __future__ import annotations

import os
import stat
import time

import cbor2
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from node.admission import Admission
from node.config import load_config
from node.errors import ConfigError, FrameDecodeError, FrameTooLarge
from node.identity import (
    Identity,
    b58decode,
    b58encode,
    load_or_create_identity,
    peer_id_from_public_key,
    public_key_from_peer_id,
)
from node.membership import (
    Certificate,
    CertificateError,
    create_authority,
    issue_certificate,
    verify_certificate,
)
from node.metrics import Metrics
from node.peers import ONLINE, STALE, GONE, PeerTable
from node.protocols import adverts
from node.protocols.codec import FrameReader, encode_frame


# --- identity ----------------------------------------------------------------------------------


def test_key_file_is_created_once_with_mode_0600(tmp_path):
    first = load_or_create_identity(tmp_path)
    mode = stat.S_IMODE(os.stat(tmp_path / "identity.key").st_mode)
    assert mode == 0o600
    assert load_or_create_identity(tmp_path).peer_id == first.peer_id


def test_peer_id_matches_libp2p_derivation():
    from libp2p.crypto.ed25519 import Ed25519PrivateKey
    from libp2p.peer.id import ID

    identity = Identity.generate()
    libp2p_key = Ed25519PrivateKey.new(identity.seed)
    assert ID.from_pubkey(libp2p_key.get_public_key()).to_base58() == identity.peer_id
    assert public_key_from_peer_id(identity.peer_id) == identity.public_key


@given(st.binary(max_size=64))
def test_base58_round_trip(data):
    assert b58decode(b58encode(data)) == data


def test_peer_id_rejects_wrong_key_size():
    with pytest.raises(Exception):
        peer_id_from_public_key(b"short")


# --- certificates ------------------------------------------------------------------------------


@pytest.fixture
def authority(tmp_path):
    return create_authority(tmp_path / "authority")


def test_certificate_round_trip_and_verify(authority):
    peer = Identity.generate()
    cert = issue_certificate(authority, peer.peer_id, ["anomaly", "risk"], 60)
    decoded = Certificate.decode(cert.encode())
    verify_certificate(decoded, authority.public_key, peer.peer_id)
    assert decoded.allows("risk") and not decoded.allows("iot")


@pytest.mark.parametrize("case,reason", [
    ("expired", "expired"), ("other_peer", "wrong_peer"), ("other_authority", "wrong_authority"),
    ("tampered", "bad_signature"),
])
def test_certificate_failures_are_named(authority, case, reason):
    peer = Identity.generate()
    now = time.time()
    cert = issue_certificate(authority, peer.peer_id, ["risk"], 60, now=now - (120 if case == "expired" else 0))
    key = authority.public_key
    presenter = peer.peer_id
    if case == "other_peer":
        presenter = Identity.generate().peer_id
    if case == "other_authority":
        key = Identity.generate().public_key
    if case == "tampered":
        cert = Certificate(cert.peer_id, ("risk", "iot"), cert.issued, cert.expires, cert.authority, cert.signature)
    with pytest.raises(CertificateError) as info:
        verify_certificate(cert, key, presenter, now=now)
    assert info.value.reason == reason


@given(st.binary(max_size=300))
@settings(max_examples=200)
def test_certificate_decode_never_crashes(data):
    try:
        Certificate.decode(data)
    except CertificateError as exc:
        assert exc.reason in {"malformed", "too_large"}


def test_unknown_role_refused(authority):
    with pytest.raises(CertificateError):
        issue_certificate(authority, Identity.generate().peer_id, ["wizard"], 60)


# --- config ------------------------------------------------------------------------------------


def test_config_precedence_toml_env_flags(tmp_path):
    toml = tmp_path / "node.toml"
    toml.write_text('roles = ["risk"]\nheartbeat_s = 7\nname = "from-toml"\n[risk]\nbar_s = 60\n')
    env = {"QUANTIAN_HEARTBEAT_S": "3", "QUANTIAN_NAME": "from-env"}
    config = load_config({"name": "from-flag", "roles": None}, config_file=str(toml), environ=env)
    assert config.roles == ("risk",)
    assert config.heartbeat_s == 3.0
    assert config.name == "from-flag"
    assert config.extra["risk"]["bar_s"] == 60


@pytest.mark.parametrize("flags,message", [
    ({}, "no role"),
    ({"roles": ["wizard"]}, "unknown role"),
    ({"roles": ["risk"], "heartbeat_s": -1}, "heartbeat_s"),
    ({"roles": ["risk"], "bootstrap": ["/ip4/127.0.0.1/tcp/1"]}, "/p2p/"),
])
def test_config_errors_are_clear(flags, message):
    with pytest.raises(ConfigError, match=message):
        load_config(flags, environ={})


def test_config_rejects_unknown_toml_keys(tmp_path):
    toml = tmp_path / "bad.toml"
    toml.write_text('roles = ["risk"]\nhartbeat = 3\n')
    with pytest.raises(ConfigError, match="hartbeat"):
        load_config({}, config_file=str(toml), environ={})


# --- peer table --------------------------------------------------------------------------------


def test_peer_states_follow_missed_heartbeats():
    now = [100.0]
    table = PeerTable(clock=lambda: now[0])
    assert table.observe("p1", name="n", roles=("risk",), capabilities=("compute_risk",), addrs=(), version="x",
                         load={}, heartbeat_s=1.0, seq=1)
    assert [e.peer_id for e in table.providers("compute_risk")] == ["p1"]
    now[0] += 2.9
    assert table.state_of(table.get("p1")) == ONLINE
    now[0] += 0.2
    assert table.state_of(table.get("p1")) == STALE
    assert table.providers("compute_risk") == []
    now[0] += 10
    assert table.state_of(table.get("p1")) == GONE
    assert table.observe("p1", name="n", roles=("risk",), capabilities=("compute_risk",), addrs=(), version="x",
                         load={}, heartbeat_s=1.0, seq=2)


# --- admission ---------------------------------------------------------------------------------


def test_admission_bans_peers_without_certificate(authority):
    now = [0.0]
    metrics = Metrics()
    adm = Admission(authority.public_key, metrics, handshake_timeout_s=5, ban_s=30, clock=lambda: now[0])
    assert adm.on_connected("peerA")
    now[0] = 6
    assert adm.overdue() == ["peerA"]
    assert metrics.get("admission.refused.no_certificate") == 1
    assert not adm.on_connected("peerA")
    now[0] = 40
    assert adm.on_connected("peerA")


# --- adverts -----------------------------------------------------------------------------------


def _advert(identity: Identity, cert: Certificate, roles=("risk",), seq=1, ts=None,
            heartbeat_s=1.0) -> adverts.Advert:
    return adverts.Advert(peer_id=identity.peer_id, name="n", roles=tuple(roles), capabilities=("compute_risk",),
                          addrs=("/ip4/127.0.0.1/tcp/1",), version="0.1.0", seq=seq, ts=ts or time.time(),
                          heartbeat_s=heartbeat_s, load={}, cert=cert.encode())


@pytest.fixture
def advert_setup(authority):
    me = Identity.generate()
    author = Identity.generate()
    metrics = Metrics()
    adm = Admission(authority.public_key, metrics)
    table = PeerTable()
    forwarder = Identity.generate()
    adm.admit(forwarder.peer_id, issue_certificate(authority, forwarder.peer_id, ["bootstrap"], 60).encode())
    validator = adverts.Validator(me.peer_id, adm, table, metrics)
    cert = issue_certificate(authority, author.peer_id, ["risk"], 60)
    return validator, author, cert, forwarder.peer_id, table, metrics, authority


def _reason(validator, forwarder, origin, data) -> str:
    with pytest.raises(adverts.AdvertRejected) as info:
        validator.check(forwarder, origin, data)
    return info.value.reason


def test_valid_advert_accepted(advert_setup):
    validator, author, cert, fwd, table, metrics, _ = advert_setup
    advert = validator.check(fwd, author.peer_id, adverts.encode(_advert(author, cert), author))
    assert advert.roles == ("risk",)


def test_forged_and_malformed_adverts_are_named(advert_setup, authority):
    validator, author, cert, fwd, table, metrics, _ = advert_setup
    other = Identity.generate()
    good = adverts.encode(_advert(author, cert), author)
    assert _reason(validator, fwd, author.peer_id, b"\xff\x00garbage") == "bad_cbor"
    assert _reason(validator, fwd, author.peer_id, adverts.encode(_advert(author, cert), other)) == "bad_signature"
    assert _reason(validator, fwd, other.peer_id, good) == "origin_mismatch"
    assert _reason(validator, "12D3KooWunknown", author.peer_id, good) == "forwarder_not_admitted"
    greedy = adverts.encode(_advert(author, cert, roles=("risk", "anomaly")), author)
    assert _reason(validator, fwd, author.peer_id, greedy) == "role_not_allowed"
    old = adverts.encode(_advert(author, cert, ts=time.time() - 3600), author)
    assert _reason(validator, fwd, author.peer_id, old) == "stale"
    expired = issue_certificate(authority, author.peer_id, ["risk"], 1, now=time.time() - 10)
    assert _reason(validator, fwd, author.peer_id, adverts.encode(_advert(author, expired), author)) == "certificate_expired"
    for heartbeat_s in (0.0, -1.0, float("nan"), float("inf"), 1e6):  # would hide its silence forever
        sleepy = adverts.encode(_advert(author, cert, heartbeat_s=heartbeat_s), author)
        assert _reason(validator, fwd, author.peer_id, sleepy) == "bad_heartbeat"


def test_replayed_sequence_is_dropped(advert_setup):
    validator, author, cert, fwd, table, metrics, _ = advert_setup
    data = adverts.encode(_advert(author, cert, seq=5), author)
    advert = validator.check(fwd, author.peer_id, data)
    table.observe(advert.peer_id, name=advert.name, roles=advert.roles, capabilities=advert.capabilities,
                  addrs=advert.addrs, version=advert.version, load=advert.load, heartbeat_s=1.0, seq=advert.seq)
    assert _reason(validator, fwd, author.peer_id, data) == "replayed"


@given(st.binary(max_size=2000))
@settings(max_examples=200, deadline=None)
def test_advert_decoder_never_crashes(data):
    try:
        adverts.decode(data)
    except adverts.AdvertRejected as exc:
        assert exc.reason in {"bad_cbor", "too_large"}


# --- codec -------------------------------------------------------------------------------------


class _MemoryStream:
    remote_peer = "test"

    def __init__(self, data: bytes, chunk: int = 3) -> None:
        self._data = data
        self._chunk = chunk

    async def read(self, max_bytes: int) -> bytes:
        from node.host import StreamClosed

        if not self._data:
            raise StreamClosed("EOF")
        out, self._data = self._data[: self._chunk], self._data[self._chunk:]
        return out


async def test_frames_survive_partial_reads():
    data = encode_frame({"a": 1}) + encode_frame({"b": [1, 2, 3]})
    reader = FrameReader(_MemoryStream(data))
    assert await reader.read_frame(5) == {"a": 1}
    assert await reader.read_frame(5) == {"b": [1, 2, 3]}


async def test_oversized_and_malformed_frames_are_refused():
    with pytest.raises(FrameTooLarge):
        await FrameReader(_MemoryStream(encode_frame({"x": "y" * 100})), max_frame=50).read_frame(5)
    body = cbor2.dumps([1, 2])
    with pytest.raises(FrameDecodeError):
        await FrameReader(_MemoryStream(len(body).to_bytes(4, "big") + body)).read_frame(5)


# --- memory: heavy analytics imports only where a role needs them --------------------------------


def test_only_the_anomaly_role_imports_scikit_learn_and_scipy():
    """scikit-learn + SciPy add ~140 MB of RSS per process: bootstrap, iot, ingestion and risk
    nodes must not import them (the anomaly role imports its detector when it is built)."""
    import subprocess
    import sys

    probe = ("import sys, node.cli, node.node, node.roles, node.roles.risk, node.views; "
             "print(sorted(m for m in ('sklearn', 'scipy', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    probe = ("import sys, node.roles.anomaly; from node.roles.anomaly import AnomalyRole; "
             "print('sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False", out.stdout  # not even when the module is imported


def test_keep_pandas_out_refuses_pandas_and_the_forest_still_fits_and_scores():
    """What `quantian-node start` calls before importing the roles: sklearn's opportunistic
    pandas import (~30 MB) is refused, and the forest still works on NumPy arrays."""
    import subprocess
    import sys

    probe = ("import sys, numpy as np, node.cli; node.cli.keep_pandas_out(); "
             "from sklearn.ensemble import IsolationForest; "
             "f = IsolationForest(n_estimators=10, random_state=0).fit(np.random.default_rng(0).normal(size=(200, 3))); "
             "print('pandas' in sys.modules, f.score_samples(np.zeros((2, 3))).shape)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False (2,)", out.stdout + out.stderr


class _QuietHost:
    """Just enough of node.host.Host for Discovery's bookkeeping (no sockets: pure logic)."""

    peer_id = "12D3KooWself"

    def add_connection_listener(self, listener) -> None:
        pass

    def set_stream_handler(self, protocol_id, handler) -> None:
        pass


async def test_one_recovered_peer_brings_every_failed_redial_forward():
    from node.discovery import Discovery, _Target

    disc = Discovery(_QuietHost(), None, None, PeerTable(), Metrics())
    later = trio.current_time() + 5.0
    disc._targets = {"back": _Target(("/ip4/10.0.0.1/tcp/1",), pinned=False, failures=3, next_attempt=later),
                     "failed": _Target(("/ip4/10.0.0.2/tcp/1",), pinned=False, failures=2, next_attempt=later),
                     "healthy": _Target(("/ip4/10.0.0.3/tcp/1",), pinned=False, failures=0, next_attempt=later)}
    disc._path_recovered("back")
    now = trio.current_time()
    assert disc._targets["failed"].next_attempt <= now  # redialled at the next dial tick
    assert disc._targets["healthy"].next_attempt == later  # never failed: left alone
    assert disc._targets["back"].next_attempt == later  # its own dial already succeeded
    assert disc._metrics.get("discovery.redial_on_recovery") == 1
