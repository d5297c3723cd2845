"""Build a self-contained zipapp of the host runtime: ``python3 host.pyz facts``.

The archive holds ``ravel/__init__.py`` (an empty stub, so nothing else of ravel is imported),
every ``ravel/host/*.py`` module and a ``__main__.py`` that calls ``ravel.host.commands.main``.
Standard library only, like the runtime itself; the output is byte-for-byte deterministic.
"""

from __future__ import annotations

import os
import zipfile
from typing import Union

_MAIN = (
    "import sys\n"
    "from ravel.host.commands import main\n"
    "sys.exit(main())\n"
)
_STUB = '"""ravel (host runtime only; shipped as a zipapp)."""\n'
_EPOCH = (1980, 1, 1, 0, 0, 0)
INTERPRETER = "/usr/bin/env python3"


def _add(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_EPOCH)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    zf.writestr(info, data)


def build_zipapp(dest_path: Union[str, "os.PathLike[str]"],
                 interpreter: str = INTERPRETER) -> str:
    """Write the runtime as a zipapp to ``dest_path`` (made executable); returns the path."""
    dest = os.fspath(dest_path)
    here = os.path.dirname(os.path.abspath(__file__))
    modules = sorted(f for f in os.listdir(here) if f.endswith(".py"))
    tmp = f"{dest}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as raw:
            raw.write(b"#!" + interpreter.encode() + b"\n")
            with zipfile.ZipFile(raw, "w") as zf:
                _add(zf, "__main__.py", _MAIN.encode())
                _add(zf, "ravel/__init__.py", _STUB.encode())
                for name in modules:
                    with open(os.path.join(here, name), "rb") as f:
                        _add(zf, f"ravel/host/{name}", f.read())
        os.chmod(tmp, 0o755)
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return dest
