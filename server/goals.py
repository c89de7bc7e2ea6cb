"""The goal library: validated goal images, stored once, with their latents encoded once and cached.

A goal is stored whole or not at all (image, latent and row). A cached latent that is missing or
unreadable is encoded again from the stored image; a goal whose image is gone is `goal_broken`.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from .engine import Engine
from .errors import Conflict, GoalBroken, InvalidInput, NotFound, StorageFull
from .images import DecodeLimiter, decode_image
from .storage import GoalRecord, Storage, new_id
from .worker import ModelWorker

log = logging.getLogger(__name__)

MAX_NAME_LENGTH = 200
# Metadata is a small label set, not a document store: bounded so that storing, listing and
# rendering it never recurses deeply or grows large.
MAX_METADATA_BYTES = 16 * 1024
MAX_METADATA_DEPTH = 8
MAX_METADATA_ENTRIES = 256  # keys and list items, counted through every level


def metadata_problem(metadata: Any) -> str | None:
    """Why `metadata` may not be stored (None when it may): too deep, too many entries or too large."""
    entries = 0
    stack: list[tuple[Any, int]] = [(metadata, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > MAX_METADATA_DEPTH:
                return f"metadata is nested deeper than {MAX_METADATA_DEPTH} levels"
            entries += len(value)
            if entries > MAX_METADATA_ENTRIES:
                return f"metadata has more than {MAX_METADATA_ENTRIES} keys and list items in all"
            stack.extend((child, depth + 1) for child in (value.values() if isinstance(value, dict) else value))
    if len(json.dumps(metadata)) > MAX_METADATA_BYTES:
        return f"metadata is larger than {MAX_METADATA_BYTES} bytes as JSON"
    return None


class GoalLibrary:
    def __init__(self, storage: Storage, worker: ModelWorker[Engine], decoder: DecodeLimiter):
        self.storage = storage
        self.worker = worker
        self.decoder = decoder
        self._latents: dict[str, Any] = {}  # goal id -> latent on the model device (worker thread only)
        self._latents_lock = threading.Lock()

    async def add(self, data: bytes, name: str | None = None, metadata: dict[str, Any] | None = None) -> GoalRecord:
        """Validate, encode (when the model is ready) and store image, latent and row together."""
        metadata = dict(metadata or {})
        if name is not None and len(name) > MAX_NAME_LENGTH:
            raise InvalidInput(f"name is longer than {MAX_NAME_LENGTH} characters")
        problem = metadata_problem(metadata)
        if problem is not None:
            raise InvalidInput(problem, code="invalid_metadata")
        image = await self.decoder.decode(data)
        goal = GoalRecord(
            id=new_id(), created_at=time.time(), name=name, image_format=image.image_format,
            width=image.width, height=image.height, size_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(), metadata=metadata,
        )
        latent, latent_files = None, None
        if self.worker.ready:
            # Encoding now surfaces model problems at upload time; if the model is still loading the
            # latent is computed when the first session needs it.
            model_key, latent, array = await self.worker.call(_encode, image.pixels)
            latent_files = {model_key: array}
        del image  # the decoded pixels are not needed while the files are written
        await asyncio.to_thread(self.storage.add_goal, goal, data, latent_files)
        if latent is not None:
            with self._latents_lock:
                self._latents[goal.id] = latent
        return goal

    def get(self, goal_id: str) -> GoalRecord:
        """The goal; one whose stored metadata breaks today's bounds comes back without it (logged
        once), so it can still be looked at and deleted."""
        goal = self.storage.get_goal(goal_id)
        if goal is None:
            raise NotFound(f"goal {goal_id!r} not found")
        problem = metadata_problem(goal.metadata)
        if problem is not None:
            self.storage.report_bad_goal(goal_id, problem)
            return dataclasses.replace(goal, metadata={})
        return goal

    def list(self, limit: int, offset: int) -> list[GoalRecord]:
        """A page of goals; one whose stored metadata breaks today's bounds (stored before they
        existed) is left out and logged once, so one bad row never fails the listing."""
        goals = []
        for goal in self.storage.list_goals(limit=limit, offset=offset):
            problem = metadata_problem(goal.metadata)
            if problem is None:
                goals.append(goal)
            else:
                self.storage.report_bad_goal(goal.id, problem)
        return goals

    def image_path(self, goal_id: str) -> tuple[Path, str]:
        """The stored image of a goal; GoalBroken when the file is gone."""
        goal = self.get(goal_id)
        path = self.storage.goal_image_path(goal)
        if not path.is_file():
            # The message names no server path: clients learn nothing about the file system.
            raise GoalBroken(f"goal {goal_id!r} is broken: its image file is missing from the data directory; "
                             "delete the goal and upload it again")
        return path, f"image/{goal.image_format}"

    def check_usable(self, goal_id: str) -> GoalRecord:
        """For a new session: NotFound for an unknown goal, GoalBroken for one without its image."""
        goal = self.get(goal_id)
        self.image_path(goal_id)
        return goal

    def delete(self, goal_id: str) -> None:
        self.get(goal_id)
        users = self.storage.sessions_using_goal(goal_id)
        if users:
            raise Conflict(f"goal {goal_id!r} is used by active session(s) {', '.join(users)}; stop them first",
                           code="goal_in_use")
        self.storage.delete_goal(goal_id)
        with self._latents_lock:
            self._latents.pop(goal_id, None)

    def latent(self, engine: Engine, goal_id: str) -> Any:
        """Worker thread only: the goal's latent from memory, the on-disk cache, or a fresh encode."""
        with self._latents_lock:
            cached = self._latents.get(goal_id)
        if cached is not None:
            return cached
        stored = self.storage.load_latent(goal_id, engine.fingerprint)
        if stored is not None:
            try:
                latent = engine.latent_from_array(stored)
            except ValueError as error:  # a cache file of the right name but the wrong shape
                log.warning("goal %s: cached latent unusable (%s); re-encoding it from the goal image", goal_id, error)
                self.storage.discard_latent(goal_id, engine.fingerprint)
            else:
                with self._latents_lock:
                    self._latents[goal_id] = latent
                return latent
        path, _ = self.image_path(goal_id)
        image = decode_image(path.read_bytes(), self.decoder.max_pixels)
        fingerprint, latent, array = _encode(engine, image.pixels)
        try:
            self.storage.save_latent(goal_id, fingerprint, array)
        except (StorageFull, OSError) as error:  # the plan can go on; the cache is only a saving
            log.warning("goal %s: could not cache its latent (%s); it stays in memory only", goal_id, error)
        with self._latents_lock:
            self._latents[goal_id] = latent
        return latent


def _encode(engine: Engine, pixels: np.ndarray) -> tuple[str, Any, np.ndarray]:
    """Worker thread: (model key, latent on the device, the same latent as a host array)."""
    latent = engine.encode(pixels)
    return engine.fingerprint, latent, engine.latent_to_array(latent)
