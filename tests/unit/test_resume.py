"""Resuming VMs from a `--memory` snapshot: the pure parts. What the renderer puts in a host's
document, what the host runtime accepts, when it resumes (once, on first start) and when it
boots, and what counts as "the same machine" for a saved state."""

from __future__ import annotations

import copy
import textwrap
from dataclasses import replace

import pytest

from ravel.errors import StateError
from ravel.host.desired import VM, Desired, DesiredError, parse_desired
from ravel.host.facts import VMRecord, argv_sha256, parse_record
from ravel.host.resume import console_log, resume_argv
from ravel.host.reconcile import KINDS, phase, reconcile
from ravel.model.resolve import load_blueprint
from ravel.paths import paths as make_paths
from ravel.plan.catalogue import load_catalogue
from ravel.plan.network import plan_network
from ravel.plan.plan import make_plan
from ravel.plan.app import resolve_app
from ravel.render.host_state import HostSite, desired_docs
from ravel.snapshot.machine import (accel_of, blueprint_signatures, machine_signature,
                                 signature_difference)
from ravel.snapshot import memory as pending
from ravel.run.ship import referenced_files, rewrite

from tests.unit.test_host_reconcile import DOC, converged, kinds

STATE = "/images/abc.root.qemu-state"

BP = textwrap.dedent("""\
    name: t
    networks:
      a: {subnet: 10.1.0.0/24}
    vms:
      x:
        memory: 128MiB
        boot: {kernel: /k, initrd: /i, cmdline: console=ttyS0}
        disks: [{size: 64MiB}]
        nics: [{network: a, ip: 10.1.0.5, mac: "52:54:00:00:00:05"}]
      y:
        disks: [{size: 64MiB, bus: pvscsi}]
        nics: [{network: a, mac: "52:54:00:00:00:06"}]
    """)


def render(incoming=None, running=None, app="t", text=BP):
    bp = load_blueprint(text, "t.yaml")
    plan = make_plan(bp, load_catalogue("local"))
    net = plan_network(bp, app, {"a": 1000})
    sites = {h.name: HostSite(h.name, f"198.18.0.{i + 10}", "eth0", f"/run/r/{app}/{h.name}",
                              f"/data/{app}/{h.name}", "tcg") for i, h in enumerate(plan.placement.hosts)}
    return desired_docs(resolve_app(bp, app, plan, net.vni), sites, running, incoming)


def vms_of(docs):
    return {vm["name"]: vm for d in docs.values() for vm in d["vms"]}


# -- rendering ----------------------------------------------------------------------------------

def test_incoming_only_for_the_named_vms_and_argv_unchanged():
    plain = vms_of(render())
    resumed = vms_of(render(incoming={"x": STATE}))
    assert resumed["x"]["incoming"] == STATE
    assert "incoming" not in resumed["y"] and all("incoming" not in vm for vm in plain.values())
    # the argv is the VM's own: a resumed VM is not "changed" when the state is gone from the doc
    assert resumed["x"]["argv"] == plain["x"]["argv"]
    assert "-incoming" not in resumed["x"]["argv"]
    for doc in render(incoming={"x": STATE}).values():
        parse_desired(doc)  # what the renderer writes, the runtime accepts


# -- the desired document -----------------------------------------------------------------------

def with_vm(**changes):
    d = copy.deepcopy(DOC)
    d["vms"][0].update(changes)
    return d


def test_desired_accepts_an_absolute_incoming_path():
    assert parse_desired(with_vm(incoming=STATE)).vms[0].incoming == STATE
    assert parse_desired(DOC).vms[0].incoming is None


@pytest.mark.parametrize("value, message", [
    ("relative/state", "vms[0].incoming: 'relative/state' must be an absolute path"),
    (7, "vms[0].incoming: must be str, got int"),
])
def test_desired_rejects_a_bad_incoming(value, message):
    with pytest.raises(DesiredError) as e:
        parse_desired(with_vm(incoming=value))
    assert message in e.value.problems


def test_desired_rejects_incoming_in_the_argv():
    argv = DOC["vms"][0]["argv"] + ["-incoming", "defer"]
    with pytest.raises(DesiredError) as e:
        parse_desired(with_vm(argv=argv))
    assert any(p.startswith("vms[0].argv: must not include -incoming") for p in e.value.problems)


# -- reconcile: resume once, on first start -----------------------------------------------------

def stopped_facts(d, record):
    f = converged(d, running=False)
    vm = d.vms[0]
    return replace(f, vms={vm.name: replace(f.vms[vm.name], record=record)})


def start_of(actions):
    return next(a for a in actions if a.kind == "vm.start")


def test_first_start_resumes_from_the_state():
    d = parse_desired(with_vm(incoming=STATE))
    start = start_of(reconcile(d, stopped_facts(d, None)))
    assert start.params["incoming"] == STATE and "resumes from its memory state" in start.reason
    assert start.params["argv"] == DOC["vms"][0]["argv"]  # the runtime adds -S -incoming defer


def test_a_resume_that_never_ran_the_guest_is_tried_again():
    d = parse_desired(with_vm(incoming=STATE))
    vm = d.vms[0]
    rec = VMRecord(argv_sha256(vm.argv), tuple(resume_argv(vm.argv)), vm.pidfile, vm.qmp, "pending", STATE)
    assert start_of(reconcile(d, stopped_facts(d, rec))).params["incoming"] == STATE
    # still running from a run that died mid-load: restarted, and resumed again
    f = converged(d)
    f = replace(f, vms={vm.name: replace(f.vms[vm.name], record=rec)})
    actions = reconcile(d, f)
    assert kinds(actions) == [("vm.stop", vm.name), ("vm.start", vm.name)]
    assert actions[0].reason == "its resume from a memory state did not finish"
    assert actions[1].params["incoming"] == STATE


@pytest.mark.parametrize("resume", ["done", "loaded", ""])
def test_a_vm_that_ran_on_boots_from_its_disks(resume):
    d = parse_desired(with_vm(incoming=STATE))
    vm = d.vms[0]
    rec = VMRecord(argv_sha256(vm.argv), tuple(vm.argv), vm.pidfile, vm.qmp, resume, STATE if resume else "")
    start = start_of(reconcile(d, stopped_facts(d, rec)))
    assert "incoming" not in start.params
    assert "boots from its disks" in start.reason


def test_a_resumed_vm_is_left_alone_and_a_loaded_one_is_continued():
    d = parse_desired(with_vm(incoming=STATE))
    vm = d.vms[0]
    f = converged(d)
    for resume, want in (("done", []), ("loaded", [("vm.cont", vm.name)])):
        rec = VMRecord(argv_sha256(vm.argv), tuple(resume_argv(vm.argv)), vm.pidfile, vm.qmp, resume, STATE)
        facts = replace(f, vms={vm.name: replace(f.vms[vm.name], record=rec, argv=rec.argv)})
        assert kinds(reconcile(d, facts)) == want
        # and the same once the state is no longer in the document (a later publish)
        assert kinds(reconcile(parse_desired(DOC), facts)) == want
    assert "vm.cont" in KINDS and phase("vm.cont") == phase("vm.start")


def test_the_record_keeps_how_far_a_resume_got():
    rec = parse_record('{"sha256": "s", "argv": ["q"], "resume": "loaded", "incoming": "/s"}')
    assert (rec.resume, rec.incoming) == ("loaded", "/s")
    assert parse_record('{"sha256": "s", "argv": ["q"]}').resume == ""


def test_console_log_is_found_in_the_argv():
    argv = render()["host-1"]["vms"][0]["argv"]
    assert console_log(argv) == "/run/r/t/host-1/x.log"
    assert console_log(["qemu", "-m", "1"]) is None


# -- machine signatures -------------------------------------------------------------------------

def test_signature_ignores_where_files_live_but_not_the_machine():
    a = vms_of(render(app="t"))["x"]["argv"]
    b = vms_of(render(app="other"))["x"]["argv"]  # other paths, process name, taps
    assert a != b and machine_signature(a) == machine_signature(b)
    sig = machine_signature(a)
    assert "-m 128M" in sig and "-accel tcg" in sig and "-kernel" in sig
    assert not any("/data/" in s or "/run/" in s or "ifname" in s for s in sig)
    more = vms_of(render(text=BP.replace("memory: 128MiB", "memory: 192MiB")))["x"]["argv"]
    assert signature_difference(sig, machine_signature(more)) == "'-m 128M' was saved, '-m 192M' would run now"
    nic = vms_of(render(text=BP.replace('"52:54:00:00:00:05"', '"52:54:00:00:00:07"')))["x"]["argv"]
    assert "52:54:00:00:00:05" in signature_difference(sig, machine_signature(nic))
    assert signature_difference(sig, sig[:-1]).endswith("was saved and is missing now")
    assert signature_difference(sig[:-1], sig).endswith("is new since the state was saved")


def test_blueprint_signatures_match_what_the_hosts_run():
    bp = load_blueprint(BP, "t.yaml")
    sigs = blueprint_signatures(bp, "t", {"x": "tcg", "y": "tcg"})
    for name, vm in vms_of(render(app="t")).items():
        assert sigs[name] == machine_signature(vm["argv"])
    assert accel_of(sigs["x"]) == "tcg"
    assert accel_of(blueprint_signatures(bp, "t", {"x": "kvm"})["x"]) == "kvm"


# -- the app's pending resumes ------------------------------------------------------------------

def test_pending_resumes_leave_as_vms_start(tmp_path):
    p = make_paths({"RAVEL_HOME": str(tmp_path)})
    sig = ("-m 128M",)
    pending.record(p, "app", {"x": pending.Resume("/s/x", sig), "y": pending.Resume("/s/y", sig)})
    assert pending.pending(p, "app") == {"x": pending.Resume("/s/x", sig), "y": pending.Resume("/s/y", sig)}
    pending.started(p, "app", ["x", "z"])
    assert list(pending.pending(p, "app")) == ["y"]
    pending.started(p, "app", ["y"])
    assert pending.pending(p, "app") == {} and not (p.app_data("app") / pending.FILE).exists()


def test_a_host_that_runs_another_machine_is_refused_before_anything_starts():
    docs = render()
    x = vms_of(docs)["x"]["argv"]
    kvm = [a.replace("tcg,", "kvm,") if a.startswith("tcg,") else a for a in x]
    entries = {"x": pending.Resume(STATE, machine_signature(kvm))}
    desired = {host: parse_desired(doc) for host, doc in docs.items()}
    with pytest.raises(StateError, match=r"VM x cannot resume from its memory state on host-\d: "
                                         r"'-accel kvm' was saved, '-accel tcg' would run now"):
        pending.check_machines(entries, desired)
    pending.check_machines({"x": pending.Resume(STATE, machine_signature(x))}, desired)
    pending.check_machines({"x": pending.Resume(STATE, ())}, desired)  # an older manifest: QEMU checks


# -- shipping to hosts that do not share this filesystem ---------------------------------------

def test_the_state_file_is_shipped_and_renamed():
    doc = Desired("t", "/r", vms=(VM("x", True, ("qemu",), "/r/x.pid", "/r/x.qmp", incoming=STATE),))
    assert referenced_files(doc) == [STATE]
    assert rewrite(doc, {STATE: "/h/images/ab-state"}).vms[0].incoming == "/h/images/ab-state"


def test_a_missing_state_file_fails_before_qemu_starts(tmp_path):
    from ravel.host import resume as host_resume

    p = {"name": "x", "incoming": str(tmp_path / "gone.qemu-state"), "qmp": str(tmp_path / "x.qmp"),
         "argv": ["qemu-system-x86_64", "-daemonize"], "pidfile": str(tmp_path / "x.pid"),
         "sha256": "s", "record": str(tmp_path / "x.argv")}
    with pytest.raises(host_resume.ResumeFailed, match="memory state .*gone.qemu-state does not exist on this host"):
        host_resume.start(p)
    assert not (tmp_path / "x.argv").exists()


def test_the_resume_is_noted_in_the_console_log(tmp_path):
    from ravel.host import resume as host_resume

    log = tmp_path / "x.log"
    log.write_bytes(b"before")
    argv = ["qemu", "-chardev", f"socket,id=ser0,path=/s,server=on,logfile={log},logappend=on"]
    host_resume.note_resumed(argv, "x", "/images/abc.qemu-state")
    assert log.read_bytes() == b"before\r\n[RAVEL-RESUMED x from abc.qemu-state]\r\n"
