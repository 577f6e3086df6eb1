"""Recurring freeze windows: when they are on, what they refuse, what an owner may force.

The rules are pure (tested with chosen instants across midnight, the week's end and
daylight-saving changes); the refusals go through the service on SQLite and PostgreSQL
with a window placed around the real time now.
"""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.bootstrap import build_runtime
from bot.config import load_config
from bot.domain.errors import ConfigError, Refused
from bot.domain.freeze_windows import FreezeWindow, next_window, window_on
from tests.conftest import IMAGE, OWNER, TEST_CONFIG, TESTER, USER, sha_of

BERLIN = "Europe/Berlin"
WEEKEND = FreezeWindow.of("fri 16:00", "mon 09:00", BERLIN, "weekend")
A, B = sha_of("a"), sha_of("b")


def at(text: str, zone: str = BERLIN) -> datetime:
    """A wall-clock time in ZONE, as an aware instant."""
    from zoneinfo import ZoneInfo

    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone))


@pytest.mark.parametrize(
    ("moment", "on"),
    [
        ("2026-11-27 15:59", False),  # Friday, a minute before
        ("2026-11-27 16:00", True),  # it starts on the minute
        ("2026-11-28 03:00", True),  # Saturday night: across midnight
        ("2026-11-29 23:59", True),  # Sunday: across the week's end
        ("2026-11-30 08:59", True),
        ("2026-11-30 09:00", False),  # it ends on the minute
        ("2026-12-02 12:00", False),  # Wednesday
    ],
)
def test_a_window_is_on_from_its_start_up_to_its_end_across_midnight_and_the_week(
    moment: str, on: bool
) -> None:
    assert (window_on((WEEKEND,), at(moment)) is not None) is on


def test_the_end_of_a_window_is_the_wall_clock_time_across_a_daylight_saving_change() -> None:
    # Berlin leaves summer time on Sunday 2026-10-25: the window still ends at 09:00 local.
    current = window_on((WEEKEND,), at("2026-10-24 12:00"))
    assert current is not None
    assert current.ends_at == at("2026-10-26 09:00").astimezone(UTC)
    assert current.ends_at.hour == 8  # 09:00 CET is 08:00 UTC (it was 07:00 in summer)
    # And into summer time (2026-03-29): the next window starts Friday 16:00 local.
    coming = next_window((WEEKEND,), at("2026-03-25 10:00"))
    assert coming is not None
    assert coming.starts_at == at("2026-03-27 16:00").astimezone(UTC)
    assert coming.ends_at == at("2026-03-30 09:00").astimezone(UTC)
    assert coming.ends_at.hour == 7


def test_the_next_window_is_the_soonest_to_begin() -> None:
    nightly = FreezeWindow.of("wed 22:00", "thu 06:00", "America/New_York", "backups")
    coming = next_window((WEEKEND, nightly), at("2026-12-02 12:00"))  # Wednesday noon, Berlin
    assert coming is not None and coming.window == nightly
    assert "backups" in coming.describe_next()
    assert next_window((), at("2026-12-02 12:00")) is None


def _config_with(tmp_path: Path, windows: str, where: str = "image") -> Path:
    text = textwrap.dedent(TEST_CONFIG)
    block = textwrap.indent(textwrap.dedent(windows).strip(), " " * 6)
    if where == "image":
        text = text.replace(
            "    channel: C01NLP\n    approvals: 1\n",
            f"    channel: C01NLP\n    approvals: 1\n    freeze_windows:\n{block}\n",
            1,
        )
    else:
        text = text.replace(
            f"    users: [{USER}]\n",
            f"    users: [{USER}]\n    freeze_windows:\n{textwrap.indent(block, '  ')}\n",
            1,
        )
    path = tmp_path / "nbenv.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("window", "says"),
    [
        ('{from: "fry 16:00", to: "mon 09:00", timezone: UTC, reason: w}', "'fry' is not a day"),
        ('{from: "fri 25:00", to: "mon 09:00", timezone: UTC, reason: w}', "like 'fri 16:00'"),
        ('{from: "fri 16:00", to: "mon 09:00", timezone: Mars/Base, reason: w}', "time zone"),
        ('{from: "fri 16:00", to: "fri 16:00", timezone: UTC, reason: w}', "is empty"),
        ('{from: "fri 16:00", to: "mon 09:00", timezone: UTC, reason: ""}', "needs a reason"),
        ('{from: "fri 16:00", timezone: UTC, reason: w}', "to"),
    ],
)
def test_an_invalid_window_stops_the_start_naming_the_file_and_key(
    tmp_path: Path, window: str, says: str
) -> None:
    path = _config_with(tmp_path, f"- {window}")
    with pytest.raises(ConfigError) as error:
        load_config(str(path))
    message = str(error.value)
    assert "nbenv.yaml:" in message and "freeze_windows[0]" in message
    assert says in message
    assert "\n" not in message


def _window_around_now(hours_before: int = 1, hours_after: int = 2) -> str:
    now = datetime.now(UTC)
    start, end = now - timedelta(hours=hours_before), now + timedelta(hours=hours_after)
    fmt = "%a %H:%M"
    return (
        f'- {{from: "{start.strftime(fmt).lower()}", to: "{end.strftime(fmt).lower()}", '
        'timezone: UTC, reason: "release party"}'
    )


@pytest.fixture
def frozen_now(tmp_path: Path, db_url: str):  # type: ignore[no-untyped-def]
    runtime = build_runtime(str(_config_with(tmp_path, _window_around_now())), db_url)
    runtime.nbenv.publish(OWNER, IMAGE, A)
    return runtime


def test_a_promotion_in_a_window_is_refused_naming_it_and_when_it_ends(frozen_now) -> None:
    with pytest.raises(Refused) as refusal:
        frozen_now.nbenv.handle(OWNER, f"promote {IMAGE}")
    assert "release party" in refusal.value.message
    assert "until " in refusal.value.message and "--force --reason R" in refusal.value.message
    with frozen_now.store.read() as tx:
        entry = tx.audit.entries()[-1]
    assert (entry.action, entry.outcome, entry.sha) == ("promote", "refused", A)
    status = frozen_now.nbenv.handle(USER, f"status {IMAGE}")
    assert status.data["environments"]["production"] is None
    assert status.data["freeze_window"]["on"] is True
    assert "In a freeze window: release party" in status.text


def test_an_owner_may_force_a_promotion_in_a_window_with_a_reason_on_record(frozen_now) -> None:
    frozen_now.nbenv.handle(TESTER, f"approve {IMAGE}")
    reply = frozen_now.nbenv.handle(OWNER, f"promote {IMAGE} --force --reason hotfix for INC-7")
    assert reply.data["applied"]
    with frozen_now.store.read() as tx:
        entry = tx.audit.entries()[-1]
    assert (entry.action, entry.outcome) == ("promote", "ok")
    assert "release party" in entry.details["overridden_window"]
    assert entry.details["reason"] == "hotfix for INC-7"


def test_a_plain_rollback_stays_allowed_in_a_window_and_a_rollback_to_a_sha_does_not(
    tmp_path: Path, db_url: str
) -> None:
    free = build_runtime(str(_config_with(tmp_path, "[]")), db_url)
    for sha in (A, B):
        free.nbenv.publish(OWNER, IMAGE, sha)
        free.nbenv.handle(TESTER, f"approve {IMAGE}")
        free.nbenv.handle(OWNER, f"promote {IMAGE}")
    (tmp_path / "later").mkdir()
    frozen = build_runtime(str(_config_with(tmp_path / "later", _window_around_now())), db_url)
    with pytest.raises(Refused, match="rollback to a chosen SHA is blocked"):
        frozen.nbenv.handle(OWNER, f"rollback {IMAGE} --to {A}")
    reply = frozen.nbenv.handle(OWNER, f"rollback {IMAGE} --reason broken")
    assert reply.data["applied"]
    production = frozen.nbenv.handle(USER, f"status {IMAGE}").data["environments"]["production"]
    assert production["sha"] == A


def test_status_shows_the_next_window_of_the_team(tmp_path: Path, sqlite_url: str) -> None:
    later = _window_around_now(hours_before=-5, hours_after=8)  # starts in 5 hours
    runtime = build_runtime(str(_config_with(tmp_path, later, where="team")), sqlite_url)
    reply = runtime.nbenv.handle(USER, f"status {IMAGE}")
    assert reply.data["freeze_window"]["on"] is False
    assert "Next freeze window: release party: from " in reply.text
    runtime.nbenv.publish(OWNER, IMAGE, A)
    runtime.nbenv.handle(TESTER, f"approve {IMAGE}")
    assert runtime.nbenv.handle(OWNER, f"promote {IMAGE}").data["applied"]
