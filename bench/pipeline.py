"""End-to-end pipeline benchmark (issue 7): prints figures, asserts nothing.

    .venv/bin/python bench/pipeline.py [--rates 500,1000,2000,5000,10000] [--count 10000]
                                       [--broker auto|mosquitto|embedded] [--dir DIR] [--quick]
                                       [--heartbeat SECONDS] [--iot-bridges N]

Starts a fresh 6-node testnet (`quantian-testnet up --no-sim`, Mosquitto when present, else the
embedded broker), then for each rate publishes --count simulated ticks with `quantian-sim`
(QoS 1, ceil(rate / 2,000) publisher connections) and follows them through the real pipeline
(broker -> iot-1 -> ingestion-1 -> anomaly-1 / risk-1) by polling the nodes' `status` over the
operator control channel. --iot-bridges N adds N - 1 more iot nodes first: the bridges share the
MQTT subscription, so the broker splits the stream between them. Per rate it reports:

- published (PUBACKed by the broker), accepted (valid at the iot nodes, also per bridge),
  ingested, scored, stored, risk applied;
- sustained throughput = scored / (time the last tick was seen scored - first publish);
- publish->scored latency median / p99 (see "Latency" below);
- CPU per tick per node (utime+stime from /proc/PID/stat, nodes only) and for the network, also
  net of the idle network's own CPU (measured over two heartbeats after warm-up) over the same
  window; the idle network's CPU while this harness polls it (`polled_idle_network_cpu_cores`)
  shows what the observer itself costs (the polls reuse one control stream: ~1.4 ms of
  anomaly-1's CPU each);
- peak RSS (VmHWM) per node; ledger bytes per tick: growth of one node's ledger database (the
  largest of the six; every node holds every chain), also its signed block bytes alone and the sum
  over all six replicas.

Latency: the simulator prints its progress ("sent N") once a second on stderr; the harness
timestamps those lines into a publish timeline ("sent 0" placed at first-line time - sent / rate,
i.e. after interpreter start-up and connect). Every --poll
seconds it asks anomaly-1 for `scored`, stamps the answer with the midpoint of the request, and
takes latency = stamp - (time the publisher had sent that many ticks, linear interpolation of
the timeline). It counts ticks, not identities: an upper bound by up to one poll interval plus
half a control round trip, a FIFO approximation across symbols. Published ticks carry their own
event_time (simulator clock = now at launch, 1/rate apart), which this does not use.

A rate is "sustained" when nothing is lost (ingested == scored == stored == risk applied ==
published), throughput >= 90 % of the offered rate and the p99 latency <= --latency-bound-ms.
The highest such rate is `max_sustained_ticks_per_s`. A rate that does not drain within
--drain-timeout stops the series (later rates would measure the backlog).

Before the first rate, --warmup ticks at 1000/s (not reported) and a bounded wait for idle nodes.

Ends with one JSON line. Ctrl-C or any failure tears the testnet down (try/finally).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from bisect import bisect_left
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path (bench/sim.py would shadow sim).
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

from node.config import NodeConfig  # noqa: E402  (after the path fix above)

BIN = Path(sys.executable).parent
TESTNET = [str(BIN / "quantian-testnet")] if (BIN / "quantian-testnet").exists() else [sys.executable, "-m", "testnet.cli"]
SIM = [str(BIN / "quantian-sim")] if (BIN / "quantian-sim").exists() else [sys.executable, "-m", "sim.cli"]
CLK_TCK = os.sysconf("SC_CLK_TCK")
PER_PUBLISHER = 2000  # ticks/s one publisher connection sustains comfortably
TARGETS = {"sustained_ticks_per_s": 2000, "p99_latency_ms_at_1000": 250, "network_cpu_us_per_tick": 300,
           "ledger_bytes_per_tick": 64, "max_rss_mb": 150}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def rss_peak_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return float("nan")


def rss_now_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return float("nan")


def ledger_bytes(data_dir: Path) -> dict[str, float]:
    """What one node's ledger holds: `db`, the SQLite database's used pages as this read-only
    connection sees them (WAL content included: the WAL file itself is a bounded, reused log, so its
    file size is no measure of growth), and `blocks`, the signed block bytes inside it."""
    try:
        conn = sqlite3.connect(f"file:{data_dir / 'ledger.sqlite'}?mode=ro", uri=True, timeout=5)
        try:
            pages, free, size = (conn.execute(f"PRAGMA {p}").fetchone()[0]
                                 for p in ("page_count", "freelist_count", "page_size"))
            blocks = conn.execute("SELECT COALESCE(SUM(length(data)), 0) FROM blocks").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return {"db": math.nan, "blocks": math.nan}
    return {"db": float((pages - free) * size), "blocks": float(blocks)}


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


class Net:
    """The testnet under test: CLI, state, control-channel status."""

    def __init__(self, directory: Path, broker: str, heartbeat: float | None = None) -> None:
        self.dir, self.broker, self.heartbeat = directory, broker, heartbeat
        self.state: dict = {}
        self.control = None
        self.addrs: dict[str, str] = {}

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(TESTNET + list(args) + ["--dir", str(self.dir)], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def up(self, timeout: float) -> float:
        start = time.monotonic()
        beat = ["--heartbeat", f"{self.heartbeat:g}"] if self.heartbeat else []
        proc = self.cli("up", "--broker", self.broker, "--no-sim", *beat, "--json",
                        "--timeout", str(timeout), timeout=timeout + 60)
        if proc.returncode != 0:
            raise RuntimeError(f"quantian-testnet up exited {proc.returncode}: {proc.stderr[-2000:]}")
        self._load_state()
        from node.control_client import ControlClient, OperatorCredentials
        self.control = ControlClient(OperatorCredentials.load(self.dir / "operator"))
        self.control.__enter__()
        return time.monotonic() - start

    def _load_state(self) -> None:
        self.state = json.loads((self.dir / "testnet.json").read_text())
        for node in self.state["nodes"]:
            listen = json.loads((Path(node["data_dir"]) / "node.json").read_text())["listen"]
            self.addrs[node["name"]] = listen[0] if isinstance(listen, list) else listen

    def add(self, role: str, timeout: float) -> str:
        """One more node of `role` (`quantian-testnet add`, which waits until it has joined)."""
        proc = self.cli("add", role, "--timeout", str(timeout), timeout=timeout + 60)
        if proc.returncode != 0:
            raise RuntimeError(f"quantian-testnet add {role} exited {proc.returncode}: {proc.stderr[-2000:]}")
        self._load_state()
        return proc.stdout.strip().splitlines()[-1]

    @property
    def bridges(self) -> list[str]:
        """The iot nodes: every one subscribes to the market topics (a shared subscription)."""
        return [n["name"] for n in self.nodes if n["name"].startswith("iot-")]

    def down(self) -> None:
        if self.control is not None:
            try:
                self.control.__exit__(None, None, None)
            except Exception:  # noqa: BLE001 - teardown goes on regardless
                pass
            self.control = None
        if (self.dir / "testnet.json").exists():
            proc = self.cli("down", timeout=120)
            if proc.returncode != 0:
                log(f"quantian-testnet down exited {proc.returncode}: {proc.stderr[-500:]}")

    @property
    def url(self) -> str:
        return self.state["broker"]["url"]

    @property
    def nodes(self) -> list[dict]:
        return self.state["nodes"]

    def role(self, name: str, role: str) -> dict:
        return self.control.request(self.addrs[name], "status", timeout=30)["roles_status"][role]

    def counters(self) -> dict[str, int]:
        ing = self.role("ingestion-1", "ingestion")
        iots = {name: self.role(name, "iot") for name in self.bridges}
        ano = self.role("anomaly-1", "anomaly")
        return {"accepted": sum(i["valid"] for i in iots.values()),
                **{f"accepted:{name}": i["valid"] for name, i in iots.items()},
                "delivery_retries": sum(i.get("delivery_retries", 0) for i in iots.values()),
                "routing_failures": ing.get("routing_failures", 0), "score_duplicates": ano.get("duplicates", 0),
                "received": ing["received"], "ingested": ing["ingested"],
                # events ever stored: `stored` is the rows held, which pruning keeps near 200,000
                "duplicates": ing["duplicates"], "stored": ing["stored_total"],
                "pending": ing["pending_score"] + ing["pending_risk"],
                "scored": ano["scored"], "alerts": ano["alerts"],
                "reorder_hold_releases": ing.get("reorder_hold_releases", 0),
                "risk_applied": self.role("risk-1", "risk")["applied"]}

    def resources(self) -> dict:
        return {"cpu": {n["name"]: cpu_s(n["pid"]) for n in self.nodes},
                "ledger": {n["name"]: ledger_bytes(Path(n["data_dir"])) for n in self.nodes}}


class SimRun:
    """quantian-sim in the background; its stderr progress lines become a publish timeline."""

    def __init__(self, url: str, rate: float, count: int, seed: int, publishers: int) -> None:
        self.timeline: list[tuple[float, int]] = []
        self.rate = rate
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            SIM + ["--mqtt-url", url, "--rate", str(rate), "--count", str(count), "--seed", str(seed),
                   "--publishers", str(publishers)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        self.timeline.append((self.t0, 0))
        self.stderr_tail: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            now = time.monotonic()
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "quantian-sim:" and parts[1] == "sent":
                sent = int(parts[2])
                if len(self.timeline) == 1 and sent:
                    # publishing began after interpreter start-up and connect: place "sent 0" where
                    # the pacing says it was (the publisher keeps start + i / rate)
                    self.timeline[0] = (max(self.t0, now - sent / self.rate), 0)
                self.timeline.append((now, sent))
            else:
                self.stderr_tail = (self.stderr_tail + [line.rstrip()])[-5:]

    def finish(self, timeout: float) -> dict:
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            return {"error": "simulator timed out"}
        self._reader.join(timeout=2)
        lines = [line for line in (out or "").splitlines() if line.startswith("{")]
        summary = json.loads(lines[-1]) if lines else {"error": f"exit {self.proc.returncode}: {self.stderr_tail}"}
        end = time.monotonic()
        if "sent" in summary:
            self.timeline.append((end, summary["sent"]))
        return summary

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def sent_at(self, n: int) -> float | None:
        """Monotonic time the publisher had sent n ticks (linear interpolation of the timeline)."""
        tl = sorted(set(self.timeline))
        counts = [c for _, c in tl]
        i = bisect_left(counts, n)
        if i >= len(tl):
            return None
        if counts[i] == n or i == 0:
            return tl[i][0]
        (t1, c1), (t2, c2) = tl[i - 1], tl[i]
        return t1 + (t2 - t1) * (n - c1) / (c2 - c1)


def run_rate(net: Net, rate: float, count: int, seed: int, args) -> dict:
    publishers = args.publishers or max(1, math.ceil(rate / PER_PUBLISHER))
    before = net.counters()
    res0 = net.resources()
    samples: list[tuple[float, int]] = []  # (monotonic midpoint, scored since start)
    sim = SimRun(net.url, rate, count, seed, publishers)
    hard_deadline = sim.t0 + count / rate * 3 + args.drain_timeout + 30
    last_scored, last_change, drained = 0, time.monotonic(), False
    summary: dict = {}
    try:
        while time.monotonic() < hard_deadline:
            t1 = time.monotonic()
            scored = net.role("anomaly-1", "anomaly")["scored"] - before["scored"]
            t2 = time.monotonic()
            samples.append(((t1 + t2) / 2, scored))
            if scored != last_scored:
                last_scored, last_change = scored, t2
            if not summary and sim.proc.poll() is not None:
                summary = sim.finish(timeout=10)
            if summary and scored >= summary.get("sent", count):
                drained = True
                break
            if summary and t2 - last_change > args.drain_timeout:
                break  # no progress for drain-timeout seconds: lost or stuck
            time.sleep(args.poll)
        if not summary:
            summary = sim.finish(timeout=max(1.0, hard_deadline - time.monotonic()))
    finally:
        sim.stop()
    # the other counters settle shortly after scoring; give them a bounded moment
    deadline = time.monotonic() + (10 if drained else 2)
    while True:
        after = net.counters()
        d = {k: after[k] - before[k] for k in after}
        settled = d["ingested"] == d["stored"] == d["risk_applied"] and after["pending"] == 0
        if settled or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    res1 = net.resources()
    cpu_window = time.monotonic() - sim.t0

    published = summary.get("acked", 0)
    first_full = next((t for t, s in samples if s >= published), None) if published else None
    publish_start = sim.timeline[0][0]  # estimated first publish (see SimRun._read)
    elapsed = (first_full or samples[-1][0]) - publish_start
    lat = []
    for t, s in samples:
        if 0 < s <= published:
            ts = sim.sent_at(s)
            if ts is not None:
                lat.append((t - ts) * 1000)
    ticks = max(d["scored"], 1)
    cpu = {n: (res1["cpu"][n] - res0["cpu"][n]) / ticks * 1e6 for n in res1["cpu"]}
    # Every node holds every chain, so one node's growth is the ledger's cost per tick; the sum
    # over all replicas is what the network's disks pay together.
    growth = {n: {k: res1["ledger"][n][k] - res0["ledger"][n][k] for k in ("db", "blocks")} for n in res1["ledger"]}
    ledger_db = max(g["db"] for g in growth.values())
    ledger_blocks = max(g["blocks"] for g in growth.values())
    ledger_all = sum(g["db"] for g in growth.values())
    zero_loss = published > 0 and d["ingested"] == d["scored"] == d["stored"] == d["risk_applied"] == published
    throughput = d["scored"] / elapsed if elapsed > 0 else 0.0
    p99 = pct(lat, 0.99)
    row = {
        "rate": rate, "count": count, "publishers": publishers,
        "published": published, "publish_rate": summary.get("rate"), "publish_failed": summary.get("failed"),
        "accepted": d["accepted"], "ingested": d["ingested"], "duplicates": d["duplicates"],
        "accepted_by_bridge": {k.split(":", 1)[1]: v for k, v in d.items() if k.startswith("accepted:")},
        "scored": d["scored"], "stored": d["stored"], "risk_applied": d["risk_applied"],
        "pending_after": after["pending"], "delivery_retries": d["delivery_retries"],
        "routing_failures": d["routing_failures"], "score_duplicates": d["score_duplicates"],
        "alerts": d["alerts"], "reorder_hold_releases": d["reorder_hold_releases"],
        "throughput_ticks_per_s": round(throughput, 1), "elapsed_s": round(elapsed, 2), "drained": drained,
        "latency_ms_median": round(statistics.median(lat), 1) if lat else None,
        "latency_ms_p99": round(p99, 1) if p99 is not None else None, "latency_samples": len(lat),
        "cpu_us_per_tick": {n: round(v, 1) for n, v in cpu.items()},
        "network_cpu_us_per_tick": round(sum(cpu.values()), 1), "cpu_window_s": round(cpu_window, 2),
        "ledger_bytes_per_tick": round(ledger_db / ticks, 1),
        "ledger_block_bytes_per_tick": round(ledger_blocks / ticks, 1),
        "ledger_bytes_per_tick_all_replicas": round(ledger_all / ticks, 1),
        "rss_peak_mb": {n["name"]: round(rss_peak_mb(n["pid"]), 1) for n in net.nodes},
        "zero_loss": zero_loss,
    }
    row["sustained"] = bool(zero_loss and throughput >= 0.9 * rate and p99 is not None
                            and p99 <= args.latency_bound_ms)
    if "error" in summary:
        row["error"] = summary["error"]
    return row


def settle(net: Net, limit: float, idle_cores: float = 0.15) -> None:
    """Wait (at most `limit` s) until the nodes together use < idle_cores CPU over one second."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if idle_rate(net, 1.0) < idle_cores:
            return


def idle_rate(net: Net, seconds: float) -> float:
    """CPU cores the nodes use together with no traffic (heartbeats, gossip, ledger passes)."""
    a, t = sum(net.resources()["cpu"].values()), time.monotonic()
    time.sleep(seconds)
    return (sum(net.resources()["cpu"].values()) - a) / (time.monotonic() - t)


def probe_rate(net: Net, seconds: float, poll: float) -> float:
    """CPU cores the nodes use together while this harness polls anomaly-1's status every `poll`
    s with no traffic: the observer's own cost, which every rate's figures include."""
    a, t = sum(net.resources()["cpu"].values()), time.monotonic()
    while time.monotonic() - t < seconds:
        net.role("anomaly-1", "anomaly")
        time.sleep(poll)
    return (sum(net.resources()["cpu"].values()) - a) / (time.monotonic() - t)


def run_memory(net: Net, rate: float, count: int, seed: int, args) -> dict:
    """A long run at one rate while VmRSS of every node is sampled: state must stay bounded."""
    pids = {n["name"]: n["pid"] for n in net.nodes}
    start = {name: rss_now_mb(pid) for name, pid in pids.items()}
    peak = dict(start)
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(2.0):
            for name, pid in pids.items():
                peak[name] = max(peak[name], rss_now_mb(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        row = run_rate(net, rate, count, seed, args)
    finally:
        stop.set()
        sampler.join(timeout=5)
    end = {name: rss_now_mb(pid) for name, pid in pids.items()}
    peak = {name: max(peak[name], end[name]) for name in pids}
    return {"rate": rate, "ticks": count, "scored": row["scored"], "zero_loss": row["zero_loss"],
            "counts": {k: row[k] for k in ("published", "accepted", "ingested", "stored", "risk_applied",
                                           "duplicates", "pending_after")},
            "throughput_ticks_per_s": row["throughput_ticks_per_s"],
            "network_cpu_us_per_tick": row["network_cpu_us_per_tick"],
            "rss_start_mb": {n: round(v, 1) for n, v in start.items()},
            "rss_end_mb": {n: round(v, 1) for n, v in end.items()},
            "rss_max_mb": {n: round(v, 1) for n, v in peak.items()},
            "rss_growth_mb": {n: round(end[n] - start[n], 1) for n in pids}}


def print_memory(memory: dict, out=sys.stdout) -> None:
    print(f"\nMemory over {memory['ticks']:,} ticks at {memory['rate']:g}/s (scored {memory['scored']:,}, "
          f"zero loss: {memory['zero_loss']}): VmRSS MB start / end / max", file=out)
    for name in memory["rss_start_mb"]:
        print(f"  {name:<12} {memory['rss_start_mb'][name]:>7.1f} {memory['rss_end_mb'][name]:>7.1f} "
              f"{memory['rss_max_mb'][name]:>7.1f}", file=out)


def short(name: str) -> str:
    return {"bootstrap-1": "bs1", "bootstrap-2": "bs2", "ingestion-1": "ing", "anomaly-1": "ano",
            "iot-1": "iot", "risk-1": "risk"}.get(name, name.replace("-", "")[:6])


def print_table(rows: list[dict], out=sys.stdout) -> None:
    head = (f"{'rate/s':>7} {'publ':>7} {'accep':>7} {'ingest':>7} {'scored':>7} {'stored':>7} {'thru/s':>8} "
            f"{'p50ms':>7} {'p99ms':>7} {'cpu us/t':>8} {'-idle':>6} {'B/tick':>7} {'ok':>3}")
    print(head, file=out)
    for r in rows:
        print(f"{r['rate']:>7g} {r['published']:>7} {r['accepted']:>7} {r['ingested']:>7} {r['scored']:>7} "
              f"{r['stored']:>7} {r['throughput_ticks_per_s']:>8.0f} {r['latency_ms_median'] or float('nan'):>7.0f} "
              f"{r['latency_ms_p99'] or float('nan'):>7.0f} {r['network_cpu_us_per_tick']:>8.0f} "
              f"{r.get('network_cpu_us_per_tick_above_idle', float('nan')):>6.0f} "
              f"{r['ledger_bytes_per_tick']:>7.0f} {'yes' if r['sustained'] else 'no':>3}", file=out)
    if rows and len(rows[0].get("accepted_by_bridge", {})) > 1:
        print("\nAccepted per iot bridge (the broker's split of the shared subscription):", file=out)
        for r in rows:
            print(f"{r['rate']:>7g} " + " ".join(f"{n}={v}" for n, v in r["accepted_by_bridge"].items()), file=out)
    if rows:
        names = list(rows[0]["cpu_us_per_tick"])
        print("\nCPU us per tick per node / peak RSS MB:", file=out)
        print(f"{'rate/s':>7} " + " ".join(f"{short(n):>11}" for n in names), file=out)
        for r in rows:
            print(f"{r['rate']:>7g} " + " ".join(
                f"{r['cpu_us_per_tick'][n]:>5.0f}/{r['rss_peak_mb'][n]:>5.0f}" for n in names), file=out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", default="500,1000,2000,5000,10000", help="comma-separated ticks/s (default %(default)s)")
    p.add_argument("--count", type=int, default=10_000, help="ticks per rate (default %(default)s)")
    p.add_argument("--dir", type=Path, help="testnet directory (default: a fresh temporary one, removed after)")
    p.add_argument("--broker", default="auto", choices=("auto", "mosquitto", "embedded"))
    p.add_argument("--quick", action="store_true", help="smoke run: one rate (1,000/s), 2,000 ticks")
    p.add_argument("--publishers", type=int, default=0, help="publisher connections (default ceil(rate/2000))")
    p.add_argument("--poll", type=float, default=0.1, help="seconds between status polls (default %(default)s)")
    p.add_argument("--drain-timeout", type=float, default=30.0,
                   help="stop waiting for a rate after this many seconds without progress (default %(default)s)")
    p.add_argument("--latency-bound-ms", type=float, default=1000.0,
                   help="p99 publish->scored bound for a rate to count as sustained (default %(default)s)")
    p.add_argument("--warmup", type=int, default=2000, help="ticks at 1000/s before measuring, 0: none (default %(default)s)")
    p.add_argument("--settle", type=float, default=10.0, help="max seconds to wait for idle nodes after warm-up")
    p.add_argument("--pause", type=float, default=2.0, help="seconds between rates (default %(default)s)")
    p.add_argument("--up-timeout", type=float, default=240.0)
    p.add_argument("--heartbeat", type=float, default=None,
                   help="node heartbeat in seconds (default: the node's own, as users run it). Every node "
                        "gossips an advert per heartbeat, so the idle network's CPU grows as it shrinks "
                        "(measured: ~0.05 cores at 5 s, ~0.11-0.15 at 2 s)")
    p.add_argument("--iot-bridges", type=int, default=1,
                   help="iot nodes sharing the MQTT subscription ($share/quantian/..., MQTT 5): the extra "
                        "ones join with `quantian-testnet add iot` before the warm-up (default %(default)s)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--memory-ticks", type=int, default=0,
                   help="after the rates, this many more ticks at --memory-rate while every node's RSS is "
                        "sampled (the issue's check: 1000000); 0: skip (default)")
    p.add_argument("--memory-rate", type=float, default=3000.0, help="ticks/s of the memory run (default %(default)s)")
    args = p.parse_args(argv)
    rates = [1000.0] if args.quick else [float(r) for r in args.rates.split(",") if r.strip()]
    count = 2000 if args.quick and args.count == 10_000 else args.count
    if args.quick:
        args.drain_timeout = min(args.drain_timeout, 15.0)
        args.warmup, args.settle = min(args.warmup, 500), min(args.settle, 3.0)
    if not rates or count < 1 or any(r <= 0 for r in rates):
        p.error("--rates must be positive numbers and --count >= 1")
    if args.iot_bridges < 1:
        p.error("--iot-bridges must be >= 1")
    if args.memory_ticks < 0 or args.memory_rate <= 0:
        p.error("--memory-ticks must be >= 0 and --memory-rate > 0")

    own_dir = args.dir is None
    directory = Path(tempfile.mkdtemp(prefix="quantian-bench-")) if own_dir else args.dir.resolve()
    net = Net(directory, args.broker, args.heartbeat)
    rows: list[dict] = []
    started = time.monotonic()
    load_before = os.getloadavg()
    up_s = None
    idle_cores = probe_cores = None
    memory: dict | None = None
    try:
        log(f"starting testnet in {directory} (broker {args.broker})")
        up_s = net.up(args.up_timeout)
        log(f"testnet up in {up_s:.1f} s, broker {net.state['broker'].get('kind')} {net.url}")
        for _ in range(args.iot_bridges - 1):
            log(f"added {net.add('iot', args.up_timeout)} (bridges: {', '.join(net.bridges)})")
        if args.warmup:
            # detectors, routing tables and ledger chains start cold; the start-up CPU (mesh,
            # first ledger passes) settles too: neither belongs to the first rate's figures
            log(f"warm-up: {args.warmup} ticks at 1000/s, then settle (<= {args.settle:g} s)")
            warm = argparse.Namespace(**{**vars(args), "drain_timeout": min(args.drain_timeout, 20.0)})
            run_rate(net, 1000.0, args.warmup, args.seed + 1000, warm)
            settle(net, args.settle)
        # two heartbeats each (adverts and ledger passes come per heartbeat): 3 s windows measured
        # 0.01-0.10 cores for the same idle network; --quick keeps 3 s (its 60 s budget)
        window = 3.0 if args.quick else 2 * (args.heartbeat or NodeConfig.heartbeat_s)
        idle_cores = idle_rate(net, window)
        probe_cores = probe_rate(net, window, args.poll)
        log(f"idle network CPU: {idle_cores:.3f} cores; while polled every {args.poll:g} s: {probe_cores:.3f}")
        for i, rate in enumerate(rates):
            log(f"rate {rate:g}/s: {count} ticks")
            row = run_rate(net, rate, count, args.seed + i, args)
            # the part of the CPU the ticks cost: minus what the idle network burns in the same time
            idle_us = idle_cores * row["cpu_window_s"] / max(row["scored"], 1) * 1e6
            row["network_cpu_us_per_tick_above_idle"] = round(row["network_cpu_us_per_tick"] - idle_us, 1)
            rows.append(row)
            log(f"  scored {row['scored']}/{row['published']} thru {row['throughput_ticks_per_s']}/s "
                f"p99 {row['latency_ms_p99']} ms cpu {row['network_cpu_us_per_tick']} us/tick "
                f"sustained={row['sustained']}")
            if not row["drained"]:
                log("  did not drain: stopping the series here")
                break
            if i + 1 < len(rates):
                settle(net, args.pause)
        if args.memory_ticks:
            settle(net, args.pause)
            log(f"memory run: {args.memory_ticks} ticks at {args.memory_rate:g}/s, sampling VmRSS every 2 s")
            memory = run_memory(net, args.memory_rate, args.memory_ticks, args.seed + 99, args)
    except KeyboardInterrupt:
        log("interrupted: tearing the testnet down")
    finally:
        net.down()
        if own_dir:
            shutil.rmtree(directory, ignore_errors=True)

    print_table(rows)
    if memory:
        print_memory(memory)
    sustained = [r["rate"] for r in rows if r["sustained"]]
    at_1000 = next((r for r in rows if r["rate"] == 1000), None)
    rss = [v for r in rows for v in r["rss_peak_mb"].values() if not math.isnan(v)]
    cpu_rows = [r for r in rows if r["sustained"]] or rows
    result = {
        "max_sustained_ticks_per_s": max(sustained) if sustained else 0,
        "network_cpu_us_per_tick": (round(statistics.median(r["network_cpu_us_per_tick"] for r in cpu_rows), 1)
                                    if cpu_rows else None),
        "network_cpu_us_per_tick_above_idle": (
            round(statistics.median(r.get("network_cpu_us_per_tick_above_idle", math.nan) for r in cpu_rows), 1)
            if cpu_rows else None),
        "p99_latency_ms_at_1000": at_1000["latency_ms_p99"] if at_1000 else None,
        "ledger_bytes_per_tick": (round(statistics.median(r["ledger_bytes_per_tick"] for r in cpu_rows), 1)
                                  if cpu_rows else None),
        "ledger_bytes_per_tick_all_replicas": (
            round(statistics.median(r["ledger_bytes_per_tick_all_replicas"] for r in cpu_rows), 1)
            if cpu_rows else None),
        "max_rss_mb": round(max(rss), 1) if rss else None,
        "broker": net.state.get("broker", {}).get("kind"),
        "heartbeat_s": args.heartbeat or NodeConfig.heartbeat_s,
        "iot_bridges": args.iot_bridges,
        "testnet_up_s": round(up_s, 1) if up_s is not None else None,
        "idle_network_cpu_cores": round(idle_cores, 3) if idle_cores is not None else None,
        "polled_idle_network_cpu_cores": round(probe_cores, 3) if probe_cores is not None else None,
        "wall_s": round(time.monotonic() - started, 1),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "targets": TARGETS,
        "rss_after_mb": max(memory["rss_end_mb"].values()) if memory else None,
        "rss_growth_mb": max(memory["rss_growth_mb"].values()) if memory else None,
        "memory": memory,
        "rows": rows,
    }
    print(json.dumps(result), flush=True)
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
