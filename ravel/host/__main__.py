"""``python3 -m ravel.host <command>``: see ``commands``."""

import sys

from .commands import main

if __name__ == "__main__":
    sys.exit(main())
