"""CURVE key <-> robot id binding: an admitted arm key may speak only for the robot ids it is bound to.

Real CURVE keys (made in tmp_path), real sockets: the service admits `ROBOT_ID.key` for ROBOT_ID,
reads each frame's authenticated key (ZAP User-Id) and refuses any claim outside the binding.
"""
from __future__ import annotations

import shutil

import pytest
import zmq.auth

from bridge_kit import PointArm, RawPeer, StepPlanner, hello, observation, wait_until
from robot_bridge.arm import SafetyLimits
from robot_bridge.client import ArmClient
from robot_bridge.keys import generate_key_pair
from robot_bridge.protocol import ErrorCode, ErrorMessage, HeartbeatMessage, WelcomeMessage
from robot_bridge.security import ClientKeys, ServerKeys
from robot_bridge.service import BridgeService

LOOPBACK = "tcp://127.0.0.1:*"
MISMATCH = ErrorCode.ROBOT_ID_MISMATCH.value


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """service, arm-a, arm-b and a two-robot host key; only the arms' public keys are authorized."""
    folder = tmp_path_factory.mktemp("keys")
    for name in ("service", "arm-a", "arm-b", "host"):
        generate_key_pair(folder, name)
    authorized = folder / "authorized"
    authorized.mkdir()
    for name in ("arm-a", "arm-b"):
        shutil.copy(folder / f"{name}.key", authorized / f"{name}.key")
    for robot_id in ("cell-x", "cell-y"):   # one arm host speaking for two robots: the same key twice
        shutil.copy(folder / "host.key", authorized / f"{robot_id}.key")
    return folder


def service_keys(folder) -> ServerKeys:
    return ServerKeys(folder / "service.key_secret", folder / "authorized")


def curve_peer(folder, endpoint: str, key_name: str, routing_id: bytes | None) -> RawPeer:
    public, secret = zmq.auth.load_certificate(folder / f"{key_name}.key_secret")
    server_public, _ = zmq.auth.load_certificate(folder / "service.key")
    return RawPeer(endpoint, routing_id=routing_id, curve_publickey=public, curve_secretkey=secret,
                   curve_serverkey=server_public)


def test_key_files_bind_each_public_key_to_the_robot_ids_named_by_its_files(keys):
    bindings = service_keys(keys).arm_bindings()
    key_of = {name: zmq.auth.load_certificate(keys / f"{name}.key")[0].decode() for name in ("arm-a", "host", "service")}
    assert len(bindings) == 3
    assert bindings.robot_ids(key_of["arm-a"]) == ["arm-a"]
    assert bindings.robot_ids(key_of["host"]) == ["cell-x", "cell-y"]
    assert bindings.may_claim(key_of["arm-a"], b"arm-a") and not bindings.may_claim(key_of["arm-a"], b"arm-b")
    assert not bindings.may_claim(key_of["service"], b"arm-a")            # not in the folder: bound to nothing
    assert not bindings.may_claim(key_of["arm-a"], b"\xff\x00arm-a")      # any routing-id bytes are safe to test
    assert bindings.callback("*", key_of["host"].encode()) and not bindings.callback("*", key_of["service"].encode())


def test_key_files_not_named_as_a_robot_id_or_not_holding_a_key_stop_the_service_at_start(keys, tmp_path):
    for name, content in (("my arm.key", (keys / "arm-a.key").read_text()), ("arm-z.key", "not a certificate\n")):
        folder = tmp_path / name.replace(" ", "_")
        folder.mkdir()
        (folder / name).write_text(content)
        with pytest.raises(ValueError, match=name):
            BridgeService(LOOPBACK, StepPlanner(), keys=ServerKeys(keys / "service.key_secret", folder)).start()


def test_arm_key_claiming_another_robot_is_refused_and_its_own_robot_is_served(keys):
    """Key arm-a posing as arm-b gets errors for every message, while arm-a itself drives its robot."""
    planner = StepPlanner()
    with BridgeService(LOOPBACK, planner, keys=service_keys(keys)) as service, \
            curve_peer(keys, service.endpoint, "arm-a", b"arm-b") as impostor:
        impostor.send(ErrorMessage("planner_error", "an arm's error is never answered, even a refused one"))
        refusals = []
        for message in (hello("arm-b"), observation(0), HeartbeatMessage(1.0)):
            impostor.send(message)
            refusals.append(impostor.receive_message())
        assert all(isinstance(r, ErrorMessage) and r.code == MISMATCH for r in refusals), refusals
        assert all("arm-a" in r.message and "arm-b" in r.message for r in refusals)
        assert [r.seq for r in refusals] == [None, 0, None]
        assert service.stats()["robot_id_not_bound"] == 4 and service.stats()["hellos"] == 0

        arm = PointArm()
        client = ArmClient(arm, service.endpoint, "arm-a", 20.0, SafetyLimits(),
                           keys=ClientKeys(keys / "arm-a.key_secret", keys / "service.key"))
        with client:
            summary = client.run(max_steps=10)
        impostor.send(observation(1))   # the service still refuses, and still answers, after serving arm-a
        late = impostor.receive_message()
        stats, robots = service.stats(), service.robots()
    assert late.code == MISMATCH and late.seq == 1
    assert client.welcomed and summary.stats["moves"] >= 5 and len(arm.moves()) >= 5
    assert {robot for robot, _, _ in planner.seen} == {"arm-a"}
    assert stats["robot_id_not_bound"] == 5 and stats["hellos"] >= 1 and robots == ["arm-a"]


def test_own_robot_id_gets_welcome_and_actions_over_raw_curve_sockets(keys):
    planner = StepPlanner(step=0.02)
    with BridgeService(LOOPBACK, planner, keys=service_keys(keys)) as service, \
            curve_peer(keys, service.endpoint, "arm-b", b"arm-b") as arm_b:
        arm_b.send(hello("arm-b"))
        welcome = arm_b.receive_message()
        arm_b.send(observation(7))
        action = arm_b.receive_message()
        robots = service.robots()
    assert isinstance(welcome, WelcomeMessage) and welcome.robot_id == "arm-b"
    assert action.seq == 7 and action.target[0] == pytest.approx(0.5 + 0.02)
    assert planner.seen == [("arm-b", 7, (32, 32, 3))] and robots == ["arm-b"]
    assert service.stats()["robot_id_not_bound"] == 0


def test_one_key_copied_under_two_robot_ids_speaks_for_both_and_no_third(keys):
    with BridgeService(LOOPBACK, StepPlanner(), keys=service_keys(keys)) as service, \
            curve_peer(keys, service.endpoint, "host", b"cell-x") as cell_x, \
            curve_peer(keys, service.endpoint, "host", b"cell-y") as cell_y, \
            curve_peer(keys, service.endpoint, "host", b"arm-a") as not_bound, \
            curve_peer(keys, service.endpoint, "host", None) as anonymous:
        replies = {}
        for robot_id, peer in (("cell-x", cell_x), ("cell-y", cell_y), ("arm-a", not_bound), ("anonymous", anonymous)):
            peer.send(hello(robot_id if robot_id != "anonymous" else "cell-x"))
            replies[robot_id] = peer.receive_message()
        wait_until(lambda: service.stats()["robot_id_not_bound"] == 2)
        robots = service.robots()
    assert [type(replies[r]) for r in ("cell-x", "cell-y")] == [WelcomeMessage, WelcomeMessage]
    assert replies["arm-a"].code == MISMATCH and replies["anonymous"].code == MISMATCH
    assert "cell-x, cell-y" in replies["arm-a"].message
    assert robots == ["cell-x", "cell-y"]
