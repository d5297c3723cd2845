"""Command line of the host runtime: JSON in (stdin or --input), JSON report out (stdout).

    python3 -m ravel.host facts              host capabilities (KVM probe, QEMU, cpus, memory)
    python3 -m ravel.host apply   < desired  reconcile to the desired state
    python3 -m ravel.host observe < desired  what exists versus desired; changes nothing
    python3 -m ravel.host destroy < target   remove an app ({"app","run_dir","prefixes"?} or
                                             the desired document)
    python3 -m ravel.host ready   < checks   which guests are ready (host/ready.py); changes nothing
    python3 -m ravel.host wait-ready         the same, a report line every half second until all
                                             are ready or stdin ends (a line protocol)
    python3 -m ravel.host boot               start guests when told and report readiness until stdin
                                             ends (a line protocol: host/boot.py)
    python3 -m ravel.host version
    python3 -m ravel.host netem-relay ...     link impairment in user space (relay_netem.py)
    python3 -m ravel.host capture --iface IF tcpdump on one interface: pcap on stdout until stdin
                                             ends (host/capture.py)
    python3 -m ravel.host snapshot           pause this host's VMs together and freeze their
                                             disks (a line protocol: see host/snapshot.py)

Exit status: 0 success (apply/destroy: converged); 1 the operation failed or did not converge
(the report's "errors" say why, and stderr repeats them); 2 invalid input; 3 internal error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from typing import Any, Dict, List, Optional

from . import DESIRED_VERSION, RUNTIME_VERSION
from . import apply as ops
from .desired import DesiredError, parse_desired, parse_target
from .facts import host_facts
from .proc import CommandFailed

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_INTERNAL = 3


def _read_input(path: str) -> Any:
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path) as f:
                text = f.read()
    except OSError as exc:
        raise _Invalid([f"cannot read {path}: {exc.strerror}"]) from None
    if not text.strip():
        raise _Invalid(["no input: pipe the JSON document to stdin (or pass --input FILE)"])
    try:
        return json.loads(text)
    except ValueError as exc:
        raise _Invalid([f"input is not JSON: {exc}"]) from None


class _Invalid(Exception):
    def __init__(self, problems: List[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _emit(doc: Dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    sys.stdout.flush()


def _fail_message(cmd: str, report: Dict[str, Any]) -> None:
    errors = report.get("errors") or ["did not converge"]
    sys.stderr.write(f"ravel.host {cmd}: failed:\n" + "".join(f"  - {e}\n" for e in errors))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ravel.host", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    f = sub.add_parser("facts", help="host capabilities: KVM (probed), QEMU, cpus, memory, kernel")
    f.add_argument("--kvm-timeout", type=float, default=5.0, help="bound on the KVM probe (s)")
    for name, text in (("apply", "reconcile the host to the desired state on stdin"),
                       ("observe", "report what exists versus the desired state; no changes"),
                       ("destroy", "remove an app's VMs, links and run_dir (idempotent)")):
        c = sub.add_parser(name, help=text)
        c.add_argument("--input", "-i", default="-", help="read JSON from FILE instead of stdin")
    c = sub.add_parser("ready", help="which guests are ready (checks on stdin; see host/ready.py)")
    c.add_argument("--input", "-i", default="-", help="read JSON from FILE instead of stdin")
    sub.add_parser("wait-ready", help="report readiness every half second until all are ready (line protocol)")
    sub.add_parser("boot", help="apply when told and report readiness until stdin ends (line protocol)")
    sub.add_parser("version", help="runtime and desired-document versions")
    sub.add_parser("snapshot", help="freeze this host's VM disks in one pause (line protocol on stdin)")
    c = sub.add_parser("capture", help="tcpdump on one interface, pcap on stdout, until stdin ends")
    c.add_argument("--iface", required=True, help="the interface (a tap or a bridge)")
    c.add_argument("--direction", choices=("in", "out", "inout"), default="inout",
                   help="frames the interface receives, sends, or both")
    c.add_argument("--count", type=int, default=None, help="stop after N packets")
    c.add_argument("--filter", default="", help="a tcpdump (BPF) filter")
    c = sub.add_parser("console", help="relay stdin/stdout to a VM's serial console socket")
    c.add_argument("socket", help="the VM's serial socket path")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    # guest disks, frozen layers and memory states are the guests' data: everything the runtime
    # (and QEMU, started by it: `exec:cat > STATE`) creates is for root alone
    os.umask(0o077)
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["netem-relay"]:  # a long-running helper, not a JSON command (relay_netem.py)
        from . import relay_netem

        return relay_netem.main(args_in[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.cmd:
        parser.print_help(sys.stderr)
        return EXIT_INVALID
    try:
        return _run(args)
    except _Invalid as exc:
        _emit({"errors": exc.problems})
        sys.stderr.write(f"ravel.host {args.cmd}: invalid input:\n"
                         + "".join(f"  - {p}\n" for p in exc.problems))
        return EXIT_INVALID
    except KeyboardInterrupt:
        sys.stderr.write(f"ravel.host {args.cmd}: interrupted\n")
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - one place turns bugs into an exit status
        _emit({"errors": [f"internal error: {exc!r}"]})
        sys.stderr.write(f"ravel.host {args.cmd}: internal error (a bug):\n")
        traceback.print_exc(file=sys.stderr)
        return EXIT_INTERNAL


def _run(args: argparse.Namespace) -> int:
    if args.cmd == "version":
        _emit({"runtime": RUNTIME_VERSION, "desired_version": DESIRED_VERSION,
               "python": sys.version.split()[0]})
        return EXIT_OK
    if args.cmd == "facts":
        _emit(host_facts(kvm_timeout=args.kvm_timeout))
        return EXIT_OK
    if args.cmd == "snapshot":
        from . import snapshot

        return snapshot.main()
    if args.cmd == "wait-ready":
        from . import ready

        return ready.watch()
    if args.cmd == "boot":
        from . import boot

        return boot.main()
    if args.cmd == "capture":
        from . import capture

        return capture.run(args.iface, args.direction, args.count, args.filter)
    if args.cmd == "console":
        from . import console

        return console.relay(args.socket)

    doc = _read_input(args.input)
    if args.cmd == "ready":
        from . import ready

        problems = ready.checks_of(doc)
        if problems:
            raise _Invalid(problems)
        _emit(ready.check_all(doc))
        return EXIT_OK
    try:
        if args.cmd == "destroy":
            app, run_dir, prefixes, desired = parse_target(doc)
        else:
            desired = parse_desired(doc)
    except DesiredError as exc:
        raise _Invalid(exc.problems) from None

    try:
        if args.cmd == "observe":
            _emit(ops.observe(desired))
            return EXIT_OK
        if args.cmd == "apply":
            report = ops.apply_desired(desired)
        else:
            report = ops.destroy(app, run_dir, prefixes, desired)
    except CommandFailed as exc:  # observing the host failed (e.g. `ip` missing)
        report = {"converged": False, "errors": [str(exc)]}
    _emit(report)
    if report.get("converged") and not report.get("errors"):
        return EXIT_OK
    _fail_message(args.cmd, report)
    return EXIT_FAILED
