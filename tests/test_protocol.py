"""The wire protocol: round trips, typed arrays, image handling and strict validation."""
from __future__ import annotations

import re

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robot_bridge.protocol import (
    ARM_TO_SERVICE,
    ActionMessage,
    ErrorCode,
    ErrorMessage,
    HeartbeatMessage,
    HelloMessage,
    HoldMessage,
    ImagePayload,
    ObservationMessage,
    ProtocolError,
    ProtocolLimits,
    StopMessage,
    WelcomeMessage,
    decode,
    encode,
    jpeg_dimensions,
    pack_array,
    unpack_array,
)

RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
STATE = np.array([0.5, -0.1, 0.3, 3.0, 0.1, -0.2, 0.25])


def observation(seq: int = 3, image_format: str = "raw") -> ObservationMessage:
    return ObservationMessage(seq=seq, timestamp=12.5, image=ImagePayload.from_array(IMAGE, image_format),
                              state=STATE, joints=np.linspace(-1, 1, 7))


def wire(message) -> dict:
    return msgpack.unpackb(encode(message), raw=False)


def test_every_message_type_round_trips():
    messages = [
        HelloMessage("arm-1", 24, 32, 4.0, "jpeg", "lab client 1.0"),
        WelcomeMessage("arm-1", 4096, 1.0, {"session_id": "s1", "horizon": 2}, "svc"),
        ActionMessage(delta=np.arange(7) / 10, target=STATE, energy=0.75, seq=9, planning_ms=31.5),
        ActionMessage(delta=np.zeros(7), target=STATE, energy=0.01, seq=10, held=True),
        HoldMessage("goal reached", seq=4),
        StopMessage("operator"),
        HeartbeatMessage(123.25),
        ErrorMessage("out_of_order", "seq 3 is not above 5", 3),
        ErrorMessage("malformed", "junk"),
    ]
    for message in messages:
        decoded = decode(encode(message))
        assert type(decoded) is type(message)
        for name, value in vars(message).items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(getattr(decoded, name), value)
            else:
                assert getattr(decoded, name) == value


def test_observation_round_trips_raw_exactly_and_jpeg_closely():
    raw = decode(encode(observation(image_format="raw")))
    np.testing.assert_array_equal(raw.image.decode(), IMAGE)
    np.testing.assert_array_equal(raw.state, STATE)
    np.testing.assert_allclose(raw.joints, np.linspace(-1, 1, 7))
    smooth = np.repeat(np.repeat(IMAGE[:3, :4], 8, axis=0), 8, axis=1)  # JPEG-friendly blocks
    jpeg = decode(encode(ObservationMessage(1, 0.0, ImagePayload.from_array(smooth, "jpeg", 95), STATE)))
    assert (jpeg.image.height, jpeg.image.width) == smooth.shape[:2]
    assert np.abs(jpeg.image.decode().astype(int) - smooth).mean() < 8
    assert jpeg.joints is None


def test_message_layout_is_the_documented_one():
    fields = wire(observation(seq=7))
    assert fields["v"] == 1 and fields["type"] == "observation" and fields["seq"] == 7
    assert fields["state"]["dtype"] == "<f8" and fields["state"]["shape"] == [7]
    assert np.frombuffer(fields["state"]["data"], "<f8").tolist() == STATE.tolist()
    assert fields["image"] == {"format": "raw", "dtype": "|u1", "shape": [24, 32, 3], "data": IMAGE.tobytes()}


def test_typed_arrays_accept_float32_and_refuse_other_dtypes():
    packed = pack_array(STATE.astype(np.float32))
    assert packed["dtype"] == "<f4"
    np.testing.assert_allclose(unpack_array(packed, "x", ("<f4",), 7), STATE.astype(np.float32))
    with pytest.raises(TypeError):
        pack_array(np.zeros(3, dtype=np.int64))
    bad_dtype = {**packed, "dtype": "<i8"}
    with pytest.raises(ProtocolError):
        unpack_array(bad_dtype, "x", ("<f4", "<f8"), 7)


def test_jpeg_header_gives_dimensions_without_decoding():
    payload = ImagePayload.from_array(IMAGE, "jpeg")
    assert jpeg_dimensions(payload.data) == (24, 32, 3)


def _observation_fields(**overrides) -> dict:
    fields = wire(observation())
    fields.update(overrides)
    return fields


def _nested(key: str, **overrides) -> dict:
    fields = wire(observation())
    fields[key] = {**fields[key], **overrides}
    return fields


def _bomb_jpeg() -> bytes:
    """A valid JPEG whose frame header claims 60000 x 60000 pixels."""
    data = bytearray(ImagePayload.from_array(IMAGE, "jpeg").data)
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = (60000).to_bytes(2, "big") + (60000).to_bytes(2, "big")
    return bytes(data)


@pytest.mark.parametrize("fields, code", [
    ({"v": 1}, ErrorCode.UNKNOWN_TYPE),
    ({"v": 2, "type": "hello"}, ErrorCode.UNSUPPORTED_VERSION),
    ({"v": True, "type": "hello"}, ErrorCode.UNSUPPORTED_VERSION),
    ({"v": 1.0, "type": "hello"}, ErrorCode.UNSUPPORTED_VERSION),
    ({"v": 1, "type": "teleport"}, ErrorCode.UNKNOWN_TYPE),
    ([1, 2, 3], ErrorCode.MALFORMED),
    (_observation_fields(seq=-1), ErrorCode.INVALID_FIELD),
    (_observation_fields(seq=True), ErrorCode.INVALID_FIELD),
    (_observation_fields(seq=2**64 - 1), ErrorCode.INVALID_FIELD),
    (_observation_fields(timestamp=float("nan")), ErrorCode.INVALID_FIELD),
    (_observation_fields(timestamp="now"), ErrorCode.INVALID_FIELD),
    (_observation_fields(state=[0.0] * 7), ErrorCode.INVALID_FIELD),
    (_nested("state", data=np.full(7, np.nan).tobytes()), ErrorCode.INVALID_FIELD),
    (_nested("state", data=np.full(7, np.inf).tobytes()), ErrorCode.INVALID_FIELD),
    (_nested("state", shape=[6], data=np.zeros(6).tobytes()), ErrorCode.INVALID_FIELD),
    (_nested("state", shape=[7], data=np.zeros(6).tobytes()), ErrorCode.INVALID_FIELD),
    (_nested("state", shape=[2**40]), ErrorCode.TOO_LARGE),
    (_nested("state", dtype="<i4"), ErrorCode.INVALID_FIELD),
    (_nested("state", shape="7"), ErrorCode.INVALID_FIELD),
    (_nested("image", format="png"), ErrorCode.INVALID_FIELD),
    (_nested("image", shape=[24, 32, 4]), ErrorCode.INVALID_FIELD),
    (_nested("image", shape=[5000, 5000, 3]), ErrorCode.TOO_LARGE),
    (_observation_fields(image={"format": "jpeg", "data": b"\xff\xd8garbage"}), ErrorCode.BAD_IMAGE),
    (_observation_fields(image={"format": "jpeg", "data": b"not a jpeg"}), ErrorCode.BAD_IMAGE),
    (_observation_fields(image={"format": "jpeg", "data": _bomb_jpeg()}), ErrorCode.BAD_IMAGE),
    (_nested("joints", data=np.full(7, np.nan).tobytes()), ErrorCode.INVALID_FIELD),
    ({"v": 1, "type": "hello", "robot_id": "../etc", "camera_height": 24, "camera_width": 32,
      "control_hz": 4.0, "image_format": "jpeg"}, ErrorCode.INVALID_FIELD),
    ({"v": 1, "type": "hello", "robot_id": "a", "camera_height": 24, "camera_width": 32,
      "control_hz": 0.0, "image_format": "jpeg"}, ErrorCode.INVALID_FIELD),
])
def test_invalid_messages_are_refused_with_the_right_code(fields, code):
    with pytest.raises(ProtocolError) as raised:
        decode(msgpack.packb(fields, use_bin_type=True))
    assert raised.value.code == code


def _action_fields(**changes) -> dict:
    fields = wire(ActionMessage(delta=np.zeros(7), target=STATE, energy=0.5, seq=3))
    fields.update(changes)
    return fields


def test_held_is_optional_on_an_action_and_must_be_a_boolean():
    without = _action_fields()
    del without["held"]
    assert decode(msgpack.packb(without, use_bin_type=True)).held is False   # a service from before `held`
    assert decode(msgpack.packb(_action_fields(held=True), use_bin_type=True)).held is True
    for bad in ("yes", 1, None):
        with pytest.raises(ProtocolError) as raised:
            decode(msgpack.packb(_action_fields(held=bad), use_bin_type=True))
        assert raised.value.code == ErrorCode.INVALID_FIELD


def test_observation_errors_carry_the_seq_they_refer_to():
    with pytest.raises(ProtocolError) as raised:
        decode(msgpack.packb(_nested("state", data=np.full(7, np.nan).tobytes()), use_bin_type=True))
    assert raised.value.seq == 3


def test_size_limit_and_direction_are_enforced():
    small = ProtocolLimits(max_message_bytes=1024)
    with pytest.raises(ProtocolError) as raised:
        decode(encode(observation()), small)
    assert raised.value.code == ErrorCode.TOO_LARGE
    with pytest.raises(ProtocolError) as raised:
        decode(encode(StopMessage("x")), accept=ARM_TO_SERVICE)
    assert raised.value.code == ErrorCode.UNEXPECTED_TYPE


def test_undecodable_jpeg_with_a_valid_header_fails_at_decode_time():
    data = ImagePayload.from_array(IMAGE, "jpeg").data
    header_only = data[: data.index(b"\xff\xda") + 2] + b"\x00" * 4   # scan data cut off
    message = decode(encode(ObservationMessage(1, 0.0, ImagePayload("jpeg", header_only, 24, 32), STATE)))
    with pytest.raises(ProtocolError) as raised:
        message.image.decode()
    assert raised.value.code == ErrorCode.BAD_IMAGE


def test_senders_refuse_to_encode_non_finite_plans():
    with pytest.raises(ValueError):
        encode(ActionMessage(delta=np.zeros(7), target=np.full(7, np.nan), energy=0.0))
    with pytest.raises(ValueError):
        encode(ActionMessage(delta=np.zeros(6), target=STATE, energy=0.0))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_only_ever_raise_protocol_errors(frame):
    try:
        decode(frame)
    except ProtocolError as error:
        _assert_refused_by_a_validator(error)


def _assert_refused_by_a_validator(error: ProtocolError) -> None:
    """`decode` turns any stray exception into INVALID_FIELD "<ExceptionName>: ..." (defence in
    depth); a fuzz case that only gets that far found a validator bug, so it must fail the test."""
    assert not re.match(r"^[A-Z]\w*(Error|Exception|Warning): ", error.message), error.message


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(allow_nan=True),
                     st.text(max_size=20), st.binary(max_size=64))
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.sampled_from(["dtype", "shape", "data", "format", "x"]), inner, max_size=5)),
    max_leaves=20)


@settings(max_examples=120, deadline=None)
@given(st.sampled_from(sorted({"hello", "welcome", "observation", "action", "hold", "stop", "heartbeat", "error"})),
       st.dictionaries(st.sampled_from(["robot_id", "seq", "timestamp", "image", "state", "joints", "delta", "target",
                                        "energy", "planning_ms", "held", "reason", "code", "message", "camera_height",
                                        "camera_width", "control_hz", "image_format", "session"]), _values, max_size=8))
def test_structured_garbage_only_ever_raises_protocol_errors(message_type, fields):
    frame = msgpack.packb({"v": 1, "type": message_type, **fields}, use_bin_type=True)
    try:
        message = decode(frame)
    except ProtocolError as error:
        _assert_refused_by_a_validator(error)
        return
    encode(message)  # anything accepted must be re-sendable as is


def _worked_bytes(document: str, heading: str) -> bytes:
    """The hex dump in the first code block after `heading` (each line: hex pairs, then a comment)."""
    block = document.split(heading, 1)[1].split("```", 2)[1]
    data = bytearray()
    for line in block.splitlines():
        for token in line.split():
            if len(token) != 2 or any(c not in "0123456789abcdef" for c in token):
                break
            data.append(int(token, 16))
    return bytes(data)


def test_protocol_document_matches_the_implementation():
    from pathlib import Path

    import robot_bridge

    document = (Path(robot_bridge.__file__).parent / "PROTOCOL.md").read_text()
    assert _worked_bytes(document, "`heartbeat` with timestamp 12.5") == encode(HeartbeatMessage(12.5))
    assert _worked_bytes(document, "`hello` (124 bytes)") == encode(HelloMessage("arm-1", 256, 256, 4.0, "jpeg", "my-client 1.0"))
    error_table = document.split("## 6. Error codes", 1)[1].split("## 7.", 1)[0]
    assert {f"`{code.value}`" for code in ErrorCode} <= set(error_table.split())
