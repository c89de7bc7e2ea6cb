"""`EpisodeRecorder`: a client-loop subscriber that records what the arm saw and did.

Recording is an observer of the loop, not a mode of it: attach it to any `ArmClient` (sim or
real arm) and the run becomes an episode in the `EPISODES.md` format. Each row holds the
observation taken at the start of a control period; `action.commanded` is the pose change the
loop commanded in that period (zeros when it held), next to the achieved `action` the writer
derives from consecutive states.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .client import RunSummary, StepRecord, Subscriber
from .episodes import COMMANDED_ACTION, JOINTS, POSE_NAMES, EpisodeWriter
from .poses import pose_difference
from .protocol import HelloMessage

log = logging.getLogger(__name__)


class EpisodeRecorder(Subscriber):
    def __init__(self, root: Path, task: str = "", robot_type: str = "sim_franka_style"):
        self.root, self.task, self.robot_type = Path(root), task, robot_type
        self.frames = 0
        self._hello: HelloMessage | None = None
        self._writer: EpisodeWriter | None = None
        self._first_timestamp = 0.0
        self._last_timestamp = -np.inf

    def on_start(self, hello: HelloMessage) -> None:
        self._hello = hello

    def on_step(self, step: StepRecord) -> None:
        observation = step.observation
        if self._writer is None:   # opened at the first frame: only then is it known whether joints come along
            names = {COMMANDED_ACTION: list(POSE_NAMES)}
            if observation.joints is not None:
                names[JOINTS] = [f"joint{i}" for i in range(1, len(observation.joints) + 1)]
            self._writer = EpisodeWriter(self.root, fps=self._hello.control_hz, image_shape=observation.image.shape,
                                         robot_type=self.robot_type, optional_features=names,
                                         extra_info={"recorded_by": "robot_bridge.recording.EpisodeRecorder",
                                                     "robot_id": self._hello.robot_id})
            self._writer.start_episode(self.task)
            self._first_timestamp = observation.timestamp
        commanded = np.zeros(7) if step.target is None else pose_difference(observation.state, step.target)
        extras = {COMMANDED_ACTION: commanded}
        if observation.joints is not None:
            extras[JOINTS] = observation.joints
        # Wall clocks can repeat a reading; the format wants strictly increasing timestamps.
        timestamp = max(observation.timestamp - self._first_timestamp, self._last_timestamp + 1e-6)
        self._writer.add_frame(observation.image, observation.state, timestamp=timestamp, extras=extras)
        self._last_timestamp = timestamp
        self.frames += 1

    def on_end(self, summary: RunSummary) -> None:
        if self._writer is None:
            log.warning("no frames recorded; %s not written", self.root)
            return
        self._writer.end_episode()
        self._writer.finalize()
        log.info("recorded %d frames to %s", self.frames, self.root)
