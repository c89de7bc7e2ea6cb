"""Training clips: random T-frame windows of (frames, states, actions) from recorded episodes.

Everything is held in memory as uint8 frames (600 episodes x 31 frames at 64 px is about 230 MB),
so sampling a batch is one gather, with no worker processes competing for the CPU.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Clips:
    frames: torch.Tensor | None    # (B, T, H, W, 3) uint8; None when the clips come with cached latents
    states: torch.Tensor           # (B, T, 7) float32, state of each frame
    actions: torch.Tensor          # (B, T-1, 7) float32, action t takes frame t to frame t+1
    latents: torch.Tensor | None = None  # (B, T, N, D) float32 frozen-encoder latents (latent_cache.py)

    def held_still(self, mask: torch.Tensor) -> "Clips":
        """The clips selected by `mask` (B,) replaced by the arm holding still at their first frame."""
        frames, latents = self.frames, self.latents
        if frames is not None:
            frames = frames.clone()
            frames[mask] = frames[mask, :1]
        if latents is not None:
            latents = latents.clone()
            latents[mask] = latents[mask, :1]
        states, actions = self.states.clone(), self.actions.clone()
        states[mask] = states[mask, :1]
        actions[mask] = 0.0
        return Clips(frames, states, actions, latents)

    def to(self, device: torch.device) -> "Clips":
        def move(tensor):
            return None if tensor is None else tensor.to(device, non_blocking=True)

        return Clips(move(self.frames), move(self.states), move(self.actions), move(self.latents))


class ClipDataset:
    """Episodes concatenated along time; a clip never crosses an episode boundary."""

    def __init__(self, episodes: list[tuple[np.ndarray, np.ndarray, np.ndarray]], clip_frames: int):
        """episodes: (frames (L,H,W,3) uint8, states (L,7), actions (L-1,7)) per episode."""
        if clip_frames < 2:
            raise ValueError(f"clip_frames must be at least 2, got {clip_frames}")
        usable = [episode for episode in episodes if len(episode[0]) >= clip_frames]
        if not usable:
            raise ValueError(f"no episode has at least {clip_frames} frames")
        frames, states, actions, starts, episode_index = [], [], [], [], []
        offset = 0
        for number, (episode_frames, episode_states, episode_actions) in enumerate(usable):
            length = len(episode_frames)
            if episode_states.shape != (length, 7) or episode_actions.shape != (length - 1, 7):
                raise ValueError(f"episode arrays disagree: {length} frames, states {episode_states.shape}, "
                                 f"actions {episode_actions.shape}")
            # np.array copies: the sources may be read-only memory maps or Arrow buffers.
            frames.append(torch.from_numpy(np.array(episode_frames, dtype=np.uint8)))
            states.append(torch.from_numpy(np.array(episode_states, dtype=np.float32)))
            # Pad the last frame's (non-existent) action so indices line up with frames.
            actions.append(torch.cat([torch.from_numpy(np.array(episode_actions, dtype=np.float32)), torch.zeros(1, 7)]))
            starts.append(torch.arange(offset, offset + length - clip_frames + 1))
            episode_index.append(torch.full((length,), number))
            offset += length
        self.frames = torch.cat(frames)
        self.states = torch.cat(states)
        self.actions = torch.cat(actions)
        self.clip_starts = torch.cat(starts)
        self.episode_index = torch.cat(episode_index)  # (frames,) which episode each frame belongs to
        self.clip_frames = clip_frames
        self.episode_count = len(usable)
        self._episodes = usable
        self.latents: torch.Tensor | None = None  # (frames, N, D), see attach_latents

    def attach_latents(self, latents: torch.Tensor) -> None:
        """Serve clips from these per-frame latents (same order as `frames`) instead of the frames."""
        if len(latents) != len(self.frames):
            raise ValueError(f"{len(latents)} latents for {len(self.frames)} frames")
        self.latents = latents

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.frames.shape[1]), int(self.frames.shape[2])

    def __len__(self) -> int:
        return len(self.clip_starts)

    def real_actions(self) -> torch.Tensor:
        """(M, 7) every recorded action, without the zero padding of each episode's last frame."""
        has_next = torch.cat([self.episode_index[1:] == self.episode_index[:-1], torch.tensor([False])])
        return self.actions[has_next]

    def split(self, validation_fraction: float, seed: int) -> tuple["ClipDataset", "ClipDataset"]:
        """Split by episode, so validation clips come from episodes never trained on."""
        order = np.random.default_rng(seed).permutation(self.episode_count)
        held_out = max(1, int(round(self.episode_count * validation_fraction)))
        if held_out >= self.episode_count:
            raise ValueError(f"cannot hold out {held_out} of {self.episode_count} episodes")
        validation = [self._episodes[i] for i in sorted(order[:held_out])]
        training = [self._episodes[i] for i in sorted(order[held_out:])]
        return ClipDataset(training, self.clip_frames), ClipDataset(validation, self.clip_frames)

    def sample(self, batch_size: int, generator: torch.Generator) -> Clips:
        chosen = self.clip_starts[torch.randint(len(self.clip_starts), (batch_size,), generator=generator)]
        return self.clips(chosen)

    def clips(self, starts: torch.Tensor) -> Clips:
        index = starts[:, None] + torch.arange(self.clip_frames)
        if self.latents is not None:  # the frames are not even gathered: no pixel leaves memory
            return Clips(None, self.states[index], self.actions[index[:, :-1]], self.latents[index])
        return Clips(self.frames[index], self.states[index], self.actions[index[:, :-1]])


def load_episodes(root, max_episodes: int | None = None, camera_key: str | None = None,
                  action_meaning: str | None = None) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(frames, states, actions) per episode of a LeRobot v3.0 dataset (`jepa-planner collect`'s, or
    any with a camera and an end-effector state: `camera_key` and `action_meaning` as EpisodeReader)."""
    # Imported here: robot_bridge pulls in cv2/pyarrow, which only data loading needs.
    from robot_bridge.episodes import EpisodeReader

    reader = EpisodeReader(root, camera_key=camera_key, action_meaning=action_meaning)
    frames = reader.all_frames()
    first = reader.episode_range(reader.episodes[0])[0] if reader.episodes else 0
    episodes = []
    for episode in reader.episodes[:max_episodes]:
        start, end = reader.episode_range(episode)
        episodes.append((np.asarray(frames[start - first:end - first]), reader.states(episode), reader.actions(episode)))
    return episodes
