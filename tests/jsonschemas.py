"""The JSON Schemas of `--json` output (docs/schemas/), for tests: `check(doc, "publish")`
validates a document against its schema, resolving `$ref`s between the files locally."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

SCHEMAS = Path(__file__).resolve().parents[1] / "docs" / "schemas"


@functools.cache
def schemas() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(SCHEMAS.glob("*.json"))}


@functools.cache
def _registry() -> Registry:
    return Registry().with_resources((s["$id"], Resource.from_contents(s)) for s in schemas().values())


def check(doc: object, name: str) -> object:
    """`doc` if it is valid against docs/schemas/`name`.json; else the first error, with its path."""
    validator = Draft202012Validator(schemas()[name], registry=_registry())
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    assert not errors, f"{name}.json: {errors[0].message} at {list(errors[0].absolute_path)}"
    return doc


def parsed(stdout: str, name: str) -> dict:
    """stdout holds exactly one JSON document, valid against `name`."""
    return check(json.loads(stdout), name)  # type: ignore[return-value]
