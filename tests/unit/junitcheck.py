"""The JUnit XSD subset CI servers read (junit.xsd beside this file), for the unit and e2e tests."""

from __future__ import annotations

from pathlib import Path

import xmlschema

SCHEMA = xmlschema.XMLSchema(str(Path(__file__).with_name("junit.xsd")))


def problems(path_or_text) -> list[str]:
    """What is wrong with the document (a path, or the XML itself); [] when it is valid."""
    try:
        return [str(e.reason or e) for e in SCHEMA.iter_errors(path_or_text)]
    except xmlschema.XMLResourceError as exc:  # not even well-formed XML
        return [str(exc)]
