"""The container files, checked without a Docker engine: they parse, follow the deployment rules,
and every command and setting they use exists and works outside the container."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from server.local_server import LocalServer
from server.serve_command import build_service
from server.settings import ServerSettings

ROOT = Path(__file__).resolve().parents[1]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def instruction(name: str) -> list[str]:
    return [args for keyword, args in dockerfile_instructions() if keyword == name]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())


def jepa_help(command: list[str]) -> str:
    result = subprocess.run([sys.executable, "-m", "server.cli", *command, "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_base_image_is_an_official_pytorch_cuda_runtime():
    (base,) = instruction("FROM")
    assert re.fullmatch(r"pytorch/pytorch:[\w.]+-cuda[\d.]+-cudnn\d+-runtime", base), base


def test_runs_as_a_non_root_user_with_ports_volumes_and_healthcheck():
    users = instruction("USER")
    assert users and users[-1] not in ("root", "0")
    keywords = [keyword for keyword, _ in dockerfile_instructions()]
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")
    exposed = " ".join(instruction("EXPOSE")).split()
    assert "8000" in exposed and "5555" in exposed
    volumes = json.loads(instruction("VOLUME")[0])
    assert "/weights" in volumes and "/data" in volumes
    (healthcheck,) = instruction("HEALTHCHECK")
    assert "/healthz" in healthcheck


def test_every_copied_source_exists_and_is_a_package():
    for args in instruction("COPY"):
        *sources, _ = args.split()
        for source in sources:
            assert (ROOT / source).exists(), source
            if (ROOT / source).is_dir():
                assert (ROOT / source / "__init__.py").is_file(), source


def test_env_and_entrypoint_name_real_settings_and_commands():
    fields = set(ServerSettings.model_fields)
    env = " ".join(instruction("ENV"))
    for name in re.findall(r"\bJEPA_([A-Z_]+)=", env):
        assert name.lower() in fields, name
    assert json.loads(instruction("ENTRYPOINT")[0]) == ["jepa-planner"]
    command = json.loads(instruction("CMD")[0])
    assert "--host" in jepa_help(command)


def healthcheck_command() -> list[str]:
    (healthcheck,) = instruction("HEALTHCHECK")
    return json.loads(healthcheck.split("CMD", 1)[1].strip())


def test_healthcheck_command_passes_against_a_live_server_and_fails_without_one(tmp_path):
    command = [sys.executable if part == "python" else part for part in healthcheck_command()]
    settings = ServerSettings(model="tiny", device="cpu", bridge="", data_dir=tmp_path)
    with LocalServer(build_service(settings)) as server:
        port = server.url.rsplit(":", 1)[1]
        live = subprocess.run(command, env={**os.environ, "JEPA_PORT": port}, capture_output=True, timeout=30)
        assert live.returncode == 0, live.stderr
    dead = subprocess.run(command, env={**os.environ, "JEPA_PORT": port}, capture_output=True, timeout=30)
    assert dead.returncode != 0


def test_compose_runs_the_service_next_to_the_sim_arm():
    services = compose()["services"]
    planner, arm = services["planner"], services["sim-arm"]
    assert planner["build"]["dockerfile"] == "Dockerfile" and (ROOT / "docker" / planner["build"]["context"] / "Dockerfile").is_file()
    assert all(port.startswith("127.0.0.1:") for port in planner["ports"])  # published to this host only
    assert planner["environment"]["JEPA_API_KEY"].startswith("${JEPA_API_KEY:?")  # no key, no start
    assert any(volume.endswith(":/weights:ro") for volume in planner["volumes"])
    assert arm["network_mode"] == "service:planner"
    assert arm["depends_on"]["planner"]["condition"] == "service_healthy"
    for name in planner["environment"]:
        assert name.removeprefix("JEPA_").lower() in ServerSettings.model_fields, name


@pytest.mark.parametrize("service", ["planner", "sim-arm"])
def test_compose_commands_and_their_flags_exist(service):
    command = compose()["services"][service]["command"]
    command = shlex.split(command) if isinstance(command, str) else command
    help_text = jepa_help([command[0]])
    for flag in (part for part in command[1:] if part.startswith("--")):
        assert flag in help_text, f"{service}: {flag} is not an option of jepa-planner {command[0]}"
