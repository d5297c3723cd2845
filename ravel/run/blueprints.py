"""Reading blueprint files from disk: the effectful edge in front of the pure loader."""

from __future__ import annotations

import os

from ..errors import BlueprintError, Problem
from ..model.blueprint import Blueprint
from ..model.resolve import load_blueprint
from ..model.yamlpos import MAX_TEXT

MAX_BLUEPRINT_BYTES = MAX_TEXT


def read_blueprint(path: str) -> Blueprint:
    try:
        if os.path.isdir(path):
            raise BlueprintError([Problem(path, 0, 0, "", "is a directory, not a blueprint file")])
        with open(path, "rb") as fh:
            data = fh.read(MAX_BLUEPRINT_BYTES + 1)
    except FileNotFoundError:
        raise BlueprintError([Problem(path, 0, 0, "", "no such file")]) from None
    except PermissionError:
        raise BlueprintError([Problem(path, 0, 0, "", "permission denied")]) from None
    except OSError as exc:
        raise BlueprintError([Problem(path, 0, 0, "", f"cannot read: {exc.strerror}")]) from None
    if len(data) > MAX_BLUEPRINT_BYTES:
        raise BlueprintError([Problem(path, 0, 0, "", "larger than 16 MiB; this is not a blueprint")])
    return load_blueprint(data, file=path, base_dir=os.path.dirname(os.path.abspath(path)))
