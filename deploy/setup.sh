#!/usr/bin/env bash
# Set up nbenv on Google Cloud: see docs/deploy.md. `deploy/setup.sh --dry-run …` prints
# every command without running any; deploy/setup.py has the steps.
set -euo pipefail
exec python3 "$(dirname "$0")/setup.py" "$@"
