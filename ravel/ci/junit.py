"""The JUnit XML report of a `ravel run`: one test case per phase (publish, ready, command,
snapshot, destroy) with its duration and, when it failed, the failure text. Pure.

The shape is the subset Jenkins, GitLab, GitHub's report actions and Azure read alike
(tests/unit/junit.xsd): <testsuites> with one <testsuite name tests failures errors skipped
time timestamp hostname>, <testcase name classname time> holding at most one of <failure
message type>, <error message type> or <skipped message>, then <system-out>.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass

PHASES = ("publish", "ready", "command", "snapshot", "destroy")


@dataclass
class Phase:
    name: str  # one of PHASES
    outcome: str = "skipped"  # passed | failed | error | skipped
    seconds: float = 0.0
    message: str = ""  # one line: why it failed or was skipped
    detail: str = ""  # more text: the error's hint, the command line

    def done(self, outcome: str, seconds: float, message: str = "", detail: str = "") -> None:
        self.outcome, self.seconds, self.message, self.detail = outcome, seconds, message, detail


def _clean(text: str) -> str:
    """XML 1.0 cannot carry most control characters (a command's output may hold them)."""
    return "".join(c for c in text if c in "\t\n\r" or ord(c) >= 0x20)


def report(app: str, phases: list[Phase], started: float, hostname: str, output: str = "") -> bytes:
    """`started`: epoch seconds when the run began."""
    failures = sum(p.outcome == "failed" for p in phases)
    errors = sum(p.outcome == "error" for p in phases)
    skipped = sum(p.outcome == "skipped" for p in phases)
    total = sum(p.seconds for p in phases)
    suites = ET.Element("testsuites", name="ravel run", tests=str(len(phases)), failures=str(failures),
                        errors=str(errors), skipped=str(skipped), time=f"{total:.3f}")
    suite = ET.SubElement(suites, "testsuite", name=f"ravel run {app}", tests=str(len(phases)),
                          failures=str(failures), errors=str(errors), skipped=str(skipped), time=f"{total:.3f}",
                          timestamp=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started)), hostname=hostname)
    for p in phases:
        case = ET.SubElement(suite, "testcase", name=p.name, classname=f"ravel.run.{app}", time=f"{p.seconds:.3f}")
        if p.outcome in ("failed", "error"):
            tag = "failure" if p.outcome == "failed" else "error"
            el = ET.SubElement(case, tag, message=_clean(p.message), type=f"ravel.{p.name}")
            el.text = _clean("\n".join(x for x in (p.message, p.detail) if x))
        elif p.outcome == "skipped":
            ET.SubElement(case, "skipped", message=_clean(p.message))
        elif p.detail:
            ET.SubElement(case, "system-out").text = _clean(p.detail)
    if output:
        ET.SubElement(suite, "system-out").text = _clean(output)
    ET.indent(suites)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="utf-8") + b"\n"
