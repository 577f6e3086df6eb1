"""`nbenv serve` acks from the config's teams and images read without pydantic: they must
say what the validated config says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import load_config
from bot.config_file import read_access
from bot.domain.command_table import parse
from bot.domain.errors import BadInput, ConfigError
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


@pytest.mark.parametrize(
    "text",
    [
        CONFIG.replace(
            "    testers: [U02TESTER]\n", "    testers: [U02TESTER]\n    owners: [U09]\n"
        ),
        CONFIG + "images: {}\n",
        "teams: [\n",
        CONFIG + "\x07\n",
        None,  # no file at all
    ],
    ids=["a key given twice", "a section given twice", "not YAML", "a control character", "none"],
)
def test_the_access_view_reads_the_file_as_the_config_does(tmp_path: Path, text: str) -> None:
    """One reader for the config file: a file that the config refuses, the access view
    refuses too, with the same one line (not a traceback, not the last of two keys)."""
    file = tmp_path / "nbenv.yaml"
    if text is not None:
        file.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as refused_by_config:
        load_config(file)
    with pytest.raises(ConfigError) as refused_by_access:
        read_access(file)
    assert refused_by_access.value.message == refused_by_config.value.message
    assert f"{file}" in refused_by_access.value.message


def test_the_access_view_loads_no_pydantic() -> None:
    """What `nbenv serve` acks with loads without pydantic (a tenth of a second of cold
    start), though it reads the config file with the reader that load_config uses."""
    probe = "import sys, bot.config_file, bot.service.access; print('pydantic' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
