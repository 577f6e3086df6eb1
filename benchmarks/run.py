"""`make bench`: every benchmark in one run, printed as one table.

Run: ``python benchmarks/run.py [--quick] [--only NAME ...]``

Each row sits beside its baseline, measured in the same run (a bare Bolt app, a bare
functions-framework function, one notebook alone...), with the ratio and the target.
The modules also run on their own (`python benchmarks/bench_ack.py`, ...), printing
their rows the same way. Sized to finish in under 10 minutes on 2 cores; `--quick`
runs each at a small size (a check that it works, not the figures). Exit status 1 when
a target is missed or a benchmark fails.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_ack
import bench_history
import bench_relay
import bench_runner
from rows import Row, print_rows

MODULES = {
    "ack": bench_ack,
    "relay": bench_relay,
    "runner": bench_runner,
    "history": bench_history,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a check it runs")
    parser.add_argument("--only", nargs="+", choices=sorted(MODULES), help="these only")
    args = parser.parse_args()
    started = time.perf_counter()
    found: list[Row] = []
    for name in args.only or MODULES:
        began = time.perf_counter()
        print(f"running {name}...", file=sys.stderr, flush=True)
        try:
            found += MODULES[name].rows(quick=args.quick)
        except (Exception, SystemExit) as error:  # one failing benchmark still shows the rest
            traceback.print_exc()
            found.append(Row(f"{name} benchmark", f"failed: {error}"[:200], met=False))
        print(f"{name}: {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
    status = print_rows(found)
    print(f"ran in {time.perf_counter() - started:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
