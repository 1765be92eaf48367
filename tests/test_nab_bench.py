"""bench/nab.py end to end on three small NAB files (the full run is a benchmark)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
NAB = ROOT.parent / "shared" / "nab"
pytestmark = pytest.mark.skipif(not NAB.is_dir(), reason=f"NAB corpus not found at {NAB}")
sys.path.insert(0, str(ROOT / "bench"))
import nab  # noqa: E402
import nab_score  # noqa: E402

from test_nab_score import reference  # noqa: E402

FILES = [
    "realTraffic/speed_7578.csv",
    "realAWSCloudwatch/iio_us-east-1_i-a2eb1cd9_NetworkIn.csv",
    "realKnownCause/rogue_agent_key_hold.csv",
]


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nab_small")
    labels = json.loads((NAB / "labels" / "combined_windows.json").read_text())
    (root / "labels").mkdir()
    (root / "labels" / "combined_windows.json").write_text(json.dumps({f: labels[f] for f in FILES}))
    for f in FILES:
        (root / "data" / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(NAB / "data" / f, root / "data" / f)
    return root


def test_cli_prints_table_and_json(small_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    nab.main(["--corpus", str(small_corpus), "--out", str(tmp_path / "det")])
    out, err = capsys.readouterr()
    summary = json.loads(out.strip().splitlines()[-1])
    for key in ("standard_at_threshold", "standard_optimised", "low_fp_at_threshold",
                "low_fn_at_threshold", "threshold", "rows_per_s"):
        assert key in summary
    assert summary["standard_optimised"] >= summary["standard_at_threshold"]
    # ablation: the combined row is the deployed detector; each part is its own run
    assert summary["ablation_combined_at_threshold"] == summary["standard_at_threshold"]
    assert summary["ablation_combined_optimised"] == summary["standard_optimised"]
    for part in ("statistics", "forest"):
        assert summary[f"ablation_{part}_optimised"] >= summary[f"ablation_{part}_at_threshold"]
    assert "ablation" in out and "statistics" in out and "forest" in out
    assert all(f in err for f in FILES)  # progress per file on stderr
    # detections on disk score the same with the reference scorer
    ref = reference().CorpusScorer(str(small_corpus / "data"),
                                   str(small_corpus / "labels" / "combined_windows.json"))
    det = reference().load_detections(str(tmp_path / "det"), ref.files)
    got = ref.score_at(det, summary["threshold"], "standard")["normalised"]
    assert got == pytest.approx(summary["standard_at_threshold"], abs=1e-3)


def test_ablation_parts_score_differently(small_corpus: Path) -> None:
    corpus = nab_score.Corpus(small_corpus)
    abl = nab.ablation(corpus, nab.DetectorConfig())
    assert set(abl) == {"statistics", "forest", "combined"}
    # the parts are really different detectors, not the same run three times
    assert abl["statistics"][1].raw != abl["forest"][1].raw


def test_batch_size_does_not_change_scores(small_corpus: Path) -> None:
    values = nab_score.read_values(small_corpus / "data" / FILES[2])
    cfg = nab.DetectorConfig()
    np.testing.assert_array_equal(nab.run_file(values, cfg, batch=1000), nab.run_file(values, cfg, batch=37))


def test_deployed_detector_meets_its_targets_on_the_whole_corpus() -> None:
    """Issue 6's acceptance at the one deployed threshold, standard profile, whole corpus (~15 s):
    at least 50, and the combination better than either part alone. Figures in the README."""
    abl = nab.ablation(nab_score.Corpus(NAB), nab.DetectorConfig())
    at = {name: at_threshold.normalised for name, (at_threshold, _) in abl.items()}
    assert at["combined"] >= 50.0, at
    assert at["combined"] > at["statistics"] and at["combined"] > at["forest"], at
