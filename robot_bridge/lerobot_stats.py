"""Per-episode and dataset statistics in the form LeRobot v3.0 stores them (facts: EPISODES.md).

Every feature gets min, max, mean, std, count and the quantiles q01, q10, q50, q90, q99. Quantiles
are estimated the way LeRobot does, from a 5000-bin histogram spanning the episode's range with
linear interpolation inside the bin, so our numbers match what LeRobot computes for the same data.
Images are per channel, scaled to [0, 1], shaped (3, 1, 1), over frames sampled evenly along the
episode (all frames of episodes up to 100 frames). Episodes are aggregated by count-weighted
means, the parallel-variance formula and count-weighted quantiles.

One deliberate difference: LeRobot 0.4.4 squares uint8 pixels without widening them, so its image
`std` wraps around (the fixture's random pixels show std ~0.001). We compute it in float64.
"""
from __future__ import annotations

import numpy as np

QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
QUANTILE_KEYS = tuple(f"q{int(q * 100):02d}" for q in QUANTILES)
STAT_KEYS = ("min", "max", "mean", "std", "count", *QUANTILE_KEYS)
HISTOGRAM_BINS = 5000


def sample_indices(length: int) -> np.ndarray:
    """Frames an image statistic looks at: ~length^0.75 evenly spaced, at least 100 (or all)."""
    count = max(min(100, length), min(int(length ** 0.75), 10_000))
    return np.round(np.linspace(0, length - 1, count)).astype(int)


def _histogram_quantiles(values: np.ndarray) -> dict[str, np.ndarray]:
    """values (N, D) -> quantile estimates per column, from a histogram over [min, max].

    The bin edges come from the column's min and max in its own dtype (float32 stays float32), as
    LeRobot's do, so values on a bin edge land in the same bin and the estimates agree."""
    count = len(values)
    results = {key: np.empty(values.shape[1]) for key in QUANTILE_KEYS}
    for column in range(values.shape[1]):
        low, high = values[:, column].min(), values[:, column].max()
        edges = np.linspace(low - 1e-10, high + 1e-10, HISTOGRAM_BINS + 1)
        cumulative = np.cumsum(np.histogram(values[:, column], bins=edges)[0])
        for key, q in zip(QUANTILE_KEYS, QUANTILES):
            target = q * count
            bin_index = int(np.searchsorted(cumulative, target))
            if bin_index == 0:
                estimate = edges[0]
            elif bin_index >= len(cumulative):
                estimate = edges[-1]
            else:
                before = cumulative[bin_index - 1]
                inside = cumulative[bin_index] - before
                estimate = edges[bin_index] if inside == 0 else (
                    edges[bin_index] + (target - before) / inside * (edges[bin_index + 1] - edges[bin_index]))
            results[key][column] = estimate
    return results


def vector_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """values (N,) or (N, D) -> stats with one entry per column."""
    array = np.asarray(values)
    raw = array.reshape(len(array), -1)
    flat = raw.astype(np.float64)
    # min and max keep an integer column's type (LeRobot stores frame_index's min as an int).
    stats = {"min": raw.min(0), "max": raw.max(0), "mean": flat.mean(0), "std": flat.std(0)}
    if len(flat) < 2:
        stats.update({key: stats["mean"].copy() for key in QUANTILE_KEYS})
    else:
        stats.update(_histogram_quantiles(raw))  # in the data's own dtype, as LeRobot bins it
    stats["count"] = np.array([len(array)])
    return stats


def image_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """frames (T, H, W, 3) uint8 -> per-channel stats in [0, 1], each shaped (3, 1, 1)."""
    sampled = np.asarray(frames)[sample_indices(len(frames))]
    height, width = sampled.shape[1:3]
    if max(height, width) >= 300:  # LeRobot subsamples big frames to about 150 px first
        step = int(max(height, width) / 150)
        sampled = sampled[:, ::step, ::step]
    pixels = sampled.reshape(-1, sampled.shape[-1])
    stats = vector_stats(pixels)
    stats = {key: value if key == "count" else (np.asarray(value, np.float64) / 255.0).reshape(-1, 1, 1)
             for key, value in stats.items()}
    stats["count"] = np.array([len(sampled)])
    return stats


def aggregate(episode_stats: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Combine one feature's per-episode stats into dataset stats."""
    counts = np.stack([s["count"] for s in episode_stats]).astype(np.float64)
    means = np.stack([s["mean"] for s in episode_stats])
    weights = counts.reshape(counts.shape[:1] + (1,) * (means.ndim - 1))
    total = counts.sum()
    mean = (means * weights).sum(0) / total
    variance = ((np.stack([s["std"] for s in episode_stats]) ** 2 + (means - mean) ** 2) * weights).sum(0) / total
    result = {
        "min": np.stack([s["min"] for s in episode_stats]).min(0),
        "max": np.stack([s["max"] for s in episode_stats]).max(0),
        "mean": mean,
        "std": np.sqrt(variance),
        "count": np.array([int(total)]),
    }
    for key in QUANTILE_KEYS:
        result[key] = (np.stack([s[key] for s in episode_stats]) * weights).sum(0) / total
    return result


def to_json(stats: dict[str, np.ndarray]) -> dict[str, list]:
    return {key: np.asarray(stats[key]).tolist() for key in STAT_KEYS}
