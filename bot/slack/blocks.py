"""Block Kit for messages the service describes as text + buttons, and the one place that
cuts every outgoing message to Slack's limits.

Slack refuses a message over its limits (`msg_too_long`, `invalid_blocks`) instead of
shortening it, and a refused message is lost for good. What we send quotes things we do
not control (commit subjects, build links, tracebacks, reasons), so every message the
outbox or an answer sends passes through `fit_message`, which cuts what is too long with a
visible marker. The limits are Slack's (api.slack.com/reference/block-kit), the same ones
slack_sdk's Block Kit models validate.
"""

from __future__ import annotations

from typing import Any

from slack_sdk.models.blocks import ButtonElement, HeaderBlock, SectionBlock

from bot.domain.text import TRUNCATED, cut
from bot.slack import views

MAX_MESSAGE_TEXT = 40_000  # chat.postMessage `text`: beyond it, msg_too_long
MAX_BLOCKS = 50  # blocks of a message (a Home tab: 100)
MAX_HOME_BLOCKS = 100
MAX_TEXT_OBJECT = SectionBlock.text_max_length  # 3000: a section's text, a context element
MAX_FIELD = 2000  # one of a section's fields
MAX_FIELDS = 10
MAX_HEADER = HeaderBlock.text_max_length  # 150
MAX_CONTEXT_ELEMENTS = 10
MAX_ACTION_ELEMENTS = 25
MAX_BUTTON_TEXT = ButtonElement.text_max_length  # 75
MAX_BUTTON_VALUE = ButtonElement.value_max_length  # 2000


def message_blocks(text: str, buttons: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """TEXT and the BUTTONS as the outbox keeps them ({action_id, text, value, style}), as
    Block Kit within Slack's limits."""
    # A button whose value Slack would refuse is left out (the text still goes).
    specs = [spec for spec in buttons or [] if len(str(spec.get("value"))) <= MAX_BUTTON_VALUE]
    elements = [views.button(**spec) for spec in specs]
    return fit_blocks(views.message_blocks(text, elements))


def fit_message(payload: dict[str, Any]) -> dict[str, Any]:
    """PAYLOAD (a chat.postMessage / chat.update / response_url body) cut to Slack's limits."""
    fitted = dict(payload)
    if isinstance(fitted.get("text"), str):
        fitted["text"] = cut(fitted["text"], MAX_MESSAGE_TEXT)
    if isinstance(fitted.get("blocks"), list):
        fitted["blocks"] = fit_blocks(fitted["blocks"])
    return fitted


def fit_blocks(blocks: list[dict[str, Any]], max_blocks: int = MAX_BLOCKS) -> list[dict[str, Any]]:
    """BLOCKS cut to Slack's limits: long texts end with a marker, extra blocks are
    replaced by one that says so (buttons, at the end, are kept)."""
    fitted = [_fit_block(block) for block in blocks]
    fitted = [b for b in fitted if b.get("type") != "actions" or b.get("elements")]
    if len(fitted) <= max_blocks:
        return fitted
    tail = [fitted[-1]] if fitted[-1].get("type") == "actions" else []
    room = max_blocks - len(tail) - 1
    note = {"type": "context", "elements": [{"type": "mrkdwn", "text": "_" + TRUNCATED + "_"}]}
    return [*fitted[:room], note, *tail]


def _fit_text(text: Any, limit: int) -> Any:
    if isinstance(text, dict) and isinstance(text.get("text"), str):
        return {**text, "text": cut(text["text"], limit)}
    return text


def _fit_block(block: dict[str, Any]) -> dict[str, Any]:
    kind = block.get("type")
    fitted = dict(block)
    if kind == "section":
        if "text" in fitted:
            fitted["text"] = _fit_text(fitted["text"], MAX_TEXT_OBJECT)
        if isinstance(fitted.get("fields"), list):
            fitted["fields"] = [_fit_text(f, MAX_FIELD) for f in fitted["fields"][:MAX_FIELDS]]
    elif kind == "header":
        fitted["text"] = _fit_text(fitted.get("text"), MAX_HEADER)
    elif kind == "context" and isinstance(fitted.get("elements"), list):
        elements = fitted["elements"][:MAX_CONTEXT_ELEMENTS]
        fitted["elements"] = [_fit_text(e, MAX_TEXT_OBJECT) for e in elements]
    elif kind == "actions" and isinstance(fitted.get("elements"), list):
        fitted["elements"] = [
            _fit_button(e) for e in fitted["elements"][:MAX_ACTION_ELEMENTS] if _fits_value(e)
        ]
    return fitted


def _fit_button(element: dict[str, Any]) -> dict[str, Any]:
    if element.get("type") != "button":
        return element
    return {**element, "text": _fit_text(element.get("text"), MAX_BUTTON_TEXT)}


def _fits_value(element: Any) -> bool:
    """A button whose value is too long is left out: a cut value would name nothing."""
    return not isinstance(element, dict) or len(str(element.get("value") or "")) <= (
        MAX_BUTTON_VALUE
    )
