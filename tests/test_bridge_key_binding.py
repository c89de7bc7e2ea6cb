"""CURVE key <-> robot id binding: an admitted arm key may speak only for the robot ids it is bound to.

Real CURVE keys (made in tmp_path), real sockets: the service admits `ROBOT_ID.key` for ROBOT_ID,
reads each frame's authenticated key (ZAP User-Id) and refuses any claim outside the binding.
"""
from __future__ import annotations

import shutil
import time

import pytest
import zmq.auth

from bridge_kit import ClientThread, PointArm, RawPeer, StepPlanner, hello, observation, wait_until
from robot_bridge.arm import SafetyLimits
from robot_bridge.client import ArmClient
from robot_bridge.keys import generate_key_pair
from robot_bridge.protocol import ActionMessage, ErrorCode, ErrorMessage, HeartbeatMessage, WelcomeMessage
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
    """Key arm-a saying hello as arm-b is refused and gets no robot (so its observations need a
    hello), while arm-a itself drives its robot."""
    planner = StepPlanner()
    with BridgeService(LOOPBACK, planner, keys=service_keys(keys)) as service, \
            curve_peer(keys, service.endpoint, "arm-a", b"arm-b") as impostor:
        impostor.send(ErrorMessage("planner_error", "an arm's error is never answered"))
        replies = []
        for message in (hello("arm-b"), observation(0), HeartbeatMessage(1.0)):
            impostor.send(message)
            replies.append(impostor.receive_message())
        refused, no_robot, echo = replies
        assert refused.code == MISMATCH and "arm-a" in refused.message and "arm-b" in refused.message
        assert no_robot.code == ErrorCode.HELLO_REQUIRED.value and no_robot.seq == 0
        assert isinstance(echo, HeartbeatMessage) and echo.timestamp == 1.0   # heartbeats are echoed before hello
        assert service.stats()["robot_id_not_bound"] == 1 and service.stats()["hellos"] == 0

        arm = PointArm()
        client = ArmClient(arm, service.endpoint, "arm-a", 20.0, SafetyLimits(),
                           keys=ClientKeys(keys / "arm-a.key_secret", keys / "service.key"))
        with client:
            summary = client.run(max_steps=10)
        impostor.send(hello("arm-a"))   # its own key's robot id, whose connection has closed: free again
        late = impostor.receive_message()
        stats, robots = service.stats(), service.robots()
    assert isinstance(late, WelcomeMessage) and late.robot_id == "arm-a"
    assert client.welcomed and summary.stats["moves"] >= 5 and len(arm.moves()) >= 5
    assert {robot for robot, _, _ in planner.seen} == {"arm-a"}
    assert stats["robot_id_not_bound"] == 1 and stats["hellos"] >= 1 and robots == ["arm-a"]


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
        notice = cell_x.receive_message()   # the holder of cell-x is told of the second claim
        stats, robots = service.stats(), service.robots()
    assert [type(replies[r]) for r in ("cell-x", "cell-y")] == [WelcomeMessage, WelcomeMessage]
    assert replies["arm-a"].code == MISMATCH and "cell-x, cell-y" in replies["arm-a"].message
    # The same key, bound to cell-x, on a second connection: refused while the first one is live.
    assert replies["anonymous"].code == MISMATCH and "in use" in replies["anonymous"].message
    assert notice.code == MISMATCH and "keeps it" in notice.message
    assert stats["robot_id_not_bound"] == 1 and stats["robot_id_in_use"] == 1
    assert robots == ["cell-x", "cell-y"]


def test_admitted_key_claiming_a_running_arm_cannot_disconnect_starve_or_read_it(keys):
    """The attack from issue 15: key arm-a keeps (re)connecting under the real arm's robot id as
    routing id and saying hello as arm-b. Before: the real arm-b got 1 action in 12 s instead of
    17 in 10 s, and the impostor received some of its actions. Now arm-b's action rate holds."""
    planner = StepPlanner(step=0.001)
    with BridgeService(LOOPBACK, planner, keys=service_keys(keys)) as service:
        arm = PointArm()
        client = ArmClient(arm, service.endpoint, "arm-b", 20.0, SafetyLimits(),
                           keys=ClientKeys(keys / "arm-b.key_secret", keys / "service.key"))
        runner = ClientThread(client)
        wait_until(lambda: client.stats().get("actions_received", 0) >= 3)
        before = client.stats()["actions_received"]
        time.sleep(2.0)
        quiet_rate = (client.stats()["actions_received"] - before) / 2.0
        stolen, refusals = [], 0
        started, before = time.monotonic(), client.stats()["actions_received"]
        while time.monotonic() - started < 3.0:
            for routing_id in (b"arm-b", None):
                with curve_peer(keys, service.endpoint, "arm-a", routing_id) as impostor:
                    impostor.send(hello("arm-b"))
                    impostor.send(observation(0))
                    deadline = time.monotonic() + 0.15
                    while time.monotonic() < deadline:
                        if impostor.socket.poll(10):
                            message = impostor.receive_message()
                            stolen += [message] if isinstance(message, ActionMessage) else []
                            refusals += isinstance(message, ErrorMessage)
        attacked_rate = (client.stats()["actions_received"] - before) / (time.monotonic() - started)
        summary = runner.finish()
        client.close()
        stats = service.stats()
    print(f"\narm-b actions/s: {quiet_rate:.1f} alone, {attacked_rate:.1f} while key arm-a claims arm-b; "
          f"impostor got {len(stolen)} actions, {refusals} refusals; arm-b reconnects {summary.stats.get('reconnects', 0)}")
    assert stolen == [] and refusals >= 10 and stats["robot_id_not_bound"] >= 10
    assert attacked_rate >= 0.7 * quiet_rate and summary.stats.get("reconnects", 0) == 0
    assert {robot for robot, _, _ in planner.seen} == {"arm-b"}
