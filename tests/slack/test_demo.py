"""`nbenv demo` runs the whole lifecycle to the end, and its transcript shows each stage."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_the_demo_runs_to_the_end_and_shows_every_stage(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NBENV_", "SLACK_"))}
    keep = tmp_path / "demo"

    result = subprocess.run(
        [sys.executable, "-m", "bot", "demo", "--keep", str(keep)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    stages = [
        "1. The first version",
        "2. A change breaks a test notebook",
        "3. The fix",
        "4. Approval and promotion",
        "5. Production is broken",
        "6. Roll back",
        "7. History and audit",
    ]
    positions = [out.index(stage) for stage in stages]
    assert positions == sorted(positions)
    sections = dict(zip(stages, (out[p:] for p in positions), strict=True))

    first = sections[stages[0]]
    assert "is now in staging for nlp.keras-batch" in first
    assert "U02TESTER> Approve" in first
    assert "promoted" in first[: first.index(stages[1])]

    broken = sections[stages[1]][: out.index(stages[2]) - positions[1]]
    assert "❌" in broken and "FAILURE" in broken
    where = "tests/02_text.ipynb`, cell 3 (In [2]), line 2"  # as Jupyter shows it
    assert f"{where}: `AssertionError: expected 4 tokens" in broken
    assert "staging is unchanged" in broken

    fix = sections[stages[2]][: out.index(stages[3]) - positions[2]]
    assert "SUCCESS" in fix and "2/2 notebooks passed" in fix

    promotion = sections[stages[3]][: out.index(stages[4]) - positions[3]]
    assert "Declared dependencies" in promotion and "`nltk` ==3.8.1 → ==3.9.1" in promotion
    assert "promoted" in promotion and "fallback: `—` →" in promotion

    fallback = sections[stages[4]][: out.index(stages[5]) - positions[4]]
    assert "instance `ana-fallback` of nlp.keras-batch (fallback," in fallback
    assert "is running (stops after 3h idle): http://127.0.0.1:" in fallback

    rollback = sections[stages[5]][: out.index(stages[6]) - positions[5]]
    assert "rolled back production of nlp.keras-batch" in rollback
    assert "was rolled back and revoked" in rollback
    assert "(production next): @U06USER" in rollback  # who runs the version coming back

    audit = sections[stages[6]]
    assert "History of nlp.keras-batch" in audit and "TESTS FAILED" in audit
    assert "audit log intact" in audit
    assert "stopped instance `ana-fallback`" in audit
    assert out.rstrip().endswith("The demo ran to the end.")
    assert "Traceback" not in result.stderr
