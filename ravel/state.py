"""The SQLite state: apps, hosts, networks, VMs, and the allocations that must stay unique.

One lock per app is an flock on a file, not a row: the kernel drops it when the holder dies,
so a publish killed with SIGKILL never leaves the app locked. The file names its holder (pid,
start time, host: ravel/owners.py) while held and is emptied on release, so a holder that died
is seen by the next command, which says so.

The database is opened on first use (commands that fail their checks first leave nothing
behind), in WAL mode, 0600 in a 0700 directory (it holds every app's blueprint and hosts). Any
SQLite failure that is not "busy" is damage: it is reported as StateDamaged naming the file,
what `PRAGMA integrity_check` says, and the way out (`ravel doctor --repair-state`, `ravel
destroy APP --force`), never as an internal error. Each app's rows can be exported as one JSON
document and imported again: its backup (run/state_backup.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from . import owners
from .errors import StateDamaged, StateError
from .paths import PRIVATE_FILE, private_dir

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
CREATE TABLE IF NOT EXISTS nics (
  app TEXT NOT NULL, vm TEXT NOT NULL, nic INTEGER NOT NULL, impair TEXT, link TEXT,
  PRIMARY KEY (app, vm, nic));
CREATE TABLE IF NOT EXISTS lifetimes (
  app TEXT PRIMARY KEY, expires REAL NOT NULL, action TEXT NOT NULL, source TEXT NOT NULL,
  reaper_pid INTEGER, reaper_start TEXT, note TEXT);
"""
FIRST_VNI = 1000
DB_FILE = "state.db"
BUSY_S = 30
REPAIR_HINT = ("`ravel doctor --repair-state` rebuilds it from its backups and from the hosts; "
               "`ravel destroy APP --force` removes an app from what its hosts show")
EXPORT_VERSION = 1
_TABLES = {  # the columns of each table, in order, as exported
    "apps": ("name", "provider", "blueprint_path", "blueprint_text", "plan_json", "status", "created", "updated"),
    "hosts": ("app", "name", "host_id", "type", "ref", "address", "accel", "status", "extra"),
    "networks": ("app", "name", "vni"),
    "vms": ("app", "name", "host", "state", "detail"),
    "lifetimes": ("app", "expires", "action", "source", "reaper_pid", "reaper_start", "note"),
    "nics": ("app", "vm", "nic", "impair", "link"),
}

F = TypeVar("F", bound=Callable[..., Any])


def _guarded(fn: F) -> F:
    """SQLite's own failures (and rows that no longer parse) become the state's errors."""
    @functools.wraps(fn)
    def wrapper(self: "State", *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except (sqlite3.DatabaseError, json.JSONDecodeError) as exc:
            raise self.failure(exc) from None
    return wrapper  # type: ignore[return-value]


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


def _private_db(db: Path) -> None:
    """A database (and its WAL and shm) that an older ravel left readable is made private."""
    for f in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        try:
            if f.stat().st_mode & 0o077:
                os.chmod(f, PRIVATE_FILE)
        except FileNotFoundError:
            pass


def _owner_doc(raw: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(raw)
    except ValueError:
        return None  # empty, or an older ravel's words
    return doc if isinstance(doc, dict) else None


def _holder(raw: bytes) -> str:
    doc = _owner_doc(raw)
    if doc is None:
        return raw.decode(errors="replace").strip() or "another ravel process"
    since = time.strftime("%H:%M:%S", time.localtime(float(doc.get("time", 0))))
    return f"{doc.get('action', 'a command')} running as pid {doc.get('pid')} on {doc.get('host')} since {since}"


class State:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.path = directory / DB_FILE
        private_dir(directory)
        private_dir(directory / "locks")
        self.notice: Callable[[str], None] = lambda _: None  # where a cleared lock is said
        self._db: sqlite3.Connection | None = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = self._open()
        return self._db

    def _open(self) -> sqlite3.Connection:
        old = os.umask(0o077)  # a new database is 0600 from its first byte (its WAL and shm take its mode)
        try:
            try:
                db = sqlite3.connect(self.path, timeout=BUSY_S, isolation_level=None, check_same_thread=False)
            except sqlite3.Error as exc:
                raise self.failure(exc) from None
            try:
                db.execute(f"PRAGMA busy_timeout={BUSY_S * 1000}")
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(SCHEMA)
            except sqlite3.DatabaseError as exc:
                db.close()
                raise self.failure(exc) from None
        finally:
            os.umask(old)
        _private_db(self.path)
        return db

    def failure(self, exc: BaseException) -> StateError:
        """The error to report for a failure of SQLite on this state."""
        text = str(exc)
        if isinstance(exc, sqlite3.OperationalError):
            if "locked" in text or "busy" in text:
                return StateError(f"the state {self.path} stayed locked by another ravel process for {BUSY_S} s",
                                  hint="wait for it to finish and run this again")
            if "unable to open" in text or "readonly" in text or "read-only" in text:
                return StateError(f"cannot open the state {self.path}: {text}",
                                  hint="set RAVEL_HOME to a directory you can write")
        return StateDamaged(f"the state database {self.path} is damaged: {self.diagnose() or text}",
                            hint=REPAIR_HINT)

    def diagnose(self) -> str:
        """What SQLite's integrity check says is wrong, in one line; "" when nothing is."""
        problems = self.integrity()
        return problems[0] + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else "")

    def integrity(self, limit: int = 20) -> list[str]:
        """`PRAGMA integrity_check` on a connection of its own: [] when the database is sound."""
        if not self.path.exists():
            return []
        try:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=BUSY_S)
        except sqlite3.Error as exc:
            return [str(exc)]
        try:
            rows = [str(r[0]) for r in db.execute(f"PRAGMA integrity_check({int(limit)})")]
        except sqlite3.DatabaseError as exc:
            return [str(exc)]
        finally:
            db.close()
        return [] if rows == ["ok"] else rows

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # -- locks -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, app: str, action: str) -> Iterator[None]:
        path = self.dir / "locks" / f"{app}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StateError(f"app {app!r} is busy: {_holder(os.pread(fd, 4096, 0))}",
                                 hint="wait for it to finish, or stop it; the lock goes when it exits") from None
            left = _owner_doc(os.pread(fd, 4096, 0))
            if left is not None:  # emptied on every release: its holder died holding it
                why = owners.gone(left) or "it ended without releasing it"
                self.notice(f"app {app!r}: cleared the lock of a {left.get('action', 'command')} "
                            f"(pid {left.get('pid')} on {left.get('host')}): {why}")
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"action": action, "time": time.time(), **owners.me().doc()}).encode(), 0)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)

    # -- apps --------------------------------------------------------------------------------
    @_guarded
    def app(self, name: str) -> AppRecord | None:
        row = self.db.execute("SELECT name, provider, blueprint_path, blueprint_text, plan_json, status, created, updated "
                              "FROM apps WHERE name=?", (name,)).fetchone()
        if row is None:
            return None
        return AppRecord(row[0], row[1], row[2], row[3], json.loads(row[4]) if row[4] else None, *row[5:])

    @_guarded
    def require_app(self, name: str) -> AppRecord:
        rec = self.app(name)
        if rec is None:
            known = ", ".join(a.name for a in self.apps()) or "none"
            raise StateError(f"no app named {name!r} (apps: {known})")
        return rec

    @_guarded
    def apps(self) -> list[AppRecord]:
        names = [r[0] for r in self.db.execute("SELECT name FROM apps ORDER BY name")]
        return [a for a in (self.app(n) for n in names) if a is not None]

    @_guarded
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

    @_guarded
    def set_app_status(self, name: str, status: str) -> None:
        self.db.execute("UPDATE apps SET status=?, updated=? WHERE name=?", (status, time.time(), name))

    @_guarded
    def delete_app(self, name: str) -> None:
        with self.tx() as db:
            for table in ("vms", "networks", "hosts", "lifetimes", "nics"):
                db.execute(f"DELETE FROM {table} WHERE app=?", (name,))
            db.execute("DELETE FROM apps WHERE name=?", (name,))

    # -- lifetimes ---------------------------------------------------------------------------
    @_guarded
    def lifetime(self, app: str) -> LifetimeRecord | None:
        row = self.db.execute("SELECT app, expires, action, source, reaper_pid, reaper_start, note "
                              "FROM lifetimes WHERE app=?", (app,)).fetchone()
        return LifetimeRecord(*row) if row else None

    @_guarded
    def set_lifetime(self, app: str, expires: float, action: str, source: str) -> None:
        """Record (or move) the app's expiry; the reaper, if any, is kept and reads it again."""
        self.db.execute(
            "INSERT INTO lifetimes (app, expires, action, source) VALUES (?,?,?,?) ON CONFLICT(app) DO UPDATE "
            "SET expires=excluded.expires, action=excluded.action, source=excluded.source, note=NULL",
            (app, expires, action, source))

    @_guarded
    def set_reaper(self, app: str, pid: int | None, start: str | None) -> None:
        self.db.execute("UPDATE lifetimes SET reaper_pid=?, reaper_start=? WHERE app=?", (pid, start, app))

    @_guarded
    def note_lifetime(self, app: str, note: str | None) -> None:
        self.db.execute("UPDATE lifetimes SET note=? WHERE app=?", (note, app))

    # -- allocations -------------------------------------------------------------------------
    @_guarded
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

    @_guarded
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
    @_guarded
    def hosts(self, app: str) -> list[HostRecord]:
        rows = self.db.execute("SELECT app, name, host_id, type, ref, address, accel, status, extra FROM hosts "
                               "WHERE app=? ORDER BY host_id", (app,)).fetchall()
        return [HostRecord(*r[:8], json.loads(r[8])) for r in rows]

    @_guarded
    def update_host(self, app: str, name: str, **fields: Any) -> None:
        if "extra" in fields:
            fields["extra"] = json.dumps(fields["extra"])
        cols = ", ".join(f"{k}=?" for k in fields)
        self.db.execute(f"UPDATE hosts SET {cols} WHERE app=? AND name=?", (*fields.values(), app, name))

    @_guarded
    def note_host(self, app: str, name: str, key: str, value: Any) -> None:
        """Set one key of a host's extra in place (no read-modify-write that could undo what a
        concurrent publish wrote): observations that commands without the app's lock record."""
        self.db.execute("UPDATE hosts SET extra=json_set(extra, ?, json(?)) WHERE app=? AND name=?",
                        (f"$.{key}", json.dumps(value), app, name))

    @_guarded
    def delete_host(self, app: str, name: str) -> None:
        self.db.execute("DELETE FROM hosts WHERE app=? AND name=?", (app, name))

    # -- vms ---------------------------------------------------------------------------------
    @_guarded
    def vms(self, app: str) -> list[VmRecord]:
        rows = self.db.execute("SELECT app, name, host, state, detail FROM vms WHERE app=? ORDER BY rowid",
                               (app,)).fetchall()
        return [VmRecord(*r[:4], json.loads(r[4])) for r in rows]

    @_guarded
    def put_vm(self, app: str, name: str, host: str | None, state: str, detail: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT INTO vms (app, name, host, state, detail) VALUES (?,?,?,?,?) ON CONFLICT(app, name) "
            "DO UPDATE SET host=excluded.host, state=excluded.state, detail=excluded.detail",
            (app, name, host, state, json.dumps(detail)),
        )

    @_guarded
    def delete_vm(self, app: str, name: str) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM vms WHERE app=? AND name=?", (app, name))
            db.execute("DELETE FROM nics WHERE app=? AND vm=?", (app, name))  # a VM of that name later is new

    # -- NICs: what `ravel netem` and `ravel link` set, kept across publish and stop/start --------
    @_guarded
    def nic_settings(self, app: str) -> dict[str, dict[int, dict[str, Any]]]:
        """vm -> NIC index -> {"impair": {...} (set live; {} cleared) or None (the blueprint's),
        "link": "down" | "up"}."""
        out: dict[str, dict[int, dict[str, Any]]] = {}
        for vm, nic, impair, link in self.db.execute(
                "SELECT vm, nic, impair, link FROM nics WHERE app=? ORDER BY vm, nic", (app,)):
            out.setdefault(vm, {})[nic] = {"impair": json.loads(impair) if impair is not None else None,
                                           "link": link or "up"}
        return out

    @_guarded
    def set_nic(self, app: str, vm: str, nic: int, **fields: Any) -> None:
        """Set `impair` (a dict, or None: back to the blueprint's) and/or `link` of one NIC."""
        cols = {k: (json.dumps(v) if k == "impair" and v is not None else v) for k, v in fields.items()}
        with self.tx() as db:
            db.execute("INSERT OR IGNORE INTO nics (app, vm, nic) VALUES (?,?,?)", (app, vm, nic))
            for key, value in cols.items():
                db.execute(f"UPDATE nics SET {key}=? WHERE app=? AND vm=? AND nic=?", (value, app, vm, nic))
            db.execute("DELETE FROM nics WHERE app=? AND vm=? AND nic=? AND impair IS NULL "
                       "AND (link IS NULL OR link='up')", (app, vm, nic))

    # -- networks ----------------------------------------------------------------------------
    @_guarded
    def networks(self, app: str) -> dict[str, int]:
        return dict(self.db.execute("SELECT name, vni FROM networks WHERE app=? ORDER BY vni", (app,)).fetchall())

    # -- one app as a document (backups, repair) ---------------------------------------------
    @_guarded
    def export_app(self, name: str) -> dict[str, Any] | None:
        """Every row of app `name` as one JSON-ready document; None when the app is unknown."""
        doc: dict[str, Any] = {"version": EXPORT_VERSION}
        for table, cols in _TABLES.items():
            key = "name" if table == "apps" else "app"
            rows = self.db.execute(f"SELECT {', '.join(cols)} FROM {table} WHERE {key}=? ORDER BY rowid",
                                   (name,)).fetchall()
            doc[table] = [dict(zip(cols, r)) for r in rows]
        if not doc["apps"]:
            return None
        return doc

    @_guarded
    def import_app(self, doc: dict[str, Any]) -> str:
        """Put back an app exported by `export_app`, replacing whatever this state holds for it
        (host ids and VNIs as they were: they name devices and addresses that exist). Returns
        the app's name; StateError when the document is not one, or its ids are taken."""
        try:
            if doc.get("version") != EXPORT_VERSION or len(doc["apps"]) != 1:
                raise KeyError("version")
            name = str(doc["apps"][0]["name"])
            rows = {t: [tuple(r[c] for c in cols) for r in doc.get(t) or ()] for t, cols in _TABLES.items()}
        except (KeyError, TypeError, AttributeError):
            raise StateError("not an exported app (or one written by another version of ravel)") from None
        with self.tx() as db:
            for table in ("vms", "networks", "hosts", "lifetimes", "nics"):
                db.execute(f"DELETE FROM {table} WHERE app=?", (name,))
            db.execute("DELETE FROM apps WHERE name=?", (name,))
            try:
                for table, cols in _TABLES.items():
                    for row in rows[table]:
                        if row[cols.index("name") if table == "apps" else 0] != name:
                            raise StateError(f"app {name!r}: a {table} row belongs to another app")
                        db.execute(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                                   row)
            except sqlite3.IntegrityError as exc:
                raise StateError(f"app {name!r} cannot be put back: {exc} (another app holds the same "
                                 "host id or VNI)") from None
        return name
