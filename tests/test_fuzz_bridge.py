"""Throw malformed frames at the service and at the arm client; both must keep serving afterwards."""
from __future__ import annotations

import time

import msgpack
import numpy as np
import zmq

from bridge_kit import START_POSE, ClientThread, PointArm, RawPeer, StepPlanner, hello, observation, wait_until
from robot_bridge.arm import SafetyLimits
from robot_bridge.client import ArmClient
from robot_bridge.protocol import (
    ActionMessage,
    ErrorMessage,
    HeartbeatMessage,
    HelloMessage,
    HoldMessage,
    ImagePayload,
    ObservationMessage,
    ProtocolLimits,
    WelcomeMessage,
    decode,
    encode,
)
from robot_bridge.service import BridgeService

RNG = np.random.default_rng(1234)
MAX_BYTES = 64 * 1024
HUGE_HEADERS = [b"\xc6\x7f\xff\xff\xff", b"\xdb\xff\xff\xff\xf0abc", b"\xdd\xff\xff\xff\xff\x01",
                b"\xdf\x7f\xff\xff\xff\xa1v\x01", b"\xc5\xff\xffxx", b"\x91" * 60_000, b"\x81" * 30_000]   # nesting bombs, under MAX_BYTES


def pack(fields) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


def typed(values, dtype="<f8", shape=None) -> dict:
    array = np.asarray(values, dtype=np.dtype(dtype))
    return {"dtype": dtype, "shape": list(array.shape if shape is None else shape), "data": array.tobytes()}


BOOLEAN_FIELDS = {"held"}   # action


def mutated(fields: dict) -> dict:
    """A valid message's fields with one of them replaced by a value that is wrong for that field."""
    fields = dict(fields)
    key = RNG.choice(sorted(fields))
    fields[key] = [None, True, float("inf"), "x" * 5000, b"\x00" * 9, [1, 2], {"a": 1},
                   typed(np.full(7, np.nan)), typed(np.zeros(6)), typed(np.zeros(7), "<i8")][RNG.integers(10)]
    if key in BOOLEAN_FIELDS and isinstance(fields[key], bool):
        fields[key] = None   # true is a right value there
    return fields


def service_garbage(valid_observation: dict, last_seq: int) -> list[list[bytes]]:
    jpeg = ImagePayload.from_array(np.zeros((32, 32, 3), np.uint8), "jpeg").data
    frames: list[list[bytes]] = []
    for i in range(1100):
        kind = i % 11
        if kind == 0:
            frames.append([RNG.bytes(int(RNG.integers(0, 300)))])
        elif kind == 1:
            frames.append([pack([None, 1, "x", b"y", 2.5, [], True][i % 7])])
        elif kind == 2:
            frames.append([pack({**valid_observation, "v": [0, 2, "1", 1.0, True, None, 99][i % 7]})])
        elif kind == 3:
            frames.append([pack({"v": 1, "type": ["teleport", "action", "stop", "welcome", "", 7][i % 6]})])
        elif kind == 4:
            frames.append([HUGE_HEADERS[i % len(HUGE_HEADERS)]])
        elif kind == 5:
            bad = [np.full(7, np.nan), np.full(7, np.inf), np.zeros(6), np.zeros(8)][i % 4]
            frames.append([pack({**valid_observation, "seq": last_seq + 1 + i, "state": typed(bad)})])
        elif kind == 6:   # bad JPEGs: random bodies, truncated scans, absurd declared sizes
            body = [b"\xff\xd8" + RNG.bytes(200), jpeg[: len(jpeg) // 2], jpeg[:200],
                    jpeg.replace(b"\xff\xc0\x00\x11\x08\x00\x20\x00\x20", b"\xff\xc0\x00\x11\x08\xff\xff\xff\xff")][i % 4]
            frames.append([pack({**valid_observation, "seq": last_seq + 1 + i, "image": {"format": "jpeg", "data": body}})])
        elif kind == 7:   # out of order: at or below the last accepted seq
            frames.append([pack({**valid_observation, "seq": int(RNG.integers(0, last_seq + 1))})])
        elif kind == 8:
            frames.append([pack(mutated(valid_observation))])
        elif kind == 9:   # wrong frame counts
            frames.append([encode(observation(last_seq + 1 + i))] * int(RNG.integers(2, 4)))
        else:             # image with the wrong size, raw data of the wrong length
            image = typed(np.zeros((16, 16, 3)), "|u1") if i % 2 else {**typed(np.zeros((32, 32, 3)), "|u1"), "data": b"\x00" * 10}
            frames.append([pack({**valid_observation, "seq": last_seq + 1 + i, "image": {"format": "raw", **image}})])
    return frames


def test_service_survives_malformed_frames_and_keeps_serving():
    planner = StepPlanner()
    with BridgeService("tcp://127.0.0.1:*", planner, limits=ProtocolLimits(max_message_bytes=MAX_BYTES)) as service, \
            RawPeer(service.endpoint, routing_id=b"fuzz", rcvhwm=0) as fuzzer, RawPeer(service.endpoint) as anonymous:
        fuzzer.send(hello("fuzz"))
        assert isinstance(fuzzer.receive_message(), WelcomeMessage)
        fuzzer.send(observation(50))
        assert isinstance(fuzzer.receive_message(), ActionMessage)

        garbage = service_garbage(msgpack.unpackb(encode(observation(51)), raw=False), last_seq=50)
        for frames in garbage:
            fuzzer.send(*frames)
        for _ in range(20):
            anonymous.send(hello("fuzz"))      # claims another socket's robot id
        # Each frame is answered with an error, except observations that pass the socket-side checks
        # (a JPEG whose header is fine) and are then overtaken by a newer one: dropped as stale, counted.
        replies = []
        while len(replies) + service.stats()["observations_dropped_stale"] < len(garbage):
            replies.append(decode(fuzzer.receive(timeout=10)[0]))
        assert all(isinstance(reply, ErrorMessage) for reply in replies)
        assert {decode(anonymous.receive()[0]).code for _ in range(20)} == {"robot_id_mismatch"}
        codes = {reply.code for reply in replies}
        assert {"malformed", "unsupported_version", "unknown_type", "unexpected_type", "invalid_field",
                "bad_image", "out_of_order", "too_large"} <= codes

        fuzzer.send(b"\x00" * (MAX_BYTES + 1))   # past MAXMSGSIZE: libzmq drops this connection
        wait_until(lambda: service.stats()["disconnections"] >= 1)

        arm = PointArm()
        with ArmClient(arm, service.endpoint, "arm-1", 50.0, SafetyLimits()) as client:
            summary = client.run(max_steps=20)
        assert summary.stats["moves"] >= 10, "a well-behaved arm is still served after the fuzzing"
        fuzzer.send(hello("fuzz"))            # the fuzzer's own socket reconnected and is served too
        # (past any reply still queued: the claims above also told the fuzzer, holder of "fuzz", about them)
        while not isinstance(reply := fuzzer.receive_message(timeout=10), WelcomeMessage):
            assert isinstance(reply, ErrorMessage)
        stats = service.stats()
    print(f"\nservice: {len(garbage)} malformed frames, {stats['invalid_messages']} refused at the socket, "
          f"error codes {sorted(codes)}")
    assert stats["invalid_messages"] >= 1000


def client_garbage(last_seq: int) -> list[list[bytes]]:
    good = msgpack.unpackb(encode(ActionMessage(np.zeros(7), np.array(START_POSE), 1.0, seq=last_seq)), raw=False)
    frames: list[list[bytes]] = []
    for i in range(1100):
        kind = i % 10
        if kind == 0:
            frames.append([RNG.bytes(int(RNG.integers(0, 300)))])
        elif kind == 1:
            frames.append([pack({**good, "target": typed([np.nan, 0, 0.3, 0, 0, 0, 0])})])
        elif kind == 2:
            frames.append([pack({**good, "target": typed(np.full(7, np.inf))})])
        elif kind == 3:
            frames.append([pack({**good, "target": typed(np.zeros(6))})])
        elif kind == 4:
            frames.append([pack({**good, "v": [2, "1", None][i % 3]})])
        elif kind == 5:
            frames.append([HUGE_HEADERS[i % len(HUGE_HEADERS)]])
        elif kind == 6:
            frames.append([pack(mutated(good))])
        elif kind == 7:   # commands that must not be obeyed: stop / hold / welcome with broken fields
            frames.append([pack([{"v": 1, "type": "stop", "reason": 5}, {"v": 1, "type": "hold", "seq": -3, "reason": "x"},
                                 {"v": 1, "type": "welcome", "robot_id": "arm-1"}, {"v": 1, "type": "observation"}][i % 4])])
        elif kind == 8:
            frames.append([encode(HoldMessage("two frames", last_seq))] * 2)
        else:             # well-formed but answering an observation the arm never sent
            frames.append([encode(ActionMessage(np.zeros(7), np.array([0.8, 0.4, 0.6, 0, 0, 0, 1.0]), 0.0,
                                                seq=last_seq + 10_000 + i))])
    return frames


def test_arm_client_survives_malformed_frames_and_keeps_applying_valid_actions():
    limits = SafetyLimits(max_translation_m=0.02)
    service = RawPeer("tcp://127.0.0.1:*", zmq.ROUTER, bind=True, router_handover=1, sndhwm=0)
    arm = PointArm()
    client = ArmClient(arm, service.endpoint, "arm-1", 50.0, limits, action_timeout=0.3, reconnect_after_s=0.5)
    runner = ClientThread(client)
    try:
        routing_id, frame = service.receive()
        assert decode(frame).robot_id == "arm-1"
        service.send(routing_id, WelcomeMessage("arm-1", MAX_BYTES, 0.1))
        last_seq = -1
        while last_seq < 3:
            routing_id, frame = service.receive()
            message = decode(frame)
            if isinstance(message, ObservationMessage):
                last_seq = message.seq
        garbage = client_garbage(last_seq)
        for frames in garbage:
            service.send(routing_id, *frames)
        # Past the arm's MAXMSGSIZE: libzmq drops the link for good; the arm notices the silence and reconnects.
        service.send(routing_id, b"\x00" * (MAX_BYTES + 1))
        moves_before = len(arm.moves())
        deadline = time.monotonic() + 15
        while len(arm.moves()) < moves_before + 10 and time.monotonic() < deadline:   # now serve properly
            if not service.socket.poll(100):
                continue
            routing_id, frame = service.receive()
            message = decode(frame)
            if isinstance(message, HelloMessage):
                service.send(routing_id, WelcomeMessage("arm-1", MAX_BYTES, 0.1))
            elif isinstance(message, HeartbeatMessage):
                service.send(routing_id, message)
            elif isinstance(message, ObservationMessage):
                delta = np.array([0.01, 0, 0, 0, 0, 0, 0.0])
                service.send(routing_id, ActionMessage(delta, message.state + delta, 0.5, seq=message.seq))
    finally:
        summary = runner.finish()
        client.close()
        service.close()
    stats = summary.stats
    print(f"\narm client: {len(garbage)} malformed frames, {stats['invalid_frames']} dropped as invalid, "
          f"{stats.get('commands_for_unsent_seq', 0)} answering unsent observations ignored")
    assert len(arm.moves()) >= moves_before + 10, "valid actions are applied after the fuzzing"
    assert stats["invalid_frames"] == 990 and stats["commands_for_unsent_seq"] == 110
    assert stats.get("stops", 0) == 0 and summary.reason == "requested" and stats["reconnects"] >= 1
    previous = np.array(START_POSE)
    for target in arm.moves():   # nothing from the garbage ever reached the arm
        assert np.isfinite(target).all() and target[1] == 0.0 and target[6] == 0.0
        assert np.linalg.norm(target[:3] - previous[:3]) <= limits.max_translation_m + 1e-9
        previous = target
