"""Ledger replication: chain heads announced on gossip, missing ranges pulled over a direct stream.

Gossip is best-effort (LIBP2P-NOTES §3), so heads are only hints, re-announced every interval;
the blocks themselves travel over request/response streams with range and size caps and
timeouts, and are verified by the ledger before anything is stored. When a member (re)connects
(say, a partition heals) both sides also ask each other for heads directly, so catching up does
not wait for the gossip mesh to re-form. A sender of invalid blocks
is banned for a while and the failure recorded; a fork is not the sender's fault (it may just
relay a forked chain), so it is recorded and gossiped, never punished on the relay.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import cbor2
import trio

from chain.errors import LedgerError
from node.admission import Admission
from node.errors import NodeError
from node.host import GossipMessage, Host, StreamClosed
from node.metrics import Metrics
from node.protocols.codec import FrameReader, request, write_frames

PROTOCOL_ID = "/quantian/ledger-sync/1.0.0"
HEADS_TOPIC = "quantian/ledger-heads/1.0.0"
MAX_BLOCKS_PER_REQUEST = 256
MAX_RESPONSE_BYTES = 4 * 1024 * 1024
MAX_ANNOUNCEMENT_BYTES = 128 * 1024
MAX_ANNOUNCED_HEADS = 512
MAX_ANNOUNCED_FORKS = 16
REQUEST_TIMEOUT_S = 15.0
MAX_CONCURRENT_PULLS = 4
MAX_PULL_ROUNDS = 8  # retargeted or retried pulls per author before it waits for the next announcement
HEADS_ATTEMPTS = 3  # heads requests to a (re)admitted member before leaving it to gossip
PULL_RETRIES = 2  # failed pull requests retried per pull (then the next announcement retries)
RETRY_PAUSE_S = 0.5  # before retrying a failed request: a fresh connection settling after a heal
REPEAT_EVERY = 5  # unchanged heads are re-announced every 5th interval (repair for lost gossip)

log = logging.getLogger("quantian.ledger_sync")


class AnnouncementRejected(NodeError):
    code = "heads_rejected"


@dataclass(frozen=True)
class HeadsAnnouncement:
    signed_head: bytes | None  # the announcer's own signed head header (fork detection)
    heads: tuple[tuple[str, int, bytes], ...]  # every chain the announcer holds
    forks: tuple[bytes, ...]  # fork proofs it knows

    def encode(self) -> bytes:
        return cbor2.dumps({"signed_head": self.signed_head, "heads": [list(h) for h in self.heads],
                            "forks": list(self.forks)})

    @classmethod
    def decode(cls, data: bytes) -> "HeadsAnnouncement":
        if len(data) > MAX_ANNOUNCEMENT_BYTES:
            raise AnnouncementRejected(f"announcement of {len(data)} bytes is too large")
        try:
            raw = cbor2.loads(data)
            signed_head = raw["signed_head"]
            if signed_head is not None and not isinstance(signed_head, bytes):
                raise TypeError("signed_head must be bytes")
            heads = tuple((str(a), int(h), bytes(x)) for a, h, x in raw["heads"][:MAX_ANNOUNCED_HEADS])
            forks = tuple(bytes(p) for p in raw.get("forks", [])[:MAX_ANNOUNCED_FORKS])
        except AnnouncementRejected:
            raise
        except Exception as exc:  # hostile bytes: many exception types
            raise AnnouncementRejected(f"malformed heads announcement: {type(exc).__name__}: {exc}") from None
        return cls(signed_head, heads, forks)


# --- serving ranges ------------------------------------------------------------------------------


class Handler:
    """Serves `{author, start, max_count}` with at most MAX_BLOCKS_PER_REQUEST / MAX_RESPONSE_BYTES,
    and `{heads: true}` with our heads announcement (what gossip carries, asked for directly)."""

    def __init__(self, ledger, admission: Admission, metrics: Metrics) -> None:
        self._ledger = ledger
        self._admission = admission
        self._metrics = metrics

    async def __call__(self, stream) -> None:
        if not self._admission.is_member(stream.remote_peer):
            self._metrics.inc("ledger_sync.refused.not_member")
            await write_frames(stream, [{"ok": False, "error": "not a member of this network"}])
            return
        frame = await FrameReader(stream, 4096).read_frame(REQUEST_TIMEOUT_S)
        if frame.get("heads") is True:
            self._metrics.inc("ledger_sync.served_heads")
            await write_frames(stream, [{"ok": True, "announcement": (await build_announcement(self._ledger)).encode()}])
            return
        author, start, max_count = frame.get("author"), frame.get("start"), frame.get("max_count")
        if not isinstance(author, str) or not isinstance(start, int) or not isinstance(max_count, int) or start < 0:
            self._metrics.inc("ledger_sync.bad_request")
            await write_frames(stream, [{"ok": False, "error": "expected {author: str, start: int >= 0, max_count: int}"}])
            return
        count = max(1, min(max_count, MAX_BLOCKS_PER_REQUEST))
        blocks = await self._ledger.get_blocks(author, start, count, MAX_RESPONSE_BYTES - 64 * 1024)
        self._metrics.inc("ledger_sync.served_blocks", len(blocks))
        await write_frames(stream, [{"ok": True, "blocks": blocks}])


async def fetch(host: Host, peer_id: str, author: str, start: int, max_count: int = MAX_BLOCKS_PER_REQUEST) -> list[bytes]:
    """Ask `peer_id` for `author`'s blocks from `start`. Raises NodeError / StreamClosed."""
    reply = await _ask(host, peer_id, {"author": author, "start": start, "max_count": max_count})
    if not reply.get("ok"):
        raise NodeError(f"{peer_id} refused ledger sync: {reply.get('error')}")
    blocks = reply.get("blocks")
    if not isinstance(blocks, list) or not all(isinstance(b, bytes) for b in blocks):
        raise NodeError(f"{peer_id} sent a malformed block list")
    return blocks[:MAX_BLOCKS_PER_REQUEST]


async def fetch_heads(host: Host, peer_id: str) -> HeadsAnnouncement:
    """Ask `peer_id` for its heads directly (anti-entropy on (re)connection: gossip meshes take
    heartbeats to form after a partition heals). Raises NodeError / StreamClosed."""
    reply = await _ask(host, peer_id, {"heads": True})
    if not reply.get("ok") or not isinstance(reply.get("announcement"), bytes):
        raise NodeError(f"{peer_id} refused a heads request: {reply.get('error')}")
    return HeadsAnnouncement.decode(reply["announcement"])


async def _ask(host: Host, peer_id: str, message: dict[str, Any]) -> dict[str, Any]:
    """One request/reply, bounded as a whole: a peer cut off mid-request (partition) must not
    hold a pull slot for longer than REQUEST_TIMEOUT_S."""
    try:
        with trio.fail_after(REQUEST_TIMEOUT_S):
            stream = await host.open_stream(peer_id, PROTOCOL_ID)
            try:
                return await request(stream, message, timeout=REQUEST_TIMEOUT_S, max_frame=MAX_RESPONSE_BYTES)
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                    await stream.close()
    except trio.TooSlowError:
        raise NodeError(f"{peer_id} did not answer a ledger-sync request within {REQUEST_TIMEOUT_S:.0f} s") from None


async def build_announcement(ledger) -> HeadsAnnouncement:
    heads = await ledger.heads()
    return HeadsAnnouncement(
        signed_head=await ledger.signed_head(ledger.author),
        heads=tuple((h.author, h.height, h.hash) for h in heads),
        forks=tuple((await ledger.fork_proofs())[:MAX_ANNOUNCED_FORKS]),
    )


# --- the replicator service ---------------------------------------------------------------------


class Replicator:
    """Announces our heads, pulls what others have ahead of us, spreads fork proofs."""

    def __init__(self, host: Host, ledger, admission: Admission, metrics: Metrics, *, announce_interval_s: float) -> None:
        self._host = host
        self._ledger = ledger
        self._admission = admission
        self._metrics = metrics
        self._interval = announce_interval_s
        self._pulling: set[str] = set()
        self._wanted: dict[str, tuple[int, str]] = {}  # author -> (newest announced height, announcer)
        self._syncing: set[str] = set()
        self._pull_limit = trio.Semaphore(MAX_CONCURRENT_PULLS)
        self._nursery: trio.Nursery | None = None
        self._known_forks: dict[tuple[str, int], bytes] = {}
        host.set_stream_handler(PROTOCOL_ID, Handler(ledger, admission, metrics))
        host.set_topic_validator(HEADS_TOPIC, self._validate)
        admission.add_admit_listener(self.on_peer_admitted)

    def _validate(self, forwarder: str, message: GossipMessage) -> bool:
        if forwarder != self._host.peer_id and not self._admission.is_member(forwarder):
            self._metrics.inc("ledger_sync.heads_dropped.forwarder_not_admitted")
            return False
        try:
            HeadsAnnouncement.decode(message.data)
        except AnnouncementRejected:
            self._metrics.inc("ledger_sync.heads_dropped.malformed")
            return False
        return True

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        messages = await self._host.subscribe(HEADS_TOPIC)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._receive, messages)
            nursery.start_soon(self._announce_loop)
            task_status.started()

    async def announcement(self) -> HeadsAnnouncement:
        return await build_announcement(self._ledger)

    def on_peer_admitted(self, peer_id: str) -> None:
        """A member (re)connected: exchange heads with it directly, without waiting for gossip."""
        if self._nursery is not None and peer_id not in self._syncing and self._admission.is_member(peer_id):
            self._syncing.add(peer_id)
            self._nursery.start_soon(self._sync_with, peer_id)

    async def _sync_with(self, peer_id: str) -> None:
        """Heads from a (re)admitted member; retried briefly, because right after a heal the
        first request often meets a connection that is being replaced, and the next hint
        (gossip) is an announce interval away (measured: catch-up took 7-8 s instead of ~2)."""
        try:
            for attempt in range(HEADS_ATTEMPTS):
                if attempt:
                    await trio.sleep(RETRY_PAUSE_S * attempt)  # let the new connection settle
                if not (self._admission.is_member(peer_id) and self._host.is_connected(peer_id)):
                    return
                try:
                    announcement = await fetch_heads(self._host, peer_id)
                except (NodeError, StreamClosed) as exc:
                    self._metrics.inc("ledger_sync.heads_request_failed")
                    log.debug("heads request to %s failed (attempt %d): %s", peer_id, attempt + 1, exc)
                    continue
                self._metrics.inc("ledger_sync.heads_exchanged")
                await self._on_announcement(peer_id, announcement)
                return
        finally:
            self._syncing.discard(peer_id)

    async def _announce_loop(self) -> None:
        """Announce when our heads changed, else every REPEAT_EVERY intervals (gossip costs every
        node ~10-20 ms of CPU per message: LIBP2P-NOTES §3)."""
        last: bytes | None = None
        quiet = 0
        while True:
            encoded = (await self.announcement()).encode()
            if encoded != last or quiet >= REPEAT_EVERY:
                await self._host.publish(HEADS_TOPIC, encoded)
                self._metrics.inc("ledger_sync.announced")
                last, quiet = encoded, 0
            else:
                quiet += 1
            await trio.sleep(self._interval)  # a periodic hint: elapsed time is the behaviour

    async def _receive(self, messages) -> None:
        async for message in messages:
            if message.origin == self._host.peer_id:
                continue
            try:
                announcement = HeadsAnnouncement.decode(message.data)
            except AnnouncementRejected:
                continue
            await self._on_announcement(message.origin, announcement)

    async def _on_announcement(self, origin: str, announcement: HeadsAnnouncement) -> None:
        if announcement.signed_head is not None:
            try:
                await self._ledger.offer_header(announcement.signed_head)
            except LedgerError as exc:
                self._metrics.inc(f"ledger_sync.bad_header.{exc.code}")
                await self._ledger.report_failure(exc, sender=origin)
        for proof in announcement.forks:
            await self._accept_fork_proof(proof, origin)
        local = {h.author: h for h in await self._ledger.heads()}
        for author, height, _hash in announcement.heads:
            if author == self._ledger.author:
                continue
            held = local.get(author)
            if held is not None and held.height >= height:
                continue
            wanted = self._wanted.get(author)
            if wanted is None or wanted[0] < height:
                self._wanted[author] = (height, origin)  # the newest announcer serves the next pull
            if author not in self._pulling and self._nursery:
                self._pulling.add(author)
                self._nursery.start_soon(self._pull, author)

    async def _accept_fork_proof(self, proof: bytes, origin: str) -> None:
        accept = getattr(self._ledger, "accept_fork_proof", None)
        if accept is None:
            return
        try:
            await accept(proof)
        except LedgerError as exc:
            self._metrics.inc(f"ledger_sync.bad_fork_proof.{exc.code}")
            await self._ledger.report_failure(exc, sender=origin)

    async def _pull(self, author: str) -> None:
        """Pull `author`'s chain up to the newest height announced for it, from whoever announced
        it last; announcements that arrive meanwhile retarget the pull instead of being dropped."""
        try:
            async with self._pull_limit:
                retries = PULL_RETRIES
                for _ in range(MAX_PULL_ROUNDS):
                    wanted = self._wanted.pop(author, None)
                    if wanted is None:
                        return
                    if not await self._pull_range(author, *wanted) and retries:
                        # the request failed (connection churn after a heal): try again shortly
                        # unless a newer announcement already retargeted the pull; few times, so
                        # a dead announcer cannot hold a pull slot for long
                        retries -= 1
                        self._wanted.setdefault(author, wanted)
                        await trio.sleep(RETRY_PAUSE_S)
        finally:
            self._pulling.discard(author)
            self._wanted.pop(author, None)  # a later announcement starts afresh

    async def _pull_range(self, author: str, target_height: int, peer: str) -> bool:
        """Pull `author`'s blocks up to `target_height` from `peer`; False when a request failed
        (worth retrying), True when done or refused for good (invalid blocks, own store full)."""
        while True:
            held = {h.author: h.height for h in await self._ledger.heads()}.get(author)
            start = 0 if held is None else held + 1
            if start > target_height:
                return True
            try:
                blocks = await fetch(self._host, peer, author, start)
            except (NodeError, StreamClosed) as exc:
                self._metrics.inc("ledger_sync.pull_failed")
                log.debug("pull %s[%d..] from %s failed: %s", author, start, peer, exc)
                return False
            if not blocks:
                return True
            try:
                result = await self._ledger.ingest_blocks(author, blocks)
            except LedgerError as exc:  # our own store failed (e.g. disk full): not the sender's fault
                self._metrics.inc("ledger_sync.store_failed")
                log.error("cannot store blocks of %s pulled from %s (retried on the next announcement): %s",
                          author, peer, exc)
                return True
            self._metrics.inc("ledger_sync.blocks_ingested", result.added)
            if result.error is not None:
                self._metrics.inc(f"ledger_sync.rejected.{result.error.code}")
                await self._ledger.report_failure(result.error, sender=peer)
                if result.fork_proof is None:  # invalid blocks: penalise the sender
                    self._admission.refuse(peer, "invalid_blocks")
                    await self._host.disconnect(peer)
                return True
            if result.added == 0:
                return True
