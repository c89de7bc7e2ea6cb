"""`jepa-planner gpu-check` without a GPU: says so and succeeds at once."""
from __future__ import annotations

import json

import pytest
import torch

from server.cli import main


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: run `make gpu-check` itself")
def test_gpu_check_without_cuda_says_so_and_exits_zero(capsys):
    assert main(["gpu-check"]) == 0
    *printed, last = capsys.readouterr().out.strip().splitlines()
    assert json.loads(last) == {"cuda": False}
    assert any("no CUDA device" in line for line in printed)
