"""Run the production detector over a NAB-format corpus and score it.

    python bench/nab.py [--corpus DIR] [--out DIR] [--set name=value ...]

Uses exactly the code the anomaly role runs (node.analytics.detector with its
default config and DEFAULT_THRESHOLD), one fresh detector per file, scoring in
batches.  Writes DIR/<category>/<file>.csv with the column anomaly_score (the
alert stream: rows suppressed as part of an ongoing event are 0), scores it
with bench/nab_score.py, prints a table, and ends with one JSON line.  Progress
per file goes to stderr.  ``--set`` overrides a DetectorConfig field for
experiments; the published figures use none.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from nab_score import PROFILES, Corpus, Result, read_values
from node.analytics.detector import DetectorConfig, StreamingDetector

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = ROOT.parent / "shared" / "nab"
BATCH_ROWS = 1000


def run_file(values: np.ndarray, config: DetectorConfig, batch: int = BATCH_ROWS) -> np.ndarray:
    """Alert-stream scores of one series, fed to a fresh detector in batches."""
    det = StreamingDetector(config)
    parts = [det.detect(values[i:i + batch]).alert_scores for i in range(0, len(values), batch)]
    return np.concatenate(parts) if parts else np.zeros(0)


def run_corpus(corpus: Corpus, config: DetectorConfig, *, progress: bool = True) -> tuple[dict[str, np.ndarray], float]:
    """Scores of every file and the detector's throughput in rows/s."""
    scores: dict[str, np.ndarray] = {}
    busy = 0.0
    rows = 0
    for k, rel in enumerate(corpus.files, 1):
        values = read_values(corpus.root / "data" / rel)
        t0 = time.process_time()
        scores[rel] = run_file(values, config)
        dt = time.process_time() - t0
        busy += dt
        rows += len(values)
        if progress:
            print(f"[{k:2d}/{len(corpus.files)}] {rel}: {len(values)} rows, "
                  f"{len(values) / dt:,.0f} rows/s, {int((scores[rel] >= config.threshold).sum())} alerts",
                  file=sys.stderr, flush=True)
    return scores, rows / busy if busy else float("nan")


def write_detections(out: Path, scores: dict[str, np.ndarray]) -> None:
    """DIR/<category>/<file>.csv with one anomaly_score per data row."""
    for rel, s in scores.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("anomaly_score\n" + "".join(f"{v!r}\n" for v in s.tolist()))


def evaluate(corpus: Corpus, scores: dict[str, np.ndarray], threshold: float) -> dict[str, Result]:
    """Every profile at the deployed threshold and at its optimised one."""
    out: dict[str, Result] = {}
    for profile in PROFILES:
        out[f"{profile}@deployed"] = corpus.score(scores, threshold, profile)
        out[f"{profile}@optimised"] = corpus.optimise(scores, profile)
    return out


def _overrides(pairs: list[str]) -> dict[str, object]:
    """``name=json`` pairs for DetectorConfig fields (lists become tuples)."""
    fields = {f.name for f in dataclasses.fields(DetectorConfig)}
    out: dict[str, object] = {}
    for pair in pairs:
        name, _, text = pair.partition("=")
        if name not in fields:
            raise SystemExit(f"unknown DetectorConfig field {name!r}")
        value = json.loads(text)
        out[name] = tuple(value) if isinstance(value, list) else value
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="folder with data/ and labels/")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "nab", help="detections folder")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="override a config field")
    a = ap.parse_args(argv)
    config = dataclasses.replace(DetectorConfig(), **_overrides(a.set))
    corpus = Corpus(a.corpus)
    scores, rows_per_s = run_corpus(corpus, config)
    write_detections(a.out, scores)
    res = evaluate(corpus, scores, config.threshold)
    print(f"NAB corpus {a.corpus}: {len(corpus.files)} files, {corpus.n_windows} windows, "
          f"deployed threshold {config.threshold}")
    print(f"{'profile':<30}{'threshold':>10}{'score':>9}{'TP win':>8}{'FN win':>8}{'FP rows':>9}")
    for name, r in res.items():
        print(f"{name:<30}{r.threshold:>10.4f}{r.normalised:>9.1f}{r.detected_windows:>8}"
              f"{r.missed_windows:>8}{r.false_positive_rows:>9}")
    print(f"rows/s per core (detector CPU time only, batch {BATCH_ROWS}): {rows_per_s:,.0f}")
    print(json.dumps({
        "standard_at_threshold": round(res["standard@deployed"].normalised, 3),
        "standard_optimised": round(res["standard@optimised"].normalised, 3),
        "optimised_threshold": res["standard@optimised"].threshold,
        "low_fp_at_threshold": round(res["reward_low_FP_rate@deployed"].normalised, 3),
        "low_fp_optimised": round(res["reward_low_FP_rate@optimised"].normalised, 3),
        "low_fn_at_threshold": round(res["reward_low_FN_rate@deployed"].normalised, 3),
        "low_fn_optimised": round(res["reward_low_FN_rate@optimised"].normalised, 3),
        "threshold": config.threshold,
        "rows_per_s": round(rows_per_s),
        "detections": str(a.out),
    }))


if __name__ == "__main__":
    main()
