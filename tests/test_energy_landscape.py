"""planner.energy_landscape: the official notebook's grid energies, a known minimum, and the CLI to PNG."""
from __future__ import annotations

import json

import imageio.v3 as iio
import pytest
import torch

from conftest import fixture_names
from planner.energy_landscape import action_grid, energy_grid
from server.cli import main
from test_planner_sanity import BlobWorld


def _data(reference_folder, name):
    return torch.load(reference_folder / f"fixture_{name}_data.pt", map_location="cpu", weights_only=True)


@pytest.mark.parametrize("name", fixture_names())
def test_grid_energies_match_the_official_notebook(reference_folder, name):
    from world_model import load_world_model

    record = _data(reference_folder, name)["energy_landscape"]
    model = load_world_model(reference_folder / f"fixture_{name}_checkpoint.pt", device="cpu")
    n = record["pred_next"].shape[1]
    context, goal = record["h"][0, :n], record["h"][0, n:]
    actions, energies = energy_grid(model, context, record["states"][0, 0], goal, record["nsamples"], record["grid_size"])
    torch.testing.assert_close(actions, record["action_grid"][:, 0], atol=0, rtol=0)
    torch.testing.assert_close(energies, record["energy"], atol=2e-4, rtol=0)


def test_minimum_lies_where_the_known_landscape_says():
    world = BlobWorld()
    start = torch.tensor([0.5, 0.0, 0.3])
    target = start + torch.tensor([0.075, -0.0375, 0.0])  # a grid point of the 5x5x5 +-0.075 grid
    state = torch.cat((start, torch.zeros(4)))
    actions, energies = energy_grid(world, world.render(start), state, world.render(target), points=5, extent=0.075)
    torch.testing.assert_close(actions[energies.argmin(), :3], target - start)
    assert energies.shape == (125,)


def test_grid_order_is_x_major_then_y_then_z():
    grid = action_grid(3, 0.1)
    expected = torch.tensor([[-0.1, -0.1, -0.1], [-0.1, -0.1, 0.0], [-0.1, -0.1, 0.1], [-0.1, 0.0, -0.1]])
    torch.testing.assert_close(grid[:4, :3], expected)
    assert grid[:, 3:].abs().max() == 0


@pytest.fixture()
def franka_images(reference_folder, tmp_path):
    data = _data(reference_folder, "tiny")
    frames = data["preprocessing"]["franka_uint8_THWC"].numpy()
    paths = []
    for index, frame in enumerate(frames):
        path = tmp_path / f"frame{index}.png"
        iio.imwrite(path, frame)
        paths.append(str(path))
    states = [",".join(f"{v:.6f}" for v in s.tolist()) for s in data["world_model"]["franka_states"]]
    return paths, states


def test_cli_writes_a_png_and_reports_the_minimum(reference_folder, franka_images, tmp_path, capsys):
    (frame, goal), (state, goal_state) = franka_images
    out = tmp_path / "plots" / "landscape.png"
    code = main([
        "energy", "--frame", frame, "--goal", goal, "--state", state, "--goal-state", goal_state,
        "--model", str(reference_folder / "fixture_tiny_checkpoint.pt"), "--device", "cpu",
        "--points", "3", "--out", str(out), "--json",
    ])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert iio.imread(out).shape[1] > 300
    assert result["min_energy"] <= result["max_energy"]
    assert len(result["argmin_action"]) == 3 and len(result["reference_action"]) == 3


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--state": "0.5,nan,0.3,0,0,0,0"}, "7 finite"),
        ({"--state": "1,2,3"}, "7 finite"),
        ({"--frame": "corrupt"}, "cannot read image"),
        ({"--points": "1"}, "--points"),
    ],
)
def test_cli_rejects_bad_input_with_a_message(reference_folder, franka_images, tmp_path, capsys, change, message):
    (frame, goal), (state, _) = franka_images
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG not really")
    options = {"--frame": frame, "--goal": goal, "--state": state, "--points": "3"}
    options.update({k: (str(corrupt) if v == "corrupt" else v) for k, v in change.items()})
    argv = ["energy", "--model", str(reference_folder / "fixture_tiny_checkpoint.pt"), "--device", "cpu"]
    for key, value in options.items():
        argv += [key, value]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
