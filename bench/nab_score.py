"""The project's own implementation of the NAB scoring method.

Written from the method's description (Lavin & Ahmad 2015; see
shared/nab/README.md) so that the benchmark does not depend on a file outside
the repository; ``tests/test_nab_score.py`` checks it against the reference
scorer in shared/nab/score.py to 1e-9.

Per file: the first ``min(floor(0.15 n), 750)`` rows are probation and not
scored.  A row is detected when its score >= threshold.  A labelled window
earns ``tp * sigma(pos)/sigma(-1)`` for its earliest (= best) detected row,
``pos = -(right - i + 1)/width``, else costs ``-fn``.  A detected row outside
every window costs ``fp * sigma(d)`` with ``d = (i - right_prev)/(width_prev - 1)``
past the previous window, or ``-fp`` when no window precedes it.  The corpus
score is normalised to ``100 (S - S_null)/(S_perfect - S_null)``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PROFILES: dict[str, tuple[float, float, float]] = {
    # name: (tp weight, fp weight, fn weight)
    "standard": (1.0, 0.11, 1.0),
    "reward_low_FP_rate": (1.0, 0.22, 1.0),
    "reward_low_FN_rate": (1.0, 0.11, 2.0),
}
PROBATION_FRACTION = 0.15
PROBATION_CAP = 750
#: Threshold meaning "detect nothing"; always a candidate when optimising.
NOTHING = 1.1


def scaled_sigmoid(x: np.ndarray) -> np.ndarray:
    """NAB's ``2/(1+e^{5x}) - 1``, pinned to -1 beyond x = 3."""
    x = np.asarray(x, dtype=float)
    with np.errstate(over="ignore"):
        y = 2.0 / (1.0 + np.exp(5.0 * x)) - 1.0
    return np.where(x > 3.0, -1.0, y)


@dataclass(frozen=True)
class Window:
    """One labelled window as row indices (inclusive) within its file."""

    left: int
    right: int

    @property
    def width(self) -> int:
        return self.right - self.left + 1


@dataclass(frozen=True)
class LabelledFile:
    """Score-independent geometry of one file: what each row would earn."""

    n_rows: int
    probation: int
    windows: tuple[Window, ...]
    #: for every scored row: index of its window within the file, or -1
    window_of: np.ndarray
    #: reward if this in-window row is the best detection (tp units)
    reward: np.ndarray
    #: cost factor (<= 0) if this out-of-window row is detected (fp units)
    penalty: np.ndarray


def label_file(timestamps: list[str] | np.ndarray, windows: list[list[str]]) -> LabelledFile:
    """Map windows given as exact timestamps onto rows and precompute weights."""
    ts = np.asarray(timestamps, dtype="datetime64[ns]")
    n = len(ts)
    pos = {t: i for i, t in enumerate(ts.tolist())}
    wins = []
    for a, b in windows:
        ta = np.datetime64(a.replace(" ", "T"), "ns").tolist()
        tb = np.datetime64(b.replace(" ", "T"), "ns").tolist()
        if ta not in pos or tb not in pos:
            raise ValueError(f"window {a}..{b} does not match a data timestamp")
        wins.append(Window(pos[ta], pos[tb]))
    window_of = np.full(n, -1, dtype=np.int64)
    reward = np.zeros(n)
    penalty = np.full(n, -1.0)
    rows = np.arange(n, dtype=float)
    for k, w in enumerate(wins):
        window_of[w.left:w.right + 1] = k
        inside = rows[w.left:w.right + 1]
        reward[w.left:w.right + 1] = scaled_sigmoid(-(w.right - inside + 1) / w.width) / scaled_sigmoid(-1.0)
        end = wins[k + 1].left if k + 1 < len(wins) else n
        after = rows[w.right + 1:end]
        penalty[w.right + 1:end] = scaled_sigmoid((after - w.right) / (w.width - 1))
    probation = int(min(math.floor(PROBATION_FRACTION * n), PROBATION_CAP))
    keep = slice(probation, n)
    return LabelledFile(n, probation, tuple(wins), window_of[keep], reward[keep], penalty[keep])


@dataclass(frozen=True)
class Result:
    """Corpus score at one threshold for one profile."""

    profile: str
    threshold: float
    raw: float
    normalised: float
    detected_windows: int
    missed_windows: int
    false_positive_rows: int


class Corpus:
    """Labels of a NAB-format corpus (``data/`` + ``labels/combined_windows.json``)."""

    def __init__(self, root: Path, files: list[str] | None = None) -> None:
        self.root = Path(root)
        labels = json.loads((self.root / "labels" / "combined_windows.json").read_text())
        self.files = sorted(files if files is not None else labels)
        self.labels: dict[str, LabelledFile] = {}
        for rel in self.files:
            self.labels[rel] = label_file(read_timestamps(self.root / "data" / rel), labels[rel])
        self.n_windows = sum(len(f.windows) for f in self.labels.values())

    def _flat(self, scores: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Concatenate scored rows of all files; window ids made corpus-unique."""
        s, wid, rew, pen = [], [], [], []
        offset = 0
        for rel in self.files:
            lab = self.labels[rel]
            sc = np.asarray(scores[rel], dtype=float)
            if len(sc) != lab.n_rows:
                raise ValueError(f"{rel}: {len(sc)} scores for {lab.n_rows} rows")
            s.append(sc[lab.probation:])
            wid.append(np.where(lab.window_of >= 0, lab.window_of + offset, -1))
            rew.append(lab.reward)
            pen.append(lab.penalty)
            offset += len(lab.windows)
        return np.concatenate(s), np.concatenate(wid), np.concatenate(rew), np.concatenate(pen)

    def _scorable_windows(self, wid: np.ndarray) -> int:
        """Windows with at least one row after probation (only these can be missed)."""
        return len(np.unique(wid[wid >= 0]))

    def normalise(self, raw: float, profile: str) -> float:
        tp, _, fn = PROFILES[profile]
        null, perfect = -fn * self.n_windows, tp * self.n_windows
        if perfect == null:  # a corpus without windows has no scale
            return float("nan")
        return 100.0 * (raw - null) / (perfect - null)

    def score(self, scores: Mapping[str, np.ndarray], threshold: float, profile: str = "standard") -> Result:
        """Corpus score with one fixed threshold (a deployed detector)."""
        tp, fp, fn = PROFILES[profile]
        s, wid, rew, pen = self._flat(scores)
        hit = s >= threshold
        false_rows = hit & (wid < 0)
        best = np.full(wid.max(initial=-1) + 1, -np.inf)
        np.maximum.at(best, wid[hit & (wid >= 0)], rew[hit & (wid >= 0)])
        found = np.isfinite(best)
        missed = self._scorable_windows(wid) - int(found.sum())
        raw = tp * float(best[found].sum()) + fp * float(pen[false_rows].sum()) - fn * missed
        return Result(profile, float(threshold), raw, self.normalise(raw, profile),
                      int(found.sum()), missed, int(false_rows.sum()))

    def optimise(self, scores: Mapping[str, np.ndarray], profile: str = "standard") -> Result:
        """Best corpus score over all thresholds (ties go to the highest)."""
        tp, fp, fn = PROFILES[profile]
        s, wid, rew, pen = self._flat(scores)
        levels = np.unique(s)[::-1]  # candidate thresholds, highest first
        # each row enters when the threshold falls to its score: level index
        enter = np.searchsorted(-levels, -s)
        gain = np.zeros(len(levels) + 1)
        out = wid < 0
        np.add.at(gain, enter[out], fp * pen[out])
        # a window's contribution changes each time a better row enters
        inw = np.nonzero(~out)[0]
        order = inw[np.lexsort((-rew[inw], enter[inw], wid[inw]))]
        w_o, r_o, e_o = wid[order], tp * rew[order], enter[order]
        prev_best = np.full(len(order), -fn)
        running = -fn
        for j in range(len(order)):
            if j and w_o[j] != w_o[j - 1]:
                running = -fn
            prev_best[j] = running
            running = max(running, r_o[j])
        np.add.at(gain, e_o, np.maximum(r_o, prev_best) - prev_best)
        base = -fn * self._scorable_windows(wid)
        totals = np.r_[base, base + np.cumsum(gain[:-1])]
        thresholds = np.r_[NOTHING, levels]
        best = int(np.argmax(totals))
        return self.score(scores, float(thresholds[best]), profile)


def read_timestamps(path: Path) -> list[str]:
    """The ``timestamp`` column of a NAB data file, as ISO strings."""
    return [row[0].replace(" ", "T") for row in _csv_rows(path)]


def read_values(path: Path) -> np.ndarray:
    """The ``value`` column of a NAB data file."""
    return np.array([float(row[1]) for row in _csv_rows(path)])


def _csv_rows(path: Path) -> list[list[str]]:
    lines = Path(path).read_text().splitlines()
    header = lines[0].split(",")
    if header[:2] != ["timestamp", "value"]:
        raise ValueError(f"{path}: expected columns timestamp,value, got {header}")
    return [line.split(",") for line in lines[1:] if line]
