"""Run the production detector over a NAB-format corpus and score it.

    python bench/nab.py [--corpus DIR] [--out DIR] [--set name=value ...]

Uses exactly the code the anomaly role runs (node.analytics.detector with its
default config and DEFAULT_THRESHOLD), one fresh detector per file, scoring in
batches.  Writes DIR/<category>/<file>.csv with the column anomaly_score (the
alert stream: rows suppressed as part of an ongoing event are 0), scores it
with bench/nab_score.py, prints a table, and ends with one JSON line.  Progress
per file goes to stderr.  ``--set`` overrides a DetectorConfig field for
experiments; the published figures use none.

Ablation: the same corpus is also run with only the statistical part
(``use_forest=False``) and only the IsolationForest part
(``use_statistics=False``), same threshold, and scored the same way, so the
table shows whether the combination beats either part alone.
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


#: Ablation rows: name -> (use_statistics, use_forest).
ABLATIONS = {"statistics": (True, False), "forest": (False, True), "combined": (True, True)}


def ablation(corpus: Corpus, config: DetectorConfig,
             deployed: dict[str, np.ndarray] | None = None) -> dict[str, tuple[Result, Result]]:
    """Standard profile (at the threshold, optimised) of each part alone and combined.

    ``deployed`` are the scores of ``config`` already computed, reused for the
    row that matches it.
    """
    out: dict[str, tuple[Result, Result]] = {}
    for name, (stats, forest) in ABLATIONS.items():
        cfg = dataclasses.replace(config, use_statistics=stats, use_forest=forest)
        if deployed is not None and cfg == config:
            scores = deployed
        else:
            scores, _ = run_corpus(corpus, cfg, progress=False)
        out[name] = (corpus.score(scores, cfg.threshold, "standard"), corpus.optimise(scores, "standard"))
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
    abl = ablation(corpus, config, scores)
    print(f"ablation, standard profile{'':<4}{'at thr':>10}{'optimised':>11}{'opt thr':>9}")
    for name, (at, opt) in abl.items():
        print(f"  {name:<32}{at.normalised:>10.1f}{opt.normalised:>11.1f}{opt.threshold:>9.4f}")
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
        **{f"ablation_{name}_at_threshold": round(at.normalised, 3) for name, (at, _) in abl.items()},
        **{f"ablation_{name}_optimised": round(opt.normalised, 3) for name, (_, opt) in abl.items()},
        "detections": str(a.out),
    }))


if __name__ == "__main__":
    main()
