"""CURVE: key generation, encrypted exchange, refusal of unknown arms and of unpinned services."""
from __future__ import annotations

import argparse
import shutil
import stat

import pytest
import zmq.auth

from bridge_kit import PointArm, StepPlanner, wait_until
from robot_bridge import keys as keys_command
from robot_bridge.arm import SafetyLimits
from robot_bridge.client import ArmClient
from robot_bridge.keys import generate_key_pair
from robot_bridge.security import ClientKeys, ServerKeys
from robot_bridge.service import BridgeService

LOOPBACK = "tcp://127.0.0.1:*"


@pytest.fixture(scope="module")
def key_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    for name in ("service", "arm", "stranger"):
        generate_key_pair(folder, name)
    authorized = folder / "authorized"
    authorized.mkdir()
    shutil.copy(folder / "arm.key", authorized / "arm.key")   # only the arm's public key
    return folder


def server_keys(folder, name="service") -> ServerKeys:
    return ServerKeys(folder / f"{name}.key_secret", folder / "authorized")


def run_arm(endpoint, client_keys, steps=12):
    arm = PointArm()
    with ArmClient(arm, endpoint, "arm", 20.0, SafetyLimits(), keys=client_keys) as client:
        summary = client.run(max_steps=steps)
        return arm, summary, client.welcomed


def test_keys_command_writes_a_private_secret_and_a_public_key(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    keys_command.add_arguments(parser)
    assert keys_command.run(parser.parse_args(["--out", str(tmp_path / "k"), "--name", "robot-7"])) == 0
    public, secret = zmq.auth.load_certificate(tmp_path / "k" / "robot-7.key_secret")
    assert zmq.auth.load_certificate(tmp_path / "k" / "robot-7.key") == (public, None)
    assert len(public) == 40 and len(secret) == 40
    assert stat.S_IMODE((tmp_path / "k" / "robot-7.key_secret").stat().st_mode) == 0o600
    assert "robot-7.key" in capsys.readouterr().out
    assert keys_command.run(parser.parse_args(["--out", str(tmp_path / "k"), "--name", "robot-7"])) == 2   # no overwrite
    assert zmq.auth.load_certificate(tmp_path / "k" / "robot-7.key")[0] == public
    assert keys_command.run(parser.parse_args(["--out", str(tmp_path / "k"), "--name", "../evil"])) == 2


def test_listed_arm_with_the_pinned_service_key_is_served(key_folder):
    planner = StepPlanner()
    with BridgeService(LOOPBACK, planner, keys=server_keys(key_folder)) as service:
        arm, summary, welcomed = run_arm(service.endpoint, ClientKeys(key_folder / "arm.key_secret", key_folder / "service.key"))
    assert welcomed and summary.stats["moves"] >= 5 and len(planner.seen) >= 5


def test_network_bind_is_allowed_with_curve(key_folder):
    with BridgeService("tcp://0.0.0.0:*", StepPlanner(), keys=server_keys(key_folder)) as service:
        port = service.endpoint.rsplit(":", 1)[1]
        arm, summary, welcomed = run_arm(f"tcp://127.0.0.1:{port}",
                                         ClientKeys(key_folder / "arm.key_secret", key_folder / "service.key"))
    assert welcomed and summary.stats["moves"] >= 5


def test_unknown_arm_key_is_refused(key_folder):
    planner = StepPlanner()
    with BridgeService(LOOPBACK, planner, keys=server_keys(key_folder)) as service:
        arm, summary, welcomed = run_arm(service.endpoint,
                                         ClientKeys(key_folder / "stranger.key_secret", key_folder / "service.key"))
        wait_until(lambda: service.stats()["handshake_failures"] >= 1)
        stats = service.stats()
    assert not welcomed and arm.moves() == [] and planner.seen == []
    assert stats["hellos"] == 0 and stats["messages_received"] == 0


def test_arm_without_keys_cannot_reach_a_curve_service(key_folder):
    planner = StepPlanner()
    with BridgeService(LOOPBACK, planner, keys=server_keys(key_folder)) as service:
        arm, summary, welcomed = run_arm(service.endpoint, None)
        stats = service.stats()
    assert not welcomed and arm.moves() == [] and stats["messages_received"] == 0


def test_arm_never_accepts_actions_from_a_service_it_did_not_pin(key_folder):
    """A rogue service that admits the arm's key but holds another key pair cannot drive the arm."""
    rogue_planner = StepPlanner(step=0.05)
    with BridgeService(LOOPBACK, rogue_planner, keys=server_keys(key_folder, "stranger")) as rogue:
        arm, summary, welcomed = run_arm(rogue.endpoint, ClientKeys(key_folder / "arm.key_secret", key_folder / "service.key"))
        stats = rogue.stats()
    assert not welcomed and arm.moves() == [] and rogue_planner.seen == []
    assert stats["messages_received"] == 0 and summary.stats["holds"] == summary.steps


def test_service_refuses_unusable_key_configurations(key_folder, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = [ServerKeys(key_folder / "service.key_secret", empty),             # nobody could connect
           ServerKeys(key_folder / "service.key_secret", tmp_path / "missing"),
           ServerKeys(key_folder / "service.key", key_folder / "authorized")]  # a public key is not a key pair
    for keys in bad:
        with pytest.raises(ValueError):
            BridgeService(LOOPBACK, StepPlanner(), keys=keys).start()
