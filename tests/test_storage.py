"""SQLite + files storage: atomic writes, one transaction per change, everything back after reopening."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

from server.storage import ACTIVE, GoalRecord, SessionRecord, StepRecord, Storage, atomic_write, new_id


def goal_record(**changes) -> GoalRecord:
    fields = dict(id=new_id(), created_at=time.time(), name="g", image_format="png", width=64, height=48,
                  size_bytes=4, sha256="0" * 64, metadata={"k": [1, 2]})
    fields.update(changes)
    return GoalRecord(**fields)


def test_atomic_write_replaces_whole_files_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "sub" / "file.bin"
    atomic_write(target, b"old")
    atomic_write(target, b"new contents")
    assert target.read_bytes() == b"new contents"
    assert os.listdir(target.parent) == ["file.bin"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "file.bin"
    atomic_write(target, b"old")

    def broken_replace(*_):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["file.bin"]


def test_everything_survives_reopening(tmp_path):
    storage = Storage(tmp_path)
    goal = storage.add_goal(goal_record(), b"\x89PNG")
    latent = np.random.default_rng(0).standard_normal((9, 96)).astype(np.float32)
    storage.save_latent(goal.id, "model-a", latent)
    session = storage.add_session(SessionRecord(id=new_id(), robot_id="r", goal_ids=[goal.id], planner={"samples": 8},
                                                status=ACTIVE, created_at=time.time(), schedule={"subgoal_max_steps": 3}))
    step = StepRecord(session_id=session.id, step=1, seq=7, source="http", received_at=time.time(), goal_index=0,
                      action=[0.01, 0, 0, 0, 0, 0, 1], energy=0.5, plan_ms=12.0, total_ms=13.0)
    storage.record_step(step)
    storage.close()

    reopened = Storage(tmp_path)
    assert reopened.get_goal(goal.id) == goal
    assert reopened.goal_image_path(goal).read_bytes() == b"\x89PNG"
    assert np.array_equal(reopened.load_latent(goal.id, "model-a"), latent)
    assert reopened.load_latent(goal.id, "another-model") is None
    restored = reopened.get_session(session.id)
    assert (restored.steps, restored.last_seq, restored.last_energy, restored.last_action) == (1, 7, 0.5, step.action)
    assert restored.schedule == {"subgoal_max_steps": 3} and restored.planner == {"samples": 8}
    assert reopened.list_steps(session.id) == [step]
    assert reopened.sessions_using_goal(goal.id) == [session.id]


def test_a_data_directory_written_before_steps_recorded_holds_opens_and_reads_its_old_steps(tmp_path):
    """A database whose steps table predates the `held` column: it is added (old steps read as not held), and the
    schedule position of an old session is still known."""
    import sqlite3

    from server.storage import DB_NAME, SCHEMA

    old_schema = SCHEMA.replace("    held INTEGER NOT NULL DEFAULT 0,\n", "")
    assert old_schema != SCHEMA
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        db.executescript(old_schema)
        db.execute("INSERT INTO sessions (id, robot_id, goal_ids, planner, schedule, status, created_at, steps, goal_index)"
                   " VALUES ('s', 'r', '[]', '{}', '{}', 'active', 0, 2, 1)")
        for step, goal_index in ((1, 0), (2, 1)):
            db.execute("INSERT INTO steps VALUES ('s', ?, NULL, 'http', 0, ?, '[0,0,0,0,0,0,0]', 1.0, 1.0, 1.0)",
                       (step, goal_index))
    storage = Storage(tmp_path)
    try:
        assert [(step.step, step.held) for step in storage.list_steps("s")] == [(1, False), (2, False)]
        assert storage.schedule_position("s") == (1, 1, False)
        storage.record_step(StepRecord(session_id="s", step=3, seq=None, source="http", received_at=0.0, goal_index=1,
                                       action=[0.0] * 7, energy=0.0, plan_ms=1.0, total_ms=1.0, held=True))
        assert storage.schedule_position("s") == (1, 2, True)
        assert storage.schedule_position("no-such-session") is None
    finally:
        storage.close()


def test_failed_step_insert_rolls_back_the_session_summary(tmp_path):
    storage = Storage(tmp_path)
    session = storage.add_session(SessionRecord(id=new_id(), robot_id="r", goal_ids=[], planner={}, status=ACTIVE,
                                                created_at=time.time()))
    step = StepRecord(session_id=session.id, step=1, seq=None, source="http", received_at=time.time(), goal_index=0,
                      action=[0.0] * 7, energy=1.0, plan_ms=1.0, total_ms=1.0)
    storage.record_step(step)
    with pytest.raises(Exception):
        storage.record_step(step)  # same (session, step) again: primary key violation
    assert storage.get_session(session.id).steps == 1 and len(storage.list_steps(session.id)) == 1


def test_delete_goal_removes_row_image_and_latents(tmp_path):
    storage = Storage(tmp_path)
    goal = storage.add_goal(goal_record(), b"img")
    storage.save_latent(goal.id, "m", np.zeros((2, 2), np.float32))
    assert storage.delete_goal(goal.id) is True
    assert storage.get_goal(goal.id) is None and storage.delete_goal(goal.id) is False
    assert not any((tmp_path / "goals").iterdir()) and not any((tmp_path / "latents").iterdir())


def test_stop_and_filtered_listing(tmp_path):
    storage = Storage(tmp_path)
    ids = [storage.add_session(SessionRecord(id=new_id(), robot_id=f"r{i % 2}", goal_ids=[], planner={},
                                             status=ACTIVE, created_at=time.time() + i)).id for i in range(4)]
    storage.stop_session(ids[0])
    assert [s.id for s in storage.list_sessions(status="stopped")] == [ids[0]]
    assert [s.id for s in storage.list_sessions(status=ACTIVE, robot_id="r0")] == [ids[2]]
    assert [s.id for s in storage.list_sessions(limit=2, offset=1)] == ids[1:3]
