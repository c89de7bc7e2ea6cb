"""Durable state in the data directory: SQLite for records, plain files for images and latents.

Layout:  <data_dir>/jepa.sqlite3, goals/<goal_id>.<ext>, latents/<goal_id>.<model_key>.npy

Files are written atomically (temporary file, fsync, rename, fsync of the folder) before the row
that points at them is committed, so a crash leaves at worst an orphan file, never a row without
its file; orphans and stray temporary files are swept when storage opens. A goal's files and row
are all-or-nothing: when any part fails (a full disk, say) every part already written is removed.
SQLite runs in WAL mode; every change is one transaction. A full disk is `StorageFull` (507).
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import shutil
import sqlite3
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import StorageFull, StorageUnusable

log = logging.getLogger(__name__)

DB_NAME = "jepa.sqlite3"
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_SQLITE_FULL = 13
GOAL_COLUMNS = ("id", "created_at", "name", "image_format", "width", "height", "size_bytes", "sha256", "metadata")
_MIN_FREE_BYTES = 1024 * 1024  # below this /readyz reports the data directory as full

SCHEMA = """
CREATE TABLE IF NOT EXISTS goals (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    name TEXT,
    image_format TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    size_bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    metadata TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    robot_id TEXT NOT NULL,
    goal_ids TEXT NOT NULL,
    planner TEXT NOT NULL,
    schedule TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    stopped_at REAL,
    steps INTEGER NOT NULL DEFAULT 0,
    goal_index INTEGER NOT NULL DEFAULT 0,
    last_seq INTEGER,
    last_energy REAL,
    last_action TEXT,
    last_plan_ms REAL
);
CREATE INDEX IF NOT EXISTS sessions_by_robot ON sessions (robot_id, status);
CREATE TABLE IF NOT EXISTS steps (
    session_id TEXT NOT NULL REFERENCES sessions (id),
    step INTEGER NOT NULL,
    seq INTEGER,
    source TEXT NOT NULL,
    received_at REAL NOT NULL,
    goal_index INTEGER NOT NULL,
    action TEXT NOT NULL,
    energy REAL NOT NULL,
    plan_ms REAL NOT NULL,
    total_ms REAL NOT NULL,
    held INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (session_id, step)
);
"""

ACTIVE, STOPPED = "active", "stopped"


@dataclass(frozen=True)
class GoalRecord:
    id: str
    created_at: float
    name: str | None
    image_format: str  # lower-case file extension: png, jpeg, webp, bmp
    width: int
    height: int
    size_bytes: int
    sha256: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SessionRecord:
    id: str
    robot_id: str
    goal_ids: list[str]
    planner: dict[str, Any]
    status: str
    created_at: float
    schedule: dict[str, Any] = field(default_factory=dict)  # when to move to the next sub-goal
    stopped_at: float | None = None
    steps: int = 0
    goal_index: int = 0
    last_seq: int | None = None
    last_energy: float | None = None
    last_action: list[float] | None = None
    last_plan_ms: float | None = None


@dataclass(frozen=True)
class StepRecord:
    session_id: str
    step: int
    seq: int | None
    source: str  # "http" or "bridge"
    received_at: float
    goal_index: int
    action: list[float]
    energy: float
    plan_ms: float
    total_ms: float
    held: bool = False  # holding at the final goal: nothing was planned (planner.config arrival_energy)


def new_id() -> str:
    return uuid.uuid4().hex


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that readers see the old or the new file, never a torn one."""
    temp = _write_temp(path, data)
    try:
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _write_temp(path: Path, data: bytes) -> Path:
    """`data` in a fsynced temporary file beside `path` (a dot name the orphan sweep knows)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as temp:
            temp.write(data)
            temp.flush()
            os.fsync(temp.fileno())
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return Path(temp_name)


def is_disk_full(error: BaseException) -> bool:
    if isinstance(error, OSError) and error.errno in _FULL_ERRNOS:
        return True
    return isinstance(error, sqlite3.OperationalError) and getattr(error, "sqlite_errorcode", None) == _SQLITE_FULL


def _array_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _fsync_directory(folder: Path) -> None:
    # The rename is durable only once the folder entry is; not every platform can open folders.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Storage:
    """Thread-safe: the event loop, the model worker and the bridge thread share one instance."""

    def __init__(self, data_dir: Path):
        """Raises StorageUnusable (naming the file and what to do) when the folder or the database
        cannot be opened and read: a corrupt or unreadable file, or a damaged goals table."""
        self.data_dir = Path(data_dir)
        self.goals_dir = self.data_dir / "goals"
        self.latents_dir = self.data_dir / "latents"
        self.db_path = self.data_dir / DB_NAME
        self._lock = threading.Lock()
        self._reported_rows: set[str] = set()  # goal ids whose unreadable row was logged already
        try:
            for folder in (self.data_dir, self.goals_dir, self.latents_dir):
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StorageUnusable(f"cannot create the data directory {self.data_dir}: {error.strerror}; "
                                  "point JEPA_DATA_DIR (--data-dir) at a writable folder") from None
        try:
            self._db = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a committed step survives a process crash; only an OS crash or power
            # loss may drop the last few, which is the right trade for a per-step history.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(SCHEMA)
            self._add_missing_columns()
            problem = self._database_problem()
        except sqlite3.DatabaseError as error:
            problem = str(error)
        if problem is not None:
            with contextlib.suppress(Exception):
                self._db.close()
            raise StorageUnusable.for_database(self.data_dir, problem)
        self._sweep_orphans()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _transaction(self) -> "_Transaction":
        return _Transaction(self._db, self._lock)

    def _query(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def _add_missing_columns(self) -> None:
        """Columns added since a data directory was first written (CREATE TABLE IF NOT EXISTS keeps old tables)."""
        columns = {row["name"] for row in self._db.execute("PRAGMA table_info(steps)")}
        if "held" not in columns:
            self._db.execute("ALTER TABLE steps ADD COLUMN held INTEGER NOT NULL DEFAULT 0")

    # health
    def _database_problem(self) -> str | None:
        """None when the goals table has its columns and every page of it reads back."""
        with self._lock:
            columns = {row["name"] for row in self._db.execute("PRAGMA table_info(goals)")}
            missing = [name for name in GOAL_COLUMNS if name not in columns]
            if missing:
                return f"the goals table lacks {', '.join(missing)}"
            # Reads every row of the (small) goals table, so a damaged page shows up here.
            self._db.execute("SELECT count(*), sum(length(metadata)) FROM goals").fetchone()
        return None

    def health_problem(self) -> str | None:
        """Why storage cannot serve now (for /readyz), or None when the database reads and the data
        directory takes writes."""
        try:
            problem = self._database_problem()
        except sqlite3.Error as error:
            problem = f"the database {self.db_path} cannot be read: {error}"
        if problem is not None:
            return problem
        for folder in (self.goals_dir, self.latents_dir):
            try:
                _write_temp(folder / "readyz-probe", b"").unlink()
            except OSError as error:
                return f"the data directory {folder} does not take writes: {error.strerror or error}"
        free = shutil.disk_usage(self.data_dir).free
        if free < _MIN_FREE_BYTES:
            return f"the data directory {self.data_dir} is full ({free} bytes free)"
        return None

    def _sweep_orphans(self) -> None:
        """Remove files no goal row owns: leftovers of a crash between writing and committing, and
        temporary files of interrupted writes."""
        with self._lock:
            known = {row["id"] for row in self._db.execute("SELECT id FROM goals")}
        for folder in (self.goals_dir, self.latents_dir):
            for path in folder.iterdir():
                if path.name.startswith(".") or path.name.split(".", 1)[0] not in known:
                    path.unlink(missing_ok=True)
                    log.info("removed %s: no goal owns it (left by an interrupted upload)", path)

    # goals
    def goal_image_path(self, goal: GoalRecord) -> Path:
        return self.goals_dir / f"{goal.id}.{goal.image_format}"

    def add_goal(self, goal: GoalRecord, image_bytes: bytes, latents: dict[str, np.ndarray] | None = None) -> GoalRecord:
        """Store the image, its latents (model key -> array) and the row, all or nothing: every file
        is written to a temporary name first (where a full disk shows up), then renamed, then the
        row is committed; any failure removes what was written. StorageFull when the disk is full."""
        files = {self.goal_image_path(goal): image_bytes}
        files.update({self._latent_path(goal.id, key): _array_bytes(array) for key, array in (latents or {}).items()})
        temps: dict[Path, Path] = {}
        try:
            try:
                for path, data in files.items():
                    temps[path] = _write_temp(path, data)
                for path, temp in temps.items():
                    os.replace(temp, path)
                _fsync_directory(self.goals_dir)
                _fsync_directory(self.latents_dir)
                with self._transaction() as db:
                    db.execute(
                        "INSERT INTO goals VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (goal.id, goal.created_at, goal.name, goal.image_format, goal.width, goal.height,
                         goal.size_bytes, goal.sha256, json.dumps(goal.metadata)),
                    )
            except BaseException:
                for path, temp in temps.items():
                    temp.unlink(missing_ok=True)
                    path.unlink(missing_ok=True)
                raise
        except (OSError, sqlite3.OperationalError) as error:
            if is_disk_full(error):
                raise self._full(error) from error
            raise
        return goal

    def _full(self, error: BaseException) -> StorageFull:
        return StorageFull(f"the data directory {self.data_dir} is full ({error}); nothing was stored. Free some "
                           "space (or move JEPA_DATA_DIR to a larger disk) and retry")

    def get_goal(self, goal_id: str) -> GoalRecord | None:
        """The goal, or None. A row whose metadata cannot be read comes back with empty metadata
        (logged once), so the goal can still be looked at and deleted."""
        rows = self._query("SELECT * FROM goals WHERE id = ?", (goal_id,))
        if not rows:
            return None
        try:
            return _goal_from_row(rows[0])
        except (ValueError, TypeError, RecursionError) as error:
            self.report_bad_goal(goal_id, f"unreadable row: {type(error).__name__}")
            return _goal_from_row(rows[0], metadata={})

    def list_goals(self, limit: int = 100, offset: int = 0) -> list[GoalRecord]:
        """A page of goals; a row that cannot be read back is skipped (and logged once)."""
        rows = self._query("SELECT * FROM goals ORDER BY created_at, id LIMIT ? OFFSET ?", (limit, offset))
        goals = []
        for row in rows:
            try:
                goals.append(_goal_from_row(row))
            except (ValueError, TypeError, RecursionError) as error:
                self.report_bad_goal(str(row["id"]), f"unreadable row: {type(error).__name__}")
        return goals

    def report_bad_goal(self, goal_id: str, why: str) -> None:
        """Log a goal left out of listings, once per goal and process."""
        if goal_id not in self._reported_rows:
            self._reported_rows.add(goal_id)
            log.warning("goal %s is left out of listings (%s); delete it with DELETE /v1/goals/%s", goal_id, why, goal_id)

    def delete_goal(self, goal_id: str) -> bool:
        goal = self.get_goal(goal_id)
        if goal is None:
            return False
        with self._transaction() as db:
            db.execute("DELETE FROM goals WHERE id = ?", (goal_id,))
        # Files go after the row: a crash in between leaves orphans, never a dangling row.
        self.goal_image_path(goal).unlink(missing_ok=True)
        for latent in self.latents_dir.glob(f"{goal_id}.*.npy"):
            latent.unlink(missing_ok=True)
        return True

    def _latent_path(self, goal_id: str, model_key: str) -> Path:
        return self.latents_dir / f"{goal_id}.{model_key}.npy"

    def save_latent(self, goal_id: str, model_key: str, latent: np.ndarray) -> None:
        try:
            atomic_write(self._latent_path(goal_id, model_key), _array_bytes(latent))
        except OSError as error:
            if is_disk_full(error):
                raise self._full(error) from error
            raise

    def load_latent(self, goal_id: str, model_key: str) -> np.ndarray | None:
        """The cached latent, or None when there is none or it cannot be read (a truncated or
        corrupt file is removed, so the caller re-encodes it from the goal image)."""
        path = self._latent_path(goal_id, model_key)
        try:
            return np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError) as error:
            log.warning("latent cache %s is unreadable (%s); re-encoding it from the goal image", path, error)
            path.unlink(missing_ok=True)
            return None

    def discard_latent(self, goal_id: str, model_key: str) -> None:
        """Forget a cached latent the model cannot use (e.g. a wrong shape), so it is encoded again."""
        self._latent_path(goal_id, model_key).unlink(missing_ok=True)

    # sessions
    def add_session(self, session: SessionRecord) -> SessionRecord:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO sessions (id, robot_id, goal_ids, planner, schedule, status, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (session.id, session.robot_id, json.dumps(session.goal_ids), json.dumps(session.planner),
                 json.dumps(session.schedule), session.status, session.created_at),
            )
        return session

    def get_session(self, session_id: str) -> SessionRecord | None:
        rows = self._query("SELECT * FROM sessions WHERE id = ?", (session_id,))
        return _session_from_row(rows[0]) if rows else None

    def list_sessions(self, status: str | None = None, robot_id: str | None = None,
                      limit: int = 100, offset: int = 0) -> list[SessionRecord]:
        clauses, params = [], []
        if status is not None:
            clauses.append("status = ?")
            params.append(status)
        if robot_id is not None:
            clauses.append("robot_id = ?")
            params.append(robot_id)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._query(f"SELECT * FROM sessions {where} ORDER BY created_at, id LIMIT ? OFFSET ?",
                           (*params, limit, offset))
        return [_session_from_row(row) for row in rows]

    def sessions_using_goal(self, goal_id: str, status: str = ACTIVE) -> list[str]:
        rows = self._query("SELECT id, goal_ids FROM sessions WHERE status = ?", (status,))
        return [row["id"] for row in rows if goal_id in json.loads(row["goal_ids"])]

    def stop_session(self, session_id: str) -> SessionRecord | None:
        with self._transaction() as db:
            db.execute("UPDATE sessions SET status = ?, stopped_at = ? WHERE id = ? AND status = ?",
                       (STOPPED, time.time(), session_id, ACTIVE))
        return self.get_session(session_id)

    def record_step(self, step: StepRecord) -> None:
        """Append one step and update the session's summary in the same transaction."""
        action = json.dumps(step.action)
        with self._transaction() as db:
            db.execute(
                "INSERT INTO steps (session_id, step, seq, source, received_at, goal_index, action, energy, plan_ms,"
                " total_ms, held) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (step.session_id, step.step, step.seq, step.source, step.received_at, step.goal_index,
                 action, step.energy, step.plan_ms, step.total_ms, int(step.held)),
            )
            db.execute(
                "UPDATE sessions SET steps = ?, goal_index = ?, last_seq = COALESCE(?, last_seq),"
                " last_energy = ?, last_action = ?, last_plan_ms = ? WHERE id = ?",
                (step.step, step.goal_index, step.seq, step.energy, action, step.plan_ms, step.session_id),
            )

    def list_steps(self, session_id: str, limit: int = 100, offset: int = 0) -> list[StepRecord]:
        rows = self._query("SELECT * FROM steps WHERE session_id = ? ORDER BY step LIMIT ? OFFSET ?",
                           (session_id, limit, offset))
        return [_step_from_row(row) for row in rows]

    def schedule_position(self, session_id: str) -> tuple[int, int, bool] | None:
        """Where a session's goal schedule stood after its last recorded step: (sub-goal index, steps spent on
        it, whether that step held at the final goal); None before its first step. Sub-goals only move
        forward, so the steps spent on the last one are all the steps recorded with its index."""
        rows = self._query("SELECT goal_index, held FROM steps WHERE session_id = ? ORDER BY step DESC LIMIT 1",
                           (session_id,))
        if not rows:
            return None
        goal_index, held = rows[0]["goal_index"], bool(rows[0]["held"])
        (count,) = self._query("SELECT count(*) FROM steps WHERE session_id = ? AND goal_index = ?",
                               (session_id, goal_index))[0]
        return goal_index, count, held


class _Transaction:
    """`with` block holding the storage lock around BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error)."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock):
        self._db, self._lock = db, lock

    def __enter__(self) -> sqlite3.Connection:
        self._lock.acquire()
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._lock.release()
            raise
        return self._db

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                try:
                    self._db.execute("COMMIT")
                    return
                except sqlite3.OperationalError as error:
                    exc = error
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
        finally:
            self._lock.release()
        if exc is not None and is_disk_full(exc):
            raise StorageFull("the data directory's disk is full; nothing was stored. Free some space and retry") from exc
        if exc_type is None and exc is not None:
            raise exc


def _goal_from_row(row: sqlite3.Row, metadata: dict[str, Any] | None = None) -> GoalRecord:
    return GoalRecord(
        id=row["id"], created_at=row["created_at"], name=row["name"], image_format=row["image_format"],
        width=row["width"], height=row["height"], size_bytes=row["size_bytes"], sha256=row["sha256"],
        metadata=json.loads(row["metadata"]) if metadata is None else metadata,
    )


def _session_from_row(row: sqlite3.Row) -> SessionRecord:
    return SessionRecord(
        id=row["id"], robot_id=row["robot_id"], goal_ids=json.loads(row["goal_ids"]),
        planner=json.loads(row["planner"]), schedule=json.loads(row["schedule"]), status=row["status"], created_at=row["created_at"],
        stopped_at=row["stopped_at"], steps=row["steps"], goal_index=row["goal_index"], last_seq=row["last_seq"],
        last_energy=row["last_energy"],
        last_action=json.loads(row["last_action"]) if row["last_action"] else None,
        last_plan_ms=row["last_plan_ms"],
    )


def _step_from_row(row: sqlite3.Row) -> StepRecord:
    return StepRecord(
        session_id=row["session_id"], step=row["step"], seq=row["seq"], source=row["source"],
        received_at=row["received_at"], goal_index=row["goal_index"], action=json.loads(row["action"]),
        energy=row["energy"], plan_ms=row["plan_ms"], total_ms=row["total_ms"], held=bool(row["held"]),
    )
