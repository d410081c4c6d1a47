"""The atlas database: one SQLite file (stdlib sqlite3) of measured rows keyed by machine, model, form, batch, size
and threads, so that a run resumes where it stopped and atlases from several machines merge into one file.

Tables: `schema` (the version), `machines` (one per fingerprint: CPU model, ISA flags, cores, torch version, first
seen) and `rows` (one per measurement; see `COLUMNS`). Every row is committed with the rest of its model's rows in
one transaction, so a killed run loses at most the model in flight. A file is checked (its schema version, its
tables) before anything is read from it, and every row read is checked before a report or query uses it.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
STATUSES = ("ok", "failed", "timeout")
KEY = ("machine", "model", "form", "batch", "size", "threads")
# (column, SQL type) of `rows`, the key first
COLUMNS = (("machine", "TEXT NOT NULL"), ("model", "TEXT NOT NULL"), ("form", "TEXT NOT NULL"),
           ("batch", "INTEGER NOT NULL"), ("size", "INTEGER NOT NULL"), ("threads", "INTEGER NOT NULL"),
           ("width", "INTEGER NOT NULL"), ("card_size", "INTEGER NOT NULL"), ("family", "TEXT NOT NULL"),
           ("status", "TEXT NOT NULL"), ("reason", "TEXT NOT NULL"), ("form_detail", "TEXT NOT NULL"),
           ("median_ms", "REAL"), ("p10_ms", "REAL"), ("p90_ms", "REAL"), ("n", "INTEGER"), ("params", "INTEGER"),
           ("macs", "INTEGER"), ("activations", "INTEGER"), ("bytes", "INTEGER"), ("efficiency", "REAL"),
           ("peak_mib", "REAL"), ("build_s", "REAL"), ("compile_s", "REAL"), ("top1", "REAL"),
           ("groups", "TEXT NOT NULL"), ("created", "REAL NOT NULL"))
COLUMN_NAMES = tuple(c for c, _ in COLUMNS)
MACHINE_COLUMNS = ("id", "cpu_model", "isa", "cores", "torch_version", "first_seen")
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS machines (id TEXT PRIMARY KEY, cpu_model TEXT NOT NULL, isa TEXT NOT NULL,
    cores INTEGER NOT NULL, torch_version TEXT NOT NULL, first_seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS rows ({', '.join(f'{c} {t}' for c, t in COLUMNS)},
    PRIMARY KEY ({', '.join(KEY)}), FOREIGN KEY (machine) REFERENCES machines (id));
"""


def default_path() -> Path:
    """Where the atlas lives unless `--db` says otherwise: the convscope cache directory's atlas.db
    ($CONVSCOPE_CACHE_DIR, else $XDG_CACHE_HOME/convscope, else ~/.cache/convscope)."""
    from ...analysis.hardware import cache_dir

    return cache_dir() / "atlas.db"


def this_machine() -> dict[str, Any]:
    """This machine's fingerprint fields and its id (a hash of CPU model, ISA flags and torch's kernel level,
    physical cores and torch version): rows measured here carry the id."""
    import torch

    from ...analysis.hardware import machine_info
    from ...deploy.machine import cpu_isa

    info, isa = machine_info("cpu"), cpu_isa()
    m = dict(cpu_model=info["cpu_model"], isa=" ".join([isa["capability"], *sorted(isa["flags"])]),
             cores=int(info["physical_cores"]), torch_version=torch.__version__)
    ident = "|".join(str(m[k]) for k in ("cpu_model", "isa", "cores", "torch_version"))
    return dict(id=hashlib.sha256(ident.encode()).hexdigest()[:16], **m, first_seen=time.time())


def _check_file(con: sqlite3.Connection, path: Path) -> None:
    """ValueError unless the open file is an atlas of this schema version (an empty file becomes one)."""
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError:
        raise ValueError(f"{path} is not an atlas database (not an SQLite file)") from None
    if not tables:
        con.executescript(_SCHEMA)
        con.execute("INSERT INTO schema (version) VALUES (?)", (SCHEMA_VERSION,))
        con.commit()
        return
    if not {"schema", "machines", "rows"} <= tables:
        raise ValueError(f"{path} is not an atlas database (expected tables schema, machines, rows; has "
                         f"{', '.join(sorted(tables))})")
    version = [r[0] for r in con.execute("SELECT version FROM schema")]
    if version != [SCHEMA_VERSION]:
        raise ValueError(f"{path} is an atlas database of schema version {version}; this convscope reads version "
                         f"{SCHEMA_VERSION}")
    have = [r[1] for r in con.execute("PRAGMA table_info(rows)")]
    if have != list(COLUMN_NAMES):
        raise ValueError(f"{path} has an atlas rows table with other columns than version {SCHEMA_VERSION}'s")


def open_db(path: str | os.PathLike, *, create: bool = True) -> sqlite3.Connection:
    """The atlas at `path`, checked (created when missing and `create`); ValueError for a file that is not one."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"--db {p} is a directory; expected an atlas database file")
    if not p.exists() and not create:
        raise ValueError(f"no atlas database at {p}")
    p.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(p)
    try:
        _check_file(con, p)
    except BaseException:
        con.close()
        raise
    return con


def add_machine(con: sqlite3.Connection, machine: dict[str, Any]) -> None:
    """Record `machine` (a `this_machine()` dict) unless its id is there already (its first sighting is kept)."""
    con.execute(f"INSERT OR IGNORE INTO machines VALUES ({', '.join('?' * len(MACHINE_COLUMNS))})",
                [machine[k] for k in MACHINE_COLUMNS])


def put_rows(con: sqlite3.Connection, rows: Iterable[dict[str, Any]]) -> None:
    """Write `rows` (replacing those with the same key) and commit them together."""
    with con:
        con.executemany(f"INSERT OR REPLACE INTO rows VALUES ({', '.join('?' * len(COLUMNS))})",
                        [[_stored(r, c) for c in COLUMN_NAMES] for r in rows])


def _stored(row: dict[str, Any], column: str) -> Any:
    v = row.get(column)
    if column == "groups":
        return json.dumps(v or {}, allow_nan=False)
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


#: the reason of a row whose model ran out of its time cap; `existing_keys` reads the cap back from it
TIMEOUT_REASON = "time cap {:g} s reached"
_TIMEOUT = re.compile(r"time cap ([0-9.e+-]+) s reached")


def existing_keys(con: sqlite3.Connection, machine: str, time_cap_s: float | None = None) -> set[tuple]:
    """(model, form, batch, size, threads) of every row of `machine`, less the rows that timed out under a cap
    smaller than `time_cap_s`: a run given more time measures those again."""
    keys = set()
    for *key, status, reason in con.execute("SELECT model, form, batch, size, threads, status, reason FROM rows "
                                            "WHERE machine = ?", (machine,)):
        m = _TIMEOUT.fullmatch(reason or "") if status == "timeout" else None
        if m is None or time_cap_s is None or float(m.group(1)) >= time_cap_s:
            keys.add(tuple(key))
    return keys


def _checked(row: dict[str, Any], where: str) -> dict[str, Any]:
    """`row` with its groups decoded; ValueError naming the row when a value is not what the schema says."""
    name = f"{where}: row {row['model']}/{row['form']}/batch {row['batch']}"
    if row["status"] not in STATUSES:
        raise ValueError(f"{name} has status {row['status']!r}; expected one of {', '.join(STATUSES)}")
    for k in ("batch", "size", "width", "threads"):
        if not isinstance(row[k], int) or row[k] < 1:
            raise ValueError(f"{name} has {k} {row[k]!r}; expected a positive integer")
    ms = row["median_ms"]
    if row["status"] == "ok" and not (isinstance(ms, (int, float)) and math.isfinite(ms) and ms > 0):
        raise ValueError(f"{name} is ok with median_ms {ms!r}; expected a positive number")
    try:
        groups = json.loads(row["groups"])
    except (TypeError, ValueError):
        groups = None
    if not isinstance(groups, dict) or not all(isinstance(v, dict) for v in groups.values()):
        raise ValueError(f"{name} has groups {str(row['groups'])[:60]!r}; expected a JSON object of objects")
    return dict(row, groups=groups)


def read_rows(con: sqlite3.Connection, where: str = "atlas", *, machine: str | None = None) -> list[dict[str, Any]]:
    """Every row (of `machine`, when given), checked, groups decoded, in key order."""
    sql = f"SELECT {', '.join(COLUMN_NAMES)} FROM rows" + (" WHERE machine = ?" if machine else "")
    cur = con.execute(sql + f" ORDER BY {', '.join(KEY)}", (machine,) if machine else ())
    return [_checked(dict(zip(COLUMN_NAMES, r, strict=True)), where) for r in cur]


def read_machines(con: sqlite3.Connection, where: str = "atlas") -> list[dict[str, Any]]:
    """Every machine, checked, in order of first sighting."""
    cur = con.execute(f"SELECT {', '.join(MACHINE_COLUMNS)} FROM machines ORDER BY first_seen, id")
    machines = [dict(zip(MACHINE_COLUMNS, r, strict=True)) for r in cur]
    for m in machines:
        if not (all(isinstance(m[k], str) and m[k] for k in ("id", "cpu_model", "torch_version"))
                and isinstance(m["isa"], str) and isinstance(m["cores"], int) and m["cores"] >= 1
                and isinstance(m["first_seen"], (int, float))):
            raise ValueError(f"{where}: machine {str(m['id'])[:20]!r} is not a machine record (id, CPU model, ISA "
                             "flags, cores >= 1, torch version, first seen)")
    return machines


def merge(sources: Sequence[str | os.PathLike], out: str | os.PathLike) -> dict[str, int]:
    """Merge the atlases `sources` into a new file `out` (written atomically): every machine and every row; where
    two sources hold the same key, the newer measurement wins. Returns {'machines': n, 'rows': n}."""
    from ...files import atomic_path

    cons = [open_db(s, create=False) for s in sources]
    try:
        parts = [(read_machines(c, str(s)), read_rows(c, str(s))) for c, s in zip(cons, sources, strict=True)]
    finally:
        for c in cons:
            c.close()
    rows: dict[tuple, dict[str, Any]] = {}
    for _, rs in parts:
        for r in rs:
            key = tuple(r[k] for k in KEY)
            if key not in rows or r["created"] > rows[key]["created"]:
                rows[key] = r
    with atomic_path(out) as tmp:
        con = open_db(tmp)
        try:
            with con:
                for machines, _ in parts:
                    for m in machines:
                        add_machine(con, m)
            put_rows(con, rows.values())
            n = dict(machines=len(read_machines(con)), rows=len(rows))
        finally:
            con.close()
    return n
