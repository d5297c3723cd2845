"""Write the key table of docs/blueprint.md from the JSON Schema (ravel/model/keytable.py).

Run from the repository root after changing ravel/model/spec.py: .venv/bin/python tools/blueprint_keys.py
(tests/unit/test_blueprint_format.py fails until the docs match.)
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ravel.model.keytable import BEGIN, END, key_table  # noqa: E402

DOC = ROOT / "docs" / "blueprint.md"


def main() -> int:
    text = DOC.read_text()
    if BEGIN not in text or END not in text:
        print(f"{DOC}: the markers {BEGIN!r} ... {END!r} are missing", file=sys.stderr)
        return 1
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = head + key_table() + tail
    if new != text:
        DOC.write_text(new)
        print(f"{DOC}: key table updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
