"""The audit log is hash-chained: `nbenv audit verify` names the first bad entry."""

from __future__ import annotations

import csv
import io
import itertools
import json

import pytest
from sqlalchemy import delete, select, update

from bot.cli import main
from bot.store import tables as t
from tests.conftest import IMAGE, OWNER, TESTER, sha_of


@pytest.fixture
def audited(runtime):
    """A runtime with five audit entries: publish, approve, promote, publish, approve."""
    for label in ("a", "b"):
        runtime.app.publish(OWNER, IMAGE, sha_of(label))
        runtime.app.handle(TESTER, f"approve {IMAGE}")
        if label == "a":
            runtime.app.handle(OWNER, f"promote {IMAGE}")
    assert runtime.app.verify_audit().ok
    return runtime


def _verify_cli(runtime, config_file, db_url, monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.setenv("NBENV_DATABASE_URL", db_url)
    code = main(["--config", str(config_file), "audit", "verify"])
    return code, capsys.readouterr().out


def test_intact_log_verifies(audited, config_file, db_url, monkeypatch, capsys):
    code, out = _verify_cli(audited, config_file, db_url, monkeypatch, capsys)
    assert code == 0
    assert "intact: 5 entries" in out


def test_edited_row_is_named(audited, config_file, db_url, monkeypatch, capsys):
    with audited.store.engine.begin() as connection:
        connection.execute(
            update(t.audit_log).where(t.audit_log.c.seq == 3).values(actor="U02TESTER")
        )
    code, out = _verify_cli(audited, config_file, db_url, monkeypatch, capsys)
    assert code == 1
    assert "broken at entry 3" in out and "edited" in out


def test_edited_details_are_caught(audited, config_file, db_url, monkeypatch, capsys):
    with audited.store.engine.begin() as connection:
        connection.execute(
            update(t.audit_log).where(t.audit_log.c.seq == 2).values(details={"reason": "x"})
        )
    code, out = _verify_cli(audited, config_file, db_url, monkeypatch, capsys)
    assert code == 1
    assert "entry 2" in out


def test_deleted_row_is_named(audited, config_file, db_url, monkeypatch, capsys):
    with audited.store.engine.begin() as connection:
        connection.execute(delete(t.audit_log).where(t.audit_log.c.seq == 2))
    code, out = _verify_cli(audited, config_file, db_url, monkeypatch, capsys)
    assert code == 1
    assert "broken at entry 2" in out and "deleted" in out


def test_deleted_tail_is_caught(audited, config_file, db_url, monkeypatch, capsys):
    with audited.store.engine.begin() as connection:
        connection.execute(delete(t.audit_log).where(t.audit_log.c.seq == 5))
    code, out = _verify_cli(audited, config_file, db_url, monkeypatch, capsys)
    assert code == 1
    assert "entry 5" in out


def test_reordered_rows_are_named(audited, config_file, db_url, monkeypatch, capsys):
    with audited.store.engine.begin() as connection:
        rows = {
            row.seq: dict(row._mapping)
            for row in connection.execute(select(t.audit_log).where(t.audit_log.c.seq.in_([2, 3])))
        }
        # Swap the contents of entries 2 and 3, keeping their positions.
        for seq, other in ((2, 3), (3, 2)):
            values = {k: v for k, v in rows[other].items() if k != "seq"}
            connection.execute(update(t.audit_log).where(t.audit_log.c.seq == seq).values(**values))
    code, out = _verify_cli(audited, config_file, db_url, monkeypatch, capsys)
    assert code == 1
    assert "broken at entry 2" in out


def test_export_csv_and_jsonl(audited, config_file, db_url, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("NBENV_DATABASE_URL", db_url)
    assert main(["--config", str(config_file), "audit", "export", "--format", "jsonl"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["action"] for e in lines] == ["publish", "approve", "promote", "publish", "approve"]
    assert lines[2]["sha"] == sha_of("a") and lines[2]["actor"] == OWNER
    assert all(e["prev_hash"] == p["hash"] for p, e in itertools.pairwise(lines))
    out = tmp_path / "audit.csv"
    assert (
        main(
            [
                "--config",
                str(config_file),
                "audit",
                "export",
                "--format",
                "csv",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["action"] for r in rows] == [e["action"] for e in lines]
    assert json.loads(rows[2]["details"])["approvals"] == [TESTER]
