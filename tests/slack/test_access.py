"""`nbenv serve` acks from the config's teams and images read without pydantic: they must
say what the validated config says."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import load_config
from bot.config_access import read_access
from bot.domain.command_table import parse
from bot.domain.errors import BadInput
from bot.domain.names import Pipeline
from bot.service.access import check

CONFIG = """
teams:
  nlp:
    owners: [U01OWNER]
    testers: [U02TESTER]
  vision:
    owners: [U03OWNER]
    users: ["*"]
images:
  nlp.keras-batch: {team: nlp, channel: C01NLP}
  vision.yolo: {team: vision, channel: C02VIS}
"""


@pytest.mark.parametrize("everyone", [True, False])
def test_the_access_view_agrees_with_the_config(tmp_path: Path, everyone: bool) -> None:
    file = tmp_path / "nbenv.yaml"
    text = CONFIG if everyone else CONFIG.replace('    users: ["*"]\n', "")
    file.write_text(text, encoding="utf-8")
    config, access = load_config(file), read_access(file)

    assert access.images == set(config.images)
    for user in ("U01OWNER", "U02TESTER", "U03OWNER", "U09NOBODY", "build:123", Pipeline("123")):
        assert access.knows_user(user) == config.knows_user(user)
        for text in ("status nlp.keras-batch", "status nope.image", "help"):
            outcomes = []
            for known in (config, access):
                try:
                    check(known, user, parse(text))
                    outcomes.append(None)
                except BadInput as error:
                    outcomes.append(error.message)
            assert outcomes[0] == outcomes[1]
