"""The fuzz tests share the Slack tests' server: one `nbenv serve` per module, over real
HTTP with really signed requests, and a fresh image per test."""

from tests.slack.conftest import (  # noqa: F401 - fixtures, found by pytest by name
    _images,
    config_path,
    database,
    image,
    rt,
    server,
    slack,
    workdir,
)
