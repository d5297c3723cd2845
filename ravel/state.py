"""The SQLite state: apps, hosts, networks, VMs, and the allocations that must stay unique.

One lock per app is an flock on a file, not a row: the kernel drops it when the holder dies,
so a publish killed with SIGKILL never leaves the app locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .errors import StateError

SCHEMA = """
CREATE TABLE IF NOT EXISTS apps (
  name TEXT PRIMARY KEY, provider TEXT NOT NULL, blueprint_path TEXT, blueprint_text TEXT,
  plan_json TEXT, status TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS hosts (
  app TEXT NOT NULL, name TEXT NOT NULL, host_id INTEGER NOT NULL UNIQUE, type TEXT, ref TEXT,
  address TEXT, accel TEXT, status TEXT NOT NULL, extra TEXT NOT NULL DEFAULT '{}',
  PRIMARY KEY (app, name));
CREATE TABLE IF NOT EXISTS networks (
  app TEXT NOT NULL, name TEXT NOT NULL, vni INTEGER NOT NULL UNIQUE, PRIMARY KEY (app, name));
CREATE TABLE IF NOT EXISTS vms (
  app TEXT NOT NULL, name TEXT NOT NULL, host TEXT, state TEXT NOT NULL,
  detail TEXT NOT NULL DEFAULT '{}', PRIMARY KEY (app, name));
CREATE TABLE IF NOT EXISTS lifetimes (
  app TEXT PRIMARY KEY, expires REAL NOT NULL, action TEXT NOT NULL, source TEXT NOT NULL,
  reaper_pid INTEGER, reaper_start TEXT, note TEXT);
"""
FIRST_VNI = 1000


@dataclass(frozen=True)
class AppRecord:
    name: str
    provider: str
    blueprint_path: str | None
    blueprint_text: str | None
    plan: dict[str, Any] | None
    status: str
    created: float
    updated: float


@dataclass(frozen=True)
class LifetimeRecord:
    """An app's expiry (epoch seconds) and, on the local provider, the detached reaper that
    enforces it (its pid and start time, so a reused pid is never taken for it)."""

    app: str
    expires: float
    action: str  # destroy | stop
    source: str  # --ttl, lifetime.ttl, --budget
    reaper_pid: int | None
    reaper_start: str | None
    note: str | None  # what went wrong at expiry, for status


@dataclass(frozen=True)
class HostRecord:
    app: str
    name: str
    host_id: int
    type: str | None
    ref: str | None
    address: str | None
    accel: str | None
    status: str
    extra: dict[str, Any]


@dataclass(frozen=True)
class VmRecord:
    app: str
    name: str
    host: str | None
    state: str
    detail: dict[str, Any]


class State:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        (directory / "locks").mkdir(exist_ok=True, mode=0o700)
        self.db = sqlite3.connect(directory / "state.db", timeout=30, isolation_level=None,
                                  check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA busy_timeout=30000")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- locks -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, app: str, action: str) -> Iterator[None]:
        path = self.dir / "locks" / f"{app}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another ravel process"
                raise StateError(f"app {app!r} is busy: {holder}",
                                 hint="wait for it to finish, or stop it; the lock goes when it exits") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{action} running as pid {os.getpid()}".encode(), 0)
            yield
        finally:
            os.close(fd)

    # -- apps --------------------------------------------------------------------------------
    def app(self, name: str) -> AppRecord | None:
        row = self.db.execute("SELECT name, provider, blueprint_path, blueprint_text, plan_json, status, created, updated "
                              "FROM apps WHERE name=?", (name,)).fetchone()
        if row is None:
            return None
        return AppRecord(row[0], row[1], row[2], row[3], json.loads(row[4]) if row[4] else None, *row[5:])

    def require_app(self, name: str) -> AppRecord:
        rec = self.app(name)
        if rec is None:
            known = ", ".join(a.name for a in self.apps()) or "none"
            raise StateError(f"no app named {name!r} (apps: {known})")
        return rec

    def apps(self) -> list[AppRecord]:
        names = [r[0] for r in self.db.execute("SELECT name FROM apps ORDER BY name")]
        return [a for a in (self.app(n) for n in names) if a is not None]

    def put_app(self, name: str, provider: str, status: str, blueprint_path: str | None = None,
                blueprint_text: str | None = None, plan: dict[str, Any] | None = None) -> None:
        now = time.time()
        with self.tx() as db:
            db.execute(
                "INSERT INTO apps (name, provider, blueprint_path, blueprint_text, plan_json, status, created, updated) "
                "VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET provider=excluded.provider, "
                "blueprint_path=coalesce(excluded.blueprint_path, blueprint_path), "
                "blueprint_text=coalesce(excluded.blueprint_text, blueprint_text), "
                "plan_json=coalesce(excluded.plan_json, plan_json), status=excluded.status, updated=excluded.updated",
                (name, provider, blueprint_path, blueprint_text, json.dumps(plan) if plan else None, status, now, now),
            )

    def set_app_status(self, name: str, status: str) -> None:
        self.db.execute("UPDATE apps SET status=?, updated=? WHERE name=?", (status, time.time(), name))

    def delete_app(self, name: str) -> None:
        with self.tx() as db:
            for table in ("vms", "networks", "hosts", "lifetimes"):
                db.execute(f"DELETE FROM {table} WHERE app=?", (name,))
            db.execute("DELETE FROM apps WHERE name=?", (name,))

    # -- lifetimes ---------------------------------------------------------------------------
    def lifetime(self, app: str) -> LifetimeRecord | None:
        row = self.db.execute("SELECT app, expires, action, source, reaper_pid, reaper_start, note "
                              "FROM lifetimes WHERE app=?", (app,)).fetchone()
        return LifetimeRecord(*row) if row else None

    def set_lifetime(self, app: str, expires: float, action: str, source: str) -> None:
        """Record (or move) the app's expiry; the reaper, if any, is kept and reads it again."""
        self.db.execute(
            "INSERT INTO lifetimes (app, expires, action, source) VALUES (?,?,?,?) ON CONFLICT(app) DO UPDATE "
            "SET expires=excluded.expires, action=excluded.action, source=excluded.source, note=NULL",
            (app, expires, action, source))

    def set_reaper(self, app: str, pid: int | None, start: str | None) -> None:
        self.db.execute("UPDATE lifetimes SET reaper_pid=?, reaper_start=? WHERE app=?", (pid, start, app))

    def note_lifetime(self, app: str, note: str | None) -> None:
        self.db.execute("UPDATE lifetimes SET note=? WHERE app=?", (note, app))

    # -- allocations -------------------------------------------------------------------------
    def vnis(self, app: str, networks: list[str]) -> dict[str, int]:
        """A VNI per network, unique across every app this state knows, stable once given."""
        with self.tx() as db:
            out = dict(db.execute("SELECT name, vni FROM networks WHERE app=?", (app,)).fetchall())
            used = {r[0] for r in db.execute("SELECT vni FROM networks")}
            nxt = FIRST_VNI
            for net in networks:
                if net in out:
                    continue
                while nxt in used:
                    nxt += 1
                db.execute("INSERT INTO networks (app, name, vni) VALUES (?,?,?)", (app, net, nxt))
                out[net] = nxt
                used.add(nxt)
            for stale in set(out) - set(networks):
                db.execute("DELETE FROM networks WHERE app=? AND name=?", (app, stale))
                del out[stale]
        return out

    def host_ids(self, app: str, hosts: list[str]) -> dict[str, int]:
        """A small integer per host, unique across apps: it names devices and underlay addresses."""
        with self.tx() as db:
            out = dict(db.execute("SELECT name, host_id FROM hosts WHERE app=?", (app,)).fetchall())
            used = {r[0] for r in db.execute("SELECT host_id FROM hosts")}
            nxt = 1
            for h in hosts:
                if h in out:
                    continue
                while nxt in used:
                    nxt += 1
                db.execute("INSERT INTO hosts (app, name, host_id, status) VALUES (?,?,?,?)", (app, h, nxt, "planned"))
                out[h] = nxt
                used.add(nxt)
        return out

    # -- hosts -------------------------------------------------------------------------------
    def hosts(self, app: str) -> list[HostRecord]:
        rows = self.db.execute("SELECT app, name, host_id, type, ref, address, accel, status, extra FROM hosts "
                               "WHERE app=? ORDER BY host_id", (app,)).fetchall()
        return [HostRecord(*r[:8], json.loads(r[8])) for r in rows]

    def update_host(self, app: str, name: str, **fields: Any) -> None:
        if "extra" in fields:
            fields["extra"] = json.dumps(fields["extra"])
        cols = ", ".join(f"{k}=?" for k in fields)
        self.db.execute(f"UPDATE hosts SET {cols} WHERE app=? AND name=?", (*fields.values(), app, name))

    def delete_host(self, app: str, name: str) -> None:
        self.db.execute("DELETE FROM hosts WHERE app=? AND name=?", (app, name))

    # -- vms ---------------------------------------------------------------------------------
    def vms(self, app: str) -> list[VmRecord]:
        rows = self.db.execute("SELECT app, name, host, state, detail FROM vms WHERE app=? ORDER BY rowid",
                               (app,)).fetchall()
        return [VmRecord(*r[:4], json.loads(r[4])) for r in rows]

    def put_vm(self, app: str, name: str, host: str | None, state: str, detail: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT INTO vms (app, name, host, state, detail) VALUES (?,?,?,?,?) ON CONFLICT(app, name) "
            "DO UPDATE SET host=excluded.host, state=excluded.state, detail=excluded.detail",
            (app, name, host, state, json.dumps(detail)),
        )

    def delete_vm(self, app: str, name: str) -> None:
        self.db.execute("DELETE FROM vms WHERE app=? AND name=?", (app, name))
