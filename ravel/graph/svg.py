"""SVG from DOT text with Graphviz's own `dot` (Debian's graphviz package), bounded in time."""

from __future__ import annotations

import shutil
import subprocess

from ..errors import EnvironmentProblem, RavelError

DOT_S = 60.0  # a 50-VM lab lays out in well under a second; a runaway layout is cut here


def to_svg(dot_text: str, dot: str | None = None) -> str:
    exe = dot or shutil.which("dot")
    if exe is None:
        raise EnvironmentProblem("Graphviz's `dot` is not installed (SVG needs it)",
                                 hint="apt-get install graphviz, or use --format dot|mermaid|json")
    try:
        p = subprocess.run([exe, "-Tsvg"], input=dot_text.encode(), capture_output=True, timeout=DOT_S)
    except subprocess.TimeoutExpired:
        raise RavelError(f"Graphviz did not lay the graph out within {DOT_S:.0f} s") from None
    if p.returncode != 0:
        raise RavelError("Graphviz failed: " + p.stderr.decode(errors="replace").strip()[:500])
    return p.stdout.decode()
