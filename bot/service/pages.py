"""One page of `versions IMAGE` and of `history IMAGE [SHA]`, as data: the entries
newest first, how many more there are, and the cursor of the next page.

Each page costs a fixed number of queries, whatever the depth and the size of the history:
the versions and the audit entries are read a page at a time (keyset paging in the store),
and the approvals of a page's versions in one query.
"""

from __future__ import annotations

from typing import Any

from bot.domain.names import Env
from bot.domain.paging import DEFAULT_PAGE
from bot.service import render
from bot.store.uow import Tx


def versions_page(
    tx: Tx, image: str, *, limit: int = DEFAULT_PAGE, before: str | None = None
) -> dict[str, Any]:
    """{"items": [render.version_data, ...] newest first, "more": how many older versions
    are not shown, "next": the cursor that shows them (None when "more" is 0)}."""
    page = tx.versions.page(image, limit=limit, before=before)
    state = tx.pointers.state(image)
    verdicts = tx.approvals.standing_on(image, [version.sha for version in page.items])
    items = [
        render.version_data(
            version,
            [env.value for env in Env if state.sha(env) == version.sha],
            verdicts[version.sha],
        )
        for version in page.items
    ]
    return {"items": items, "more": page.more, "next": page.next}


def history_page(
    tx: Tx,
    image: str,
    sha: str | None = None,
    *,
    limit: int = DEFAULT_PAGE,
    before: str | None = None,
) -> dict[str, Any]:
    """{"items": [render.audit_data, ...] newest first, "more", "next"} of IMAGE's audit
    entries (concerning SHA, a full SHA the caller resolved, when given)."""
    page = tx.audit.page(image=image, sha=sha, limit=limit, before=before)
    items = [render.audit_data(entry) for entry in page.items]
    return {"items": items, "more": page.more, "next": page.next}
