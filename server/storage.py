"""Durable state in the data directory: SQLite for records, plain files for images and latents.

Layout:  <data_dir>/jepa.sqlite3, goals/<goal_id>.<ext>, latents/<goal_id>.<model_key>.npy

Files are written atomically (temporary file, fsync, rename, fsync of the folder) before the row
that points at them is committed, so a crash leaves at worst an orphan file, never a row without
its file. SQLite runs in WAL mode; every change is one transaction.
"""
from __future__ import annotations

import io
import json
import os
import sqlite3
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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


def new_id() -> str:
    return uuid.uuid4().hex


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that readers see the old or the new file, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as temp:
            temp.write(data)
            temp.flush()
            os.fsync(temp.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


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
        self.data_dir = Path(data_dir)
        self.goals_dir = self.data_dir / "goals"
        self.latents_dir = self.data_dir / "latents"
        for folder in (self.data_dir, self.goals_dir, self.latents_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.data_dir / "jepa.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a committed step survives a process crash; only an OS crash or power
        # loss may drop the last few, which is the right trade for a per-step history.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _transaction(self) -> "_Transaction":
        return _Transaction(self._db, self._lock)

    def _query(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # goals
    def goal_image_path(self, goal: GoalRecord) -> Path:
        return self.goals_dir / f"{goal.id}.{goal.image_format}"

    def add_goal(self, goal: GoalRecord, image_bytes: bytes) -> GoalRecord:
        path = self.goal_image_path(goal)
        atomic_write(path, image_bytes)
        try:
            with self._transaction() as db:
                db.execute(
                    "INSERT INTO goals VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (goal.id, goal.created_at, goal.name, goal.image_format, goal.width, goal.height,
                     goal.size_bytes, goal.sha256, json.dumps(goal.metadata)),
                )
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return goal

    def get_goal(self, goal_id: str) -> GoalRecord | None:
        rows = self._query("SELECT * FROM goals WHERE id = ?", (goal_id,))
        return _goal_from_row(rows[0]) if rows else None

    def list_goals(self, limit: int = 100, offset: int = 0) -> list[GoalRecord]:
        rows = self._query("SELECT * FROM goals ORDER BY created_at, id LIMIT ? OFFSET ?", (limit, offset))
        return [_goal_from_row(row) for row in rows]

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
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(latent), allow_pickle=False)
        atomic_write(self._latent_path(goal_id, model_key), buffer.getvalue())

    def load_latent(self, goal_id: str, model_key: str) -> np.ndarray | None:
        path = self._latent_path(goal_id, model_key)
        if not path.is_file():
            return None
        return np.load(path, allow_pickle=False)

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
                "INSERT INTO steps VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (step.session_id, step.step, step.seq, step.source, step.received_at, step.goal_index,
                 action, step.energy, step.plan_ms, step.total_ms),
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
            self._db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self._lock.release()


def _goal_from_row(row: sqlite3.Row) -> GoalRecord:
    return GoalRecord(
        id=row["id"], created_at=row["created_at"], name=row["name"], image_format=row["image_format"],
        width=row["width"], height=row["height"], size_bytes=row["size_bytes"], sha256=row["sha256"],
        metadata=json.loads(row["metadata"]),
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
        energy=row["energy"], plan_ms=row["plan_ms"], total_ms=row["total_ms"],
    )
