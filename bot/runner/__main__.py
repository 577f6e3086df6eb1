"""``python -m bot.runner DIR [--report FILE] [--jobs N] [--timeout S]``."""

import sys

from bot.runner.notebook_tests import main

if __name__ == "__main__":
    sys.exit(main())
