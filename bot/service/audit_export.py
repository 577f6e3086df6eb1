"""`nbenv audit export`: the audit log as CSV or JSON lines, hashes included for re-checking."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import asdict
from typing import TextIO

from bot.domain.audit import AuditEntry

FIELDS = [
    "seq",
    "at",
    "actor",
    "action",
    "image",
    "sha",
    "outcome",
    "details",
    "prev_hash",
    "hash",
    "key_id",
]


def export(entries: Iterable[AuditEntry], fmt: str, out: TextIO) -> int:
    count = 0
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=FIELDS)
        writer.writeheader()
        for entry in entries:
            row = asdict(entry)
            row["details"] = json.dumps(entry.details, sort_keys=True, ensure_ascii=False)
            writer.writerow(row)
            count += 1
    elif fmt == "jsonl":
        for entry in entries:
            out.write(json.dumps(asdict(entry), sort_keys=True, ensure_ascii=False) + "\n")
            count += 1
    else:
        raise ValueError(f"unknown export format {fmt!r}")
    return count
