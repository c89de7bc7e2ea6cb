"""The goal library: validated goal images, stored once, with their latents encoded once and cached."""
from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

from .engine import Engine
from .errors import Conflict, InvalidInput, NotFound
from .images import decode_image
from .storage import GoalRecord, Storage, new_id
from .worker import ModelWorker

MAX_NAME_LENGTH = 200
MAX_METADATA_BYTES = 16 * 1024


class GoalLibrary:
    def __init__(self, storage: Storage, worker: ModelWorker[Engine], max_image_pixels: int):
        self.storage = storage
        self.worker = worker
        self.max_image_pixels = max_image_pixels
        self._latents: dict[str, Any] = {}  # goal id -> latent on the model device (worker thread only)
        self._latents_lock = threading.Lock()

    async def add(self, data: bytes, name: str | None = None, metadata: dict[str, Any] | None = None) -> GoalRecord:
        """Validate, store, and (when the model is ready) encode and cache the latent right away."""
        metadata = dict(metadata or {})
        if name is not None and len(name) > MAX_NAME_LENGTH:
            raise InvalidInput(f"name is longer than {MAX_NAME_LENGTH} characters")
        if len(json.dumps(metadata)) > MAX_METADATA_BYTES:
            raise InvalidInput(f"metadata is larger than {MAX_METADATA_BYTES} bytes")
        image = await asyncio.to_thread(decode_image, data, self.max_image_pixels)
        goal = GoalRecord(
            id=new_id(), created_at=time.time(), name=name, image_format=image.image_format,
            width=image.width, height=image.height, size_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(), metadata=metadata,
        )
        await asyncio.to_thread(self.storage.add_goal, goal, data)
        if self.worker.ready:
            # Encoding now surfaces model problems at upload time; if the model is still loading the
            # latent is computed when the first session needs it.
            await self.worker.call(self._encode_and_cache, goal.id, image.pixels)
        return goal

    def get(self, goal_id: str) -> GoalRecord:
        goal = self.storage.get_goal(goal_id)
        if goal is None:
            raise NotFound(f"goal {goal_id!r} not found")
        return goal

    def list(self, limit: int, offset: int) -> list[GoalRecord]:
        return self.storage.list_goals(limit=limit, offset=offset)

    def image_path(self, goal_id: str) -> tuple[Path, str]:
        goal = self.get(goal_id)
        return self.storage.goal_image_path(goal), f"image/{goal.image_format}"

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
            latent = engine.latent_from_array(stored)
            with self._latents_lock:
                self._latents[goal_id] = latent
            return latent
        path, _ = self.image_path(goal_id)
        image = decode_image(path.read_bytes(), self.max_image_pixels)
        return self._encode_and_cache(engine, goal_id, image.pixels)

    def _encode_and_cache(self, engine: Engine, goal_id: str, pixels) -> Any:
        latent = engine.encode(pixels)
        self.storage.save_latent(goal_id, engine.fingerprint, engine.latent_to_array(latent))
        with self._latents_lock:
            self._latents[goal_id] = latent
        return latent
