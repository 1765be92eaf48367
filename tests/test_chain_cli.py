"""The offline `ledger` command, wired into an argparse tree the way node/cli.py does it."""

import argparse
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from chain import cli

FIXTURE = Path(__file__).parent / "fixtures" / "ledger" / "v1"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
ALICE, BOB = EXPECTED["alice"], EXPECTED["bob"]


def node_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quantian-node")
    parser.add_argument("--data-dir", type=Path)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run")
    cli.register(sub)
    return parser


def ledger(capsys, *argv: str) -> tuple[int, str]:
    args = node_parser().parse_args(list(argv))
    assert args.command == "ledger"
    code = cli.run(args)
    return code, capsys.readouterr().out


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    shutil.copytree(FIXTURE, tmp_path / "data")
    return tmp_path / "data"


def test_read_commands(capsys, data_dir):
    d = str(data_dir)
    code, out = ledger(capsys, "ledger", "heads", "--data-dir", d, "--json")
    assert code == 0 and json.loads(out)["heads"] == EXPECTED["heads"]
    code, out = ledger(capsys, "--data-dir", d, "ledger", "heads")  # top-level --data-dir is kept
    assert code == 0 and ALICE in out and f"FORK {BOB} at height 2" in out
    code, out = ledger(capsys, "ledger", "show", ALICE, "0", "--data-dir", d, "--json")
    shown = json.loads(out)
    assert code == 0 and len(shown["records"]) == 12 and shown["hash"]
    code, out = ledger(capsys, "ledger", "tail", "-n", "3", "--author", BOB, "--data-dir", d, "--json")
    assert code == 0 and [r["author"] for r in json.loads(out)["records"]] == [BOB] * 3
    code, out = ledger(capsys, "ledger", "find", "--type", "checkpoint", "--data-dir", d, "--json")
    assert code == 0 and json.loads(out)["records"][0]["payload"]["heads"][0][0] == BOB
    code, out = ledger(capsys, "ledger", "find", "--actor", "nobody", "--data-dir", d)
    assert code == 0 and "(no records)" in out
    code, _ = ledger(capsys, "ledger", "show", ALICE, "99", "--data-dir", d)
    assert code == 1


def test_verify_names_the_first_failure(capsys, data_dir):
    code, out = ledger(capsys, "ledger", "verify", "--data-dir", str(data_dir), "--json")
    result = json.loads(out)
    assert all(c["ok"] for c in result["chains"])
    assert code == 1 and result["first_failure"]["code"] == "fork_detected"  # the fixture holds Bob's fork
    conn = sqlite3.connect(data_dir / "ledger.sqlite")
    conn.execute("DELETE FROM forks")
    conn.commit()
    code, out = ledger(capsys, "ledger", "verify", "--data-dir", str(data_dir))
    assert code == 0 and "ledger verified" in out
    conn.execute("UPDATE blocks SET hash = zeroblob(32) WHERE height = 2 AND chain = "
                 "(SELECT id FROM chains WHERE author = ?)", (ALICE,))
    conn.commit()
    conn.close()
    code, out = ledger(capsys, "ledger", "verify", "--data-dir", str(data_dir))
    assert code == 1 and f"FAILED author={ALICE} height=2 [bad_hash]" in out


def test_prove_and_verify_proof(capsys, data_dir, tmp_path):
    code, out = ledger(capsys, "ledger", "prove", BOB, "1", "1", "--data-dir", str(data_dir), "--json",
                       "--out", str(tmp_path / "p.bin"))
    assert code == 0
    (tmp_path / "p.json").write_text(out)
    for name in ("p.json", "p.bin"):
        code, out = ledger(capsys, "ledger", "verify-proof", str(tmp_path / name), "--json")
        result = json.loads(out)
        assert code == 0 and (result["kind"], result["author"], result["height"], result["index"]) == \
            ("inclusion", BOB, 1, 1)
    code, out = ledger(capsys, "ledger", "verify-proof", str(FIXTURE / "fork-proof.bin"))
    assert code == 0 and "valid fork proof" in out
    raw = bytearray((tmp_path / "p.bin").read_bytes())
    raw[-5] ^= 1
    (tmp_path / "bad.bin").write_bytes(bytes(raw))
    code, out = ledger(capsys, "ledger", "verify-proof", str(tmp_path / "bad.bin"))
    assert code == 1 and out.startswith("INVALID")


def test_unreadable_or_missing_store(capsys, tmp_path):
    code, _ = ledger(capsys, "ledger", "heads", "--data-dir", str(tmp_path / "nope"))
    assert code == 2
    (tmp_path / "ledger.sqlite").write_bytes(b"not a database at all" * 100)
    code, _ = ledger(capsys, "ledger", "verify", "--data-dir", str(tmp_path))
    assert code == 2
