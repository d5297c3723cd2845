"""Lifetimes in the pure core: durations, the blueprint's `lifetime`, `--budget` arithmetic, the
cloud host's expiry timer (cloud-init, and the script run for real), the JUnit report of
`ravel run` checked against the JUnit XSD subset CI servers read."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
import yaml
from hypothesis import given, strategies as st

from ravel.ci.junit import Phase, report
from ravel.ci.pipeline import default_app, failure_snapshot_name, publish_line, RunOptions
from ravel.errors import BlueprintError
from ravel.model.blueprint import Lifetime
from ravel.model.dump import blueprint_dict, to_yaml
from ravel.model.durations import approx_duration, format_duration, parse_duration
from ravel.model.resolve import load_blueprint
from ravel.model.spec import NAME_RE
from ravel.plan.lifetime import budget_seconds, choose_lifetime
from ravel.render.cloud_init import EXPIRY_FILE, EXPIRY_SCRIPT, expiry_files, user_data
from tests.unit.junitcheck import problems
from tests.unit.test_cloud_init import boot, cloud_init_schema

import re

BASE = "name: lab\nvms:\n  a: {}\n"


@pytest.mark.parametrize("text,seconds", [("20s", 20), ("90m", 5400), ("2h", 7200), ("1d", 86400),
                                          ("1h30m", 5400), ("1.5h", 5400), (" 2H ", 7200), ("45", 45), (45, 45)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "2x", "h", "-5m", "0s", "0", "1h 2", "2hh", True, 1.5, "400d"])
def test_bad_durations_are_refused(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@given(st.integers(min_value=1, max_value=366 * 86400))
def test_format_duration_round_trips(seconds):
    assert parse_duration(format_duration(seconds)) == seconds


def test_approx_duration():
    assert [approx_duration(s) for s in (5, 65, 3600, 3725, 90061)] == ["5s", "1m 5s", "1h", "1h 2m", "1d 1h"]


def test_blueprint_lifetime_loads_dumps_and_points_at_mistakes():
    bp = load_blueprint(BASE + "lifetime: {ttl: 2h}\n")
    assert bp.lifetime == Lifetime(7200, "destroy")
    again = load_blueprint(to_yaml(blueprint_dict(load_blueprint(BASE + "lifetime: {ttl: 90m, action: stop}\n"))))
    assert again.lifetime == Lifetime(5400, "stop")
    assert load_blueprint(BASE).lifetime is None
    with pytest.raises(BlueprintError) as exc:
        load_blueprint(BASE + "lifetime: {ttl: soon, action: keep, extra: 1}\n")
    lines = exc.value.lines()
    assert "<blueprint>:4:17: lifetime.ttl: 'soon' is not a duration; write e.g. 20s, 90m, 2h, 1d or 1h30m" in lines
    assert any(line.startswith("<blueprint>:4:31: lifetime.action: must be one of destroy, stop") for line in lines)
    assert any("lifetime.extra: unknown key 'extra'" in line for line in lines)


def test_budget_turns_cost_per_hour_into_a_lifetime():
    assert budget_seconds(1.0, 0.08) == 45000  # 12.5 h
    assert budget_seconds(0.01, 0.0832) == 432  # rounded down: a budget is never overrun
    assert budget_seconds(5, 0.0) is None  # a free plan: the budget sets nothing
    bp = Lifetime(7200, "stop")
    # the smaller wins, and the blueprint's action stays
    assert choose_lifetime(None, 1.0, 0.08, bp).ttl_s == 7200
    c = choose_lifetime(None, 0.1, 0.08, bp)
    assert (c.ttl_s, c.action, c.source) == (4500, "stop", "--budget")
    # --ttl replaces the blueprint's ttl, and is itself capped by a budget
    assert choose_lifetime(600, None, 0.08, bp).source == "--ttl"
    assert choose_lifetime(86400, 1.0, 0.08, None).ttl_s == 45000
    assert choose_lifetime(None, None, 0.08, None) is None
    assert choose_lifetime(None, 5.0, 0.0, None) is None


def test_user_data_with_an_expiry_passes_cloud_init_schema(tmp_path):
    text = user_data(boot(expires=1_900_000_000))
    f = tmp_path / "user-data"
    f.write_text(text)
    p = cloud_init_schema(f)
    assert p.returncode == 0, p.stdout + p.stderr
    doc = yaml.safe_load(text)
    files = {w["path"]: w for w in doc["write_files"]}
    assert files[EXPIRY_FILE]["content"] == "1900000000\n"
    assert files[EXPIRY_SCRIPT]["permissions"] == "0755"
    # the timer is made on every boot, before the packages: a host stuck in its bootstrap still ends
    assert doc["bootcmd"] == [["systemd-run", "--unit=ravel-expiry", "--on-boot=30s", "--on-unit-active=30s",
                               "--timer-property=AccuracySec=5s", EXPIRY_SCRIPT]]
    assert "bootcmd" not in yaml.safe_load(user_data(boot()))  # no lifetime, no timer


@pytest.mark.parametrize("content,powers_off", [("{past}", True), ("{future}", False), ("", False),
                                                ("garbage", False), (None, False)])
def test_expiry_script_powers_off_only_once_the_expiry_passed(tmp_path, content, powers_off):
    """The host's check, run for real by sh with its file and systemctl replaced by stand-ins."""
    import time

    script = next(f for f in expiry_files(boot(expires=1)) if f["path"] == EXPIRY_SCRIPT)["content"]
    expires = tmp_path / "expires"
    if content is not None:
        expires.write_text(content.format(past=int(time.time()) - 5, future=int(time.time()) + 3600) + "\n")
    (tmp_path / "bin").mkdir()
    fake = tmp_path / "bin" / "systemctl"
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/called\n")
    fake.chmod(0o755)
    path = tmp_path / "check"
    path.write_text(script.replace(EXPIRY_FILE, str(expires)).replace("/dev/console", "/dev/null"))
    p = subprocess.run(["sh", str(path)], env=dict(os.environ, PATH=f"{tmp_path}/bin:/usr/bin:/bin"),
                       capture_output=True, text=True, timeout=10)
    assert p.returncode == 0, p.stderr
    called = (tmp_path / "called").read_text().strip() if (tmp_path / "called").exists() else None
    assert called == ("poweroff" if powers_off else None)


def phases(**outcomes) -> list[Phase]:
    out = []
    for name in ("publish", "ready", "command", "snapshot", "destroy"):
        outcome, message = outcomes.get(name, ("passed", ""))
        out.append(Phase(name, outcome, 1.25, message, "detail\x1b[31m text"))
    return out


@pytest.mark.parametrize("case", [
    {},
    {"command": ("failed", "sh -c 'exit 3' exited with status 3"), "snapshot": ("passed", "")},
    {"publish": ("error", "host-1 did not answer <SSH> & \x00 more"), "ready": ("skipped", "publish failed"),
     "command": ("skipped", "publish failed"), "snapshot": ("skipped", "no --snapshot-on-failure")},
])
def test_junit_report_is_valid_and_says_what_failed(case):
    xml = report("lab-1", phases(**case), 1_800_000_000.0, "ci-runner", output="\x07out")
    assert problems(xml) == []
    root = ET.fromstring(xml)
    suite = root.find("testsuite")
    assert [c.get("name") for c in suite.findall("testcase")] == ["publish", "ready", "command", "snapshot", "destroy"]
    assert suite.get("timestamp") == "2027-01-15T08:00:00" and suite.get("time") == "6.250"
    failed = [c.get("name") for c in suite.findall("testcase") if c.find("failure") is not None]
    errored = [c.get("name") for c in suite.findall("testcase") if c.find("error") is not None]
    assert failed == [n for n, (o, _) in case.items() if o == "failed"]
    assert errored == [n for n, (o, _) in case.items() if o == "error"]
    assert suite.get("failures") == str(len(failed)) and suite.get("errors") == str(len(errored))
    for c in suite.findall("testcase"):
        problem = c.find("failure") if c.find("failure") is not None else c.find("error")
        if problem is not None:
            assert problem.get("message") == case[c.get("name")][1].replace("\x00", "")


def test_the_schema_check_is_not_a_rubber_stamp():
    xml = report("lab-1", phases(), 1_800_000_000.0, "h").decode()
    assert problems(xml.replace('time="1.250"', 'time="-1"', 1))
    assert problems(xml.replace("<testcase ", "<testcas ", 1))  # not even well-formed
    assert problems(xml.replace("<testcase ", "<testcas ", 1).replace("</testcase>", "</testcas>", 1))
    assert problems(xml.replace(' classname="ravel.run.lab-1"', "", 1))


def test_run_names():
    for bp in ("demo", "a" * 40, "x-" * 20):
        app = default_app(bp)
        assert re.match(NAME_RE, app) and default_app(bp) != app
    snap = failure_snapshot_name("a-very-long-application-name-0123456789", 1_800_000_000)
    assert snap == "a-very-long-appli-failed-20270115-080000" and re.match(NAME_RE, snap)
    opts = RunOptions("f.yaml", ["true"], provider="aws", store="s3://b/p")
    assert publish_line("s1", opts) == "ravel publish --from s1 --store s3://b/p --provider aws --wait"


@pytest.mark.parametrize("example", ["github-actions.yml", "gitlab-ci.yml"])
def test_ci_examples_use_ravel_run_with_options_it_has(example):
    """The examples are YAML their CI reads, and every option of their `ravel run` line exists."""
    from pathlib import Path

    from typer.main import get_command

    from ravel.cli.app import app

    text = (Path(__file__).resolve().parents[2] / "examples" / example).read_text()
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict) and doc
    flat = " ".join(text.split())
    line = flat[flat.index("ravel run "):].split(" -- ")[0]
    used = set(re.findall(r"(--[a-z-]+)", line))
    assert {"--snapshot-on-failure", "--junit", "--ttl"} <= used
    run = get_command(app).commands["run"]
    known = {o for p in run.params for o in getattr(p, "opts", [])}
    assert used <= known, used - known
    assert "ravel-junit.xml" in flat.split(" -- ")[0] and "junit" in flat.split(" -- ")[-1]


def test_run_with_a_bad_blueprint_still_writes_its_junit_report(tmp_path):
    """Nothing is made (exit 2, as `ravel publish` says) and the CI server still gets a report."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: lab\nvms:\n  a: {cpus: many}\n")
    junit = tmp_path / "report.xml"
    env = dict(os.environ, RAVEL_HOME=str(tmp_path / "home"))
    p = subprocess.run([sys.executable, "-m", "ravel", "run", str(bad), "--junit", str(junit), "--", "true"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 2, p.stderr
    assert "bad.yaml:3:13: vms.a.cpus: expected a whole number" in p.stderr
    assert problems(str(junit)) == []
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    assert "vms.a.cpus" in cases["publish"].find("error").text
    assert all(cases[n].find("skipped") is not None for n in ("ready", "command", "snapshot", "destroy"))
