"""A long history reads a page at a time, newest first, with how many more there are; and
`audit verify` reads the log as a stream. On SQLite and PostgreSQL."""

from __future__ import annotations

import tracemalloc
import uuid
from contextlib import closing
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event

from benchmarks.seed import seed
from bot.domain.audit import verify_chain
from bot.domain.errors import BadInput
from bot.domain.model import Version
from bot.domain.paging import audit_cursor, version_cursor
from bot.service.pages import history_page, versions_page
from bot.store.database import make_engine, upgrade
from bot.store.uow import Store, iso
from tests.conftest import IMAGE, OWNER, TESTER, sha_of

OTHER = "nlp.two-approvals"
START = datetime(2026, 1, 1, tzinfo=UTC)


def store_for(db_url: str) -> Store:
    engine = make_engine(db_url)
    upgrade(engine)
    return Store(engine)


def version(sha: str, created: datetime, image: str = IMAGE) -> Version:
    return Version(image, sha, tests_passed=True, created_at=iso(created), recorded_by=OWNER)


def record_versions(store: Store, image: str, count: int, *, tie_every: int = 4) -> list[str]:
    """COUNT versions of IMAGE; every TIE_EVERY-th shares its creation time with the one
    before (a tie the order must still break). Their SHAs, newest first."""
    created = []
    with store.write(audited=False) as tx:
        moment = START
        for number in range(count):
            if number % tie_every:
                moment += timedelta(minutes=1)
            sha = sha_of(f"{image}/{number}")
            tx.versions.record(version(sha, moment, image))
            created.append((iso(moment), sha))
    return [sha for _, sha in sorted(created, reverse=True)]


def walk(read_page, limit: int) -> tuple[list[str], list[int]]:  # type: ignore[no-untyped-def]
    """Every page READ_PAGE(limit, before) gives, in turn: the keys shown and the counts of more."""
    shown: list[str] = []
    mores: list[int] = []
    cursor = None
    while True:
        keys, more, cursor = read_page(limit, cursor)
        shown += keys
        mores.append(more)
        assert (cursor is None) == (more == 0)
        if cursor is None:
            return shown, mores


def test_versions_come_newest_first_a_page_at_a_time_with_how_many_more(db_url):
    store = store_for(db_url)
    newest_first = record_versions(store, IMAGE, 45)
    record_versions(store, OTHER, 7)  # another image's versions never show

    def read(limit, before):  # type: ignore[no-untyped-def]
        with store.read() as tx:
            page = tx.versions.page(IMAGE, limit=limit, before=before)
        return [v.sha for v in page.items], page.more, page.next

    shown, mores = walk(read, 20)
    assert shown == newest_first
    assert mores == [25, 5, 0]
    assert walk(read, 45) == (newest_first, [0])
    assert walk(read, 100) == (newest_first, [0])


def test_a_version_recorded_while_someone_reads_does_not_shift_the_next_page(db_url):
    store = store_for(db_url)
    newest_first = record_versions(store, IMAGE, 30)
    with store.read() as tx:
        first = tx.versions.page(IMAGE, limit=10)
    with store.write(audited=False) as tx:
        tx.versions.record(version(sha_of("late"), START + timedelta(days=9)))
    with store.read() as tx:
        second = tx.versions.page(IMAGE, limit=10, before=first.next)
        assert [v.sha for v in tx.versions.page(IMAGE, limit=1).items] == [sha_of("late")]
    assert [v.sha for v in second.items] == newest_first[10:20]
    assert second.more == 10


def test_a_page_of_versions_shows_each_ones_environments_and_approvals(db_url):
    store = store_for(db_url)
    newest_first = record_versions(store, IMAGE, 25)
    with store.write(audited=False) as tx:
        tx.approvals.add(IMAGE, newest_first[0], TESTER, approved=True, reason=None)
        tx.approvals.add(IMAGE, newest_first[21], TESTER, approved=False, reason="slow")
        tx.pointers.ensure(IMAGE)
    with store.read() as tx:
        first = versions_page(tx, IMAGE)
        second = versions_page(tx, IMAGE, before=first["next"])
    assert [row["sha"] for row in first["items"]] == newest_first[:20]
    assert first["items"][0]["approvals"] == 1
    assert (first["more"], second["more"], second["next"]) == (5, 0, None)
    assert second["items"][1]["rejections"] == [TESTER]


def test_get_many_reads_the_versions_asked_for_of_that_image_only(db_url):
    store = store_for(db_url)
    newest_first = record_versions(store, IMAGE, 5)
    record_versions(store, OTHER, 5)
    wanted = [newest_first[0], newest_first[3], sha_of("unknown")]
    with store.read() as tx:
        found = tx.versions.get_many(IMAGE, wanted)
        assert found == {sha: tx.versions.get(IMAGE, sha) for sha in wanted[:2]}
        assert tx.versions.get_many(IMAGE, []) == {}
    assert all(version.image == IMAGE for version in found.values())


def test_a_page_costs_the_same_few_queries_however_long_the_history(db_url):
    store = store_for(db_url)

    def queries_for_a_page() -> int:
        statements: list[str] = []

        def count(*args: object) -> None:
            statements.append(str(args[2]))

        event.listen(store.engine, "before_cursor_execute", count)
        try:
            with store.read() as tx:
                page = versions_page(tx, IMAGE, limit=20)
                history_page(tx, IMAGE, limit=20, before=None)
                versions_page(tx, IMAGE, limit=20, before=page["next"])
        finally:
            event.remove(store.engine, "before_cursor_execute", count)
        return len(statements)

    record_versions(store, IMAGE, 45)  # two full pages: each counts what is left
    few = queries_for_a_page()
    record_versions(store, OTHER, 1)
    with store.write(audited=False) as tx:
        for number in range(45, 150):
            moment = START + timedelta(days=1, minutes=number)
            tx.versions.record(version(sha_of(f"{IMAGE}/{number}"), moment))
    assert queries_for_a_page() == few <= 12


def record_audit(store: Store, image: str, shas: list[str]) -> None:
    """An entry per SHA of IMAGE (oldest first), each in its own write as in real use."""
    for sha in shas:
        with store.write() as tx:
            tx.audit.append(actor=TESTER, action="approve", image=image, sha=sha)


def test_history_comes_newest_first_a_page_at_a_time_with_how_many_more(db_url):
    store = store_for(db_url)
    shas = [sha_of(f"entry {n}") for n in range(27)]
    record_audit(store, IMAGE, shas)
    record_audit(store, OTHER, shas[:3])

    def read(limit, before):  # type: ignore[no-untyped-def]
        with store.read() as tx:
            page = tx.audit.page(image=IMAGE, limit=limit, before=before)
        return [e.sha for e in page.items], page.more, page.next

    assert walk(read, 10) == (shas[::-1], [17, 7, 0])
    assert walk(read, 27) == (shas[::-1], [0])


def test_history_of_one_sha_pages_over_the_entries_that_concern_it(db_url):
    store = store_for(db_url)
    target, other = sha_of("target"), sha_of("other")
    with store.write() as tx:
        for number in range(23):
            tx.audit.append(
                actor=TESTER, action="approve", image=IMAGE, sha=target, details={"n": number}
            )
        # A rollback filed under its target, which revoked TARGET: it concerns TARGET.
        tx.audit.append(
            actor=OWNER, action="rollback", image=IMAGE, sha=other, details={"revoked": target}
        )
        # A reason that quotes TARGET does not make an entry about it.
        reason = {"reason": f"waiting on {target}"}
        tx.audit.append(actor=OWNER, action="freeze", image=IMAGE, sha=None, details=reason)
        tx.audit.append(actor=OWNER, action="approve", image=OTHER, sha=target)
    pages = []
    cursor = None
    with store.read() as tx:
        while True:
            page = history_page(tx, IMAGE, target, limit=10, before=cursor)
            pages.append(page)
            cursor = page["next"]
            if cursor is None:
                break
    assert [page["more"] for page in pages] == [14, 4, 0]
    actions = [item["action"] for page in pages for item in page["items"]]
    assert actions == ["rollback"] + ["approve"] * 23
    assert [item["details"]["n"] for item in pages[2]["items"]] == [3, 2, 1, 0]


def test_a_cursor_that_nbenv_did_not_give_is_refused_in_one_line(db_url):
    store = store_for(db_url)
    record_versions(store, IMAGE, 3)
    record_audit(store, IMAGE, [sha_of("x")])
    bad = [
        "",
        "not a cursor!",
        "x" * 5000,
        "djF8bm90LWEtdGltZXxub3RhLXNoYQ",  # v1|not-a-time|nota-sha
        audit_cursor(1),  # a history cursor given to versions
        "\x00\n",
    ]
    with store.read() as tx:
        for cursor in bad:
            with pytest.raises(BadInput) as refused:
                tx.versions.page(IMAGE, limit=5, before=cursor)
            assert "\n" not in refused.value.message
        for cursor in [*bad[:4], version_cursor(iso(START), sha_of("x")), "YTF8MA", "YTF8LTE"]:
            with pytest.raises(BadInput):
                tx.audit.page(image=IMAGE, limit=5, before=cursor)
        for limit in (0, -1, 101, 10**9):
            with pytest.raises(BadInput):
                tx.versions.page(IMAGE, limit=limit)
            with pytest.raises(BadInput):
                tx.audit.page(image=IMAGE, limit=limit)


def verify_peak(db_url: str, entries: int) -> int:
    """The peak memory `audit verify` takes over a log of ENTRIES seeded in bulk."""
    engine = make_engine(db_url)
    upgrade(engine)
    seed(engine, images=5, versions=4, audit=entries)
    store = Store(engine)
    with store.read() as tx:  # warm: connection, compiled statements
        list(zip(range(10), tx.audit.chain(), strict=False))
    tracemalloc.start()
    try:
        with store.read() as tx, closing(tx.audit.chain()) as chain:
            result = verify_chain(chain, tx.audit.head())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.ok and result.entries == entries, result.describe()
    engine.dispose()
    return peak


def test_audit_verify_takes_the_same_memory_for_a_log_four_times_longer(
    db_url: str, request: pytest.FixtureRequest, tmp_path
):
    small = verify_peak(db_url, 1500)
    if db_url.startswith("sqlite"):
        larger_url = f"sqlite:///{tmp_path / 'larger.db'}"
    else:
        cluster = request.getfixturevalue("pg_cluster")
        larger_url = cluster.create_database(f"t_{uuid.uuid4().hex[:12]}")
    large = verify_peak(larger_url, 6000)
    assert large < small * 1.5, f"peak {small} bytes for 1,500 entries, {large} for 6,000"
