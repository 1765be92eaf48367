"""The project's NAB scorer agrees with shared/nab/score.py to 1e-9."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
NAB = ROOT.parent / "shared" / "nab"
pytestmark = pytest.mark.skipif(not NAB.is_dir(), reason=f"NAB corpus not found at {NAB}")
sys.path.insert(0, str(ROOT / "bench"))
import nab_score  # noqa: E402

TOL = 1e-9


def reference() -> ModuleType:
    spec = importlib.util.spec_from_file_location("nab_reference_score", NAB / "score.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look themselves up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def both() -> tuple[nab_score.Corpus, object]:
    ref = reference()
    return nab_score.Corpus(NAB), ref.CorpusScorer(str(NAB / "data"), str(NAB / "labels" / "combined_windows.json"))


def _random_scores(corpus: nab_score.Corpus, seed: int, decimals: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f: np.round(rng.random(corpus.labels[f].n_rows) ** 12, decimals) for f in corpus.files}


@pytest.mark.parametrize("seed, decimals", [(0, 3), (1, 6)])
@pytest.mark.parametrize("profile", list(nab_score.PROFILES))
def test_matches_reference(both: tuple, seed: int, decimals: int, profile: str) -> None:
    mine, ref = both
    scores = _random_scores(mine, seed, decimals)
    for thr in (0.3, 0.9):
        a, b = mine.score(scores, thr, profile), ref.score_at(scores, thr, profile)
        assert a.raw == pytest.approx(b["raw"], abs=TOL)
        assert a.normalised == pytest.approx(b["normalised"], abs=TOL)
        assert (a.detected_windows, a.false_positive_rows) == (b["tp_windows"], b["fp_rows"])
    a, b = mine.optimise(scores, profile), ref.optimise(scores, profile)
    assert a.threshold == b["threshold"]
    assert a.normalised == pytest.approx(b["normalised"], abs=TOL)


def test_window_geometry() -> None:
    ts = [f"2020-01-01T00:{m:02d}:00" for m in range(40)]
    lab = nab_score.label_file(ts, [["2020-01-01 00:10:00", "2020-01-01 00:14:00"]])
    assert lab.probation == 6 and lab.windows[0].width == 5
    w = lab.window_of
    assert (w[10 - 6:15 - 6] == 0).all() and (w[:4] == -1).all()
    # earliest row of the window is worth (almost) a full true positive
    assert lab.reward[10 - 6] == pytest.approx(1.0)
    # right after the window a false positive is nearly free, far after it costs ~1
    assert lab.penalty[15 - 6] == pytest.approx(float(nab_score.scaled_sigmoid(np.array(0.25))))
    assert lab.penalty[-1] == pytest.approx(-1.0, abs=1e-6)
    with pytest.raises(ValueError):
        nab_score.label_file(ts, [["2020-01-01 00:10:30", "2020-01-01 00:14:00"]])
