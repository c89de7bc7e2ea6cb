"""probe-grasp on files that are not grasp scenes: a clear error, exit 2."""
from __future__ import annotations

import argparse

import numpy as np

from planner import grasp_probe


def probe(path, capsys) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    grasp_probe.add_arguments(parser)
    code = grasp_probe.run(parser.parse_args(["--scenes", str(path), "--model", "tiny", "--device", "cpu"]))
    return code, capsys.readouterr().err


def test_a_file_without_scenes_or_no_file_is_refused_with_the_reason(tmp_path, capsys):
    other = tmp_path / "other.npz"
    np.savez(other, frames=np.zeros((2, 8, 8, 3), np.uint8))
    code, error = probe(other, capsys)
    assert code == 2 and "not a grasp-scenes file" in error and "start_image" in error
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(other.read_bytes()[:100])
    for broken in (truncated, tmp_path / "missing.npz"):
        code, error = probe(broken, capsys)
        assert code == 2 and error.startswith("jepa-planner probe-grasp:"), error
    code, error = probe(tmp_path / "missing.npz", capsys)
    assert code == 2 and "missing.npz" in error
