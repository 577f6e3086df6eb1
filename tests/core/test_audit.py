"""The audit log is hash-chained: `nbenv audit verify` names the first bad entry."""

from __future__ import annotations

import csv
import io
import itertools
import json

import pytest
from sqlalchemy import delete, select, text, update

from bot.cli import main
from bot.domain.audit import GENESIS, AuditKey, entry_hash
from bot.domain.errors import NbenvError
from bot.store import tables as t
from tests.conftest import IMAGE, OWNER, TESTER, TESTER2, USER, sha_of


@pytest.fixture
def audited(runtime):
    """A runtime with five audit entries: publish, approve, promote, publish, approve."""
    for label in ("a", "b"):
        runtime.nbenv.publish(OWNER, IMAGE, sha_of(label))
        runtime.nbenv.handle(TESTER, f"approve {IMAGE}")
        if label == "a":
            runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    assert runtime.nbenv.verify_audit().ok
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


# -- a damaged log is named, never a traceback -----------------------------------------------


def _raw_details(runtime, seq: int, raw: str) -> None:
    """Store RAW as entry SEQ's details, as someone with database access could."""
    with runtime.store.engine.begin() as connection:
        if connection.dialect.name == "postgresql":  # its json type refuses invalid JSON
            connection.execute(text("ALTER TABLE audit_log ALTER COLUMN details TYPE text"))
        connection.execute(
            text("UPDATE audit_log SET details = :raw WHERE seq = :seq"), {"raw": raw, "seq": seq}
        )


@pytest.mark.parametrize("raw", ["{not json", "[" * 100_000 + "]" * 100_000])
def test_details_that_are_not_json_are_named(
    audited, config_file, db_url, monkeypatch, capsys, raw
):
    _raw_details(audited, 3, raw)
    code, out = _verify_cli(audited, config_file, db_url, monkeypatch, capsys)
    assert code == 1
    assert out.strip() == (
        "audit log broken at entry 3: its details are not valid JSON: the row was edited"
    )
    # The other readers of the log answer too, showing what they cannot read.
    history = audited.nbenv.handle(USER, f"history {IMAGE}")
    assert [h["seq"] for h in history.data["items"]] == [5, 4, 3, 2, 1]  # newest first
    assert "not valid JSON" in json.dumps(history.data["items"][2]["details"])


def test_deleted_head_row_is_named_and_nothing_more_is_recorded(
    audited, config_file, db_url, monkeypatch, capsys
):
    with audited.store.engine.begin() as connection:
        connection.execute(delete(t.audit_head))
    code, out = _verify_cli(audited, config_file, db_url, monkeypatch, capsys)
    assert code == 1
    assert "audit log broken at entry 6: the audit head" in out and "missing" in out
    with pytest.raises(NbenvError, match="head row is missing"):
        audited.nbenv.handle(OWNER, f"freeze {IMAGE} release week")
    assert audited.nbenv.handle(USER, f"status {IMAGE}").data["frozen"] is False


# -- sealed (HMAC) chains ----------------------------------------------------------------------

KEY = "k" * 16 + "0123456789abcdef0123"
OTHER_KEY = "o" * 40


def _runtime_with_key(config_file, db_url, monkeypatch, key: str | None):
    from bot.bootstrap import build_runtime

    if key is None:
        monkeypatch.delenv("NBENV_AUDIT_KEY", raising=False)
    else:
        monkeypatch.setenv("NBENV_AUDIT_KEY", key)
    return build_runtime(str(config_file), db_url)


def _five_entries(runtime) -> None:
    for label in ("a", "b"):
        runtime.nbenv.publish(OWNER, IMAGE, sha_of(label))
        runtime.nbenv.handle(TESTER, f"approve {IMAGE}")
        if label == "a":
            runtime.nbenv.handle(OWNER, f"promote {IMAGE}")


def _rewrite(runtime, seq: int, *, actor: str, sealed_after: bool) -> None:
    """An edit of entry SEQ followed by recomputing every later hash and the head, as
    someone with write access to the database (but not the key) can: each entry from SEQ
    on becomes a plain SHA-256 entry, or keeps its key ID when SEALED_AFTER."""
    with runtime.store.engine.begin() as connection:
        rows = [
            dict(row._mapping)
            for row in connection.execute(select(t.audit_log).order_by(t.audit_log.c.seq))
        ]
        prev = rows[seq - 2]["hash"] if seq > 1 else GENESIS
        for row in rows[seq - 1 :]:
            if row["seq"] == seq:
                row["actor"] = actor
            row["prev_hash"] = prev
            row["key_id"] = row["key_id"] if sealed_after else None
            fields = {k: row[k] for k in ("seq", "at", "actor", "action", "image", "sha")}
            row["hash"] = entry_hash(
                prev_hash=prev, outcome=row["outcome"], details=row["details"], **fields
            )
            prev = row["hash"]
            connection.execute(
                update(t.audit_log).where(t.audit_log.c.seq == row["seq"]).values(**row)
            )
        connection.execute(update(t.audit_head).values(seq=rows[-1]["seq"], hash=prev))


def _verify(config_file, db_url, monkeypatch, capsys, key: str | None) -> tuple[int, str]:
    if key is None:
        monkeypatch.delenv("NBENV_AUDIT_KEY", raising=False)
    else:
        monkeypatch.setenv("NBENV_AUDIT_KEY", key)
    monkeypatch.setenv("NBENV_DATABASE_URL", db_url)
    code = main(["--config", str(config_file), "audit", "verify"])
    return code, capsys.readouterr().out


def test_plain_chain_does_not_survive_a_careful_rewrite(config_file, db_url, monkeypatch, capsys):
    """What plain mode cannot do, and sealing does (the next tests)."""
    runtime = _runtime_with_key(config_file, db_url, monkeypatch, None)
    _five_entries(runtime)
    _rewrite(runtime, 3, actor=TESTER, sealed_after=False)
    code, out = _verify(config_file, db_url, monkeypatch, capsys, None)
    assert code == 0 and "intact: 5 entries" in out and "plain SHA-256" in out


def test_a_sealed_chain_verifies_with_its_key(config_file, db_url, monkeypatch, capsys):
    runtime = _runtime_with_key(config_file, db_url, monkeypatch, KEY)
    _five_entries(runtime)
    key_id = AuditKey.from_text(KEY).key_id
    code, out = _verify(config_file, db_url, monkeypatch, capsys, KEY)
    assert code == 0
    assert (
        f"intact: 5 entries, hash chain verified; entries 1-5 sealed with audit key {key_id}" in out
    )
    assert KEY not in out
    monkeypatch.setenv("NBENV_DATABASE_URL", db_url)
    assert main(["--config", str(config_file), "audit", "export"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {line["key_id"] for line in lines} == {key_id}


@pytest.mark.parametrize(
    ("seq", "sealed_after", "expected"),
    [
        (3, True, "audit log broken at entry 3: its contents do not match its seal"),
        (3, False, "audit log broken at entry 3: it is not sealed, though entry 2 before it is"),
        (1, False, "audit log not sealed at its end (entry 5): NBENV_AUDIT_KEY"),
    ],
)
def test_a_sealed_chain_catches_an_edit_with_every_later_hash_recomputed(
    config_file, db_url, monkeypatch, capsys, seq, sealed_after, expected
):
    runtime = _runtime_with_key(config_file, db_url, monkeypatch, KEY)
    _five_entries(runtime)
    _rewrite(runtime, seq, actor=TESTER2, sealed_after=sealed_after)
    code, out = _verify(config_file, db_url, monkeypatch, capsys, KEY)
    assert code == 1
    assert out.startswith(expected)


def test_entries_before_the_key_was_set_are_protected_by_the_first_sealed_one(
    config_file, db_url, monkeypatch, capsys
):
    plain = _runtime_with_key(config_file, db_url, monkeypatch, None)
    _five_entries(plain)
    sealed = _runtime_with_key(config_file, db_url, monkeypatch, KEY)
    sealed.nbenv.handle(OWNER, f"freeze {IMAGE} release week")
    sealed.nbenv.handle(OWNER, f"unfreeze {IMAGE}")
    code, out = _verify(config_file, db_url, monkeypatch, capsys, KEY)
    assert code == 0 and "intact: 7 entries" in out and "entries 6-7 sealed" in out
    # An edit in the plain part, every later hash recomputed, still breaks the first seal.
    _rewrite(sealed, 2, actor=TESTER2, sealed_after=True)
    code, out = _verify(config_file, db_url, monkeypatch, capsys, KEY)
    assert code == 1
    assert out.startswith("audit log broken at entry 6: its contents do not match its seal")


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        (None, "NBENV_AUDIT_KEY is not set"),
        (OTHER_KEY, f"NBENV_AUDIT_KEY is key {AuditKey.from_text(OTHER_KEY).key_id}"),
    ],
)
def test_a_missing_or_wrong_key_is_said_plainly(
    config_file, db_url, monkeypatch, capsys, given, problem
):
    runtime = _runtime_with_key(config_file, db_url, monkeypatch, KEY)
    _five_entries(runtime)
    code, out = _verify(config_file, db_url, monkeypatch, capsys, given)
    assert code == 1
    key_id = AuditKey.from_text(KEY).key_id
    assert out.startswith(
        f"audit log not verified from entry 1: it is sealed with audit key {key_id} "
        f"(5 entries from entry 1 on), but {problem}: verify with the key"
    )
    assert "broken" not in out


def test_an_entry_claiming_another_key_is_not_passed_as_verified(
    config_file, db_url, monkeypatch, capsys
):
    runtime = _runtime_with_key(config_file, db_url, monkeypatch, KEY)
    _five_entries(runtime)
    with runtime.store.engine.begin() as connection:
        connection.execute(
            update(t.audit_log)
            .where(t.audit_log.c.seq == 3)
            .values(actor=TESTER2, key_id="deadbeefdeadbeef")
        )
    code, out = _verify(config_file, db_url, monkeypatch, capsys, KEY)
    assert code == 1
    assert out.startswith(
        "audit log not verified from entry 3: it is sealed with audit key deadbeefdeadbeef "
        "(1 entries from entry 3 on)"
    )


def test_a_short_key_is_a_one_line_error(config_file, db_url, monkeypatch, capsys):
    monkeypatch.setenv("NBENV_AUDIT_KEY", "secret")
    monkeypatch.setenv("NBENV_DATABASE_URL", db_url)
    assert main(["--config", str(config_file), "audit", "verify"]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "NBENV_AUDIT_KEY is too short" in err and "secret" not in err
