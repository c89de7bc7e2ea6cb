"""The bridge wire protocol: message types, msgpack encoding, typed arrays, strict validation.

`PROTOCOL.md` beside this file is the normative description; this module implements it. Every
frame that crosses the wire goes through `encode` / `decode`; `decode` raises `ProtocolError`
(with a code from `ErrorCode`) for anything that is not a valid message, and nothing else.
Arrays travel as typed bytes (dtype string, shape, raw little-endian C-order bytes), never pickle.
"""
from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar, Mapping, Union

import msgpack
import numpy as np

from .arm import STATE_DIM

PROTOCOL_VERSION = 1
IMAGE_FORMATS = ("jpeg", "raw")
FLOAT_DTYPES = ("<f4", "<f8")
UINT8_DTYPE = "|u1"
ROBOT_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
MAX_SEQ = 2**63 - 1


class ErrorCode(str, enum.Enum):
    MALFORMED = "malformed"                  # not one msgpack map frame
    UNSUPPORTED_VERSION = "unsupported_version"
    UNKNOWN_TYPE = "unknown_type"
    UNEXPECTED_TYPE = "unexpected_type"      # a valid type sent in the wrong direction
    INVALID_FIELD = "invalid_field"          # missing field, wrong type / dtype / shape, non-finite
    TOO_LARGE = "too_large"
    BAD_IMAGE = "bad_image"                  # undecodable, too large, or not the announced camera size
    OUT_OF_ORDER = "out_of_order"            # observation seq not above the previous one
    HELLO_REQUIRED = "hello_required"        # observation before hello (or after the service forgot the robot)
    ROBOT_ID_MISMATCH = "robot_id_mismatch"  # robot id not bound to the CURVE key, or held by another live connection
    NO_SESSION = "no_session"                # no planning session for this robot on the service
    PLANNER_ERROR = "planner_error"


class ProtocolError(ValueError):
    """A frame that is not a valid message. `seq` names the observation it refers to, if known."""

    def __init__(self, code: ErrorCode, message: str, seq: int | None = None):
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
        self.seq = seq


@dataclass(frozen=True)
class ProtocolLimits:
    """Size limits a receiver enforces before and while decoding."""

    max_message_bytes: int = 4 * 1024 * 1024   # a raw 1024x1024 RGB frame plus headroom
    max_image_side: int = 1024                 # decoded height and width, checked before decoding
    max_joints: int = 16
    max_text: int = 1024                       # error messages, reasons, names

    def __post_init__(self) -> None:
        if self.max_message_bytes < 1024 or self.max_image_side < 1 or self.max_joints < 0 or self.max_text < 16:
            raise ValueError(f"unusable protocol limits: {self}")


DEFAULT_LIMITS = ProtocolLimits()

# The control rates a hello may announce: an arm slower than one period per 10 s is refused as invalid.
MIN_CONTROL_HZ, MAX_CONTROL_HZ = 0.1, 1000.0


# ---------------------------------------------------------------------------------------------
# Field readers: each raises ProtocolError(INVALID_FIELD) naming the field.


def _invalid(name: str, problem: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_FIELD, f"field {name!r}: {problem}")


def _read_int(fields: Mapping[str, Any], name: str, low: int = 0, high: int = MAX_SEQ) -> int:
    value = fields.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(name, f"expected an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise _invalid(name, f"{value} outside [{low}, {high}]")
    return value


def _read_float(fields: Mapping[str, Any], name: str, low: float = -math.inf, high: float = math.inf) -> float:
    value = fields.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _invalid(name, f"expected a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise _invalid(name, "not finite")
    if not low <= value <= high:
        raise _invalid(name, f"{value} outside [{low}, {high}]")
    return value


def _read_bool(fields: Mapping[str, Any], name: str, default: bool) -> bool:
    value = fields.get(name, default)
    if not isinstance(value, bool):
        raise _invalid(name, f"expected true or false, got {type(value).__name__}")
    return value


def _read_text(fields: Mapping[str, Any], name: str, limits: ProtocolLimits, default: str | None = None) -> str:
    value = fields.get(name, default)
    if not isinstance(value, str):
        raise _invalid(name, f"expected a string, got {type(value).__name__}")
    if len(value) > limits.max_text:
        raise _invalid(name, f"longer than {limits.max_text} characters")
    return value


def _read_robot_id(fields: Mapping[str, Any], limits: ProtocolLimits) -> str:
    robot_id = _read_text(fields, "robot_id", limits)
    if not ROBOT_ID_PATTERN.match(robot_id):
        raise _invalid("robot_id", f"{robot_id!r} is not 1-64 characters of [A-Za-z0-9_.-] starting alphanumeric")
    return robot_id


# Bounds on what an arm may announce in hello.limits: generous for any tabletop arm, but they keep
# a typo (a step in millimetres, a box in the next room) from becoming a planner setting.
ARM_LIMIT_KEYS = ("workspace_low", "workspace_high", "max_translation_m", "max_rotation_rad")
MAX_WORKSPACE_COORD_M = 10.0
MAX_ANNOUNCED_STEP_M = 0.5
MAX_ANNOUNCED_TURN_RAD = math.pi


def read_arm_limits(value: Any) -> dict[str, Any] | None:
    """Validate a hello's optional `limits` map (PROTOCOL.md 4.1); nil or absent -> None."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _invalid("limits", f"expected nil or a map, got {type(value).__name__}")
    corners = {}
    for name in ("workspace_low", "workspace_high"):
        corner = value.get(name)
        if not isinstance(corner, list) or len(corner) != 3 or any(
                isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in corner):
            raise _invalid(f"limits.{name}", "expected three finite numbers (metres, base frame)")
        if any(abs(v) > MAX_WORKSPACE_COORD_M for v in corner):
            raise _invalid(f"limits.{name}", f"{corner} is more than {MAX_WORKSPACE_COORD_M:g} m from the base")
        corners[name] = [float(v) for v in corner]
    if not all(lo < hi for lo, hi in zip(corners["workspace_low"], corners["workspace_high"])):
        raise _invalid("limits", f"workspace_low {corners['workspace_low']} must be below workspace_high "
                                 f"{corners['workspace_high']} on every axis")
    step = _read_float(value, "max_translation_m", 0.0, MAX_ANNOUNCED_STEP_M)
    turn = _read_float(value, "max_rotation_rad", 0.0, MAX_ANNOUNCED_TURN_RAD)
    if step <= 0 or turn <= 0:
        raise _invalid("limits", "max_translation_m and max_rotation_rad must be positive")
    return {**corners, "max_translation_m": step, "max_rotation_rad": turn}


# ---------------------------------------------------------------------------------------------
# Typed arrays: {"dtype": "<f8", "shape": [7], "data": <bytes>}


def pack_array(array: np.ndarray) -> dict[str, Any]:
    """Typed-bytes form of a float32/float64/uint8 array (little-endian, C order)."""
    array = np.asarray(array)
    if array.dtype == np.uint8:
        dtype = np.dtype(np.uint8)
    elif array.dtype in (np.float32, np.float64):
        dtype = array.dtype.newbyteorder("<")
    else:
        raise TypeError(f"arrays travel as float32, float64 or uint8, not {array.dtype}")
    contiguous = np.ascontiguousarray(array, dtype=dtype)
    return {"dtype": dtype.str, "shape": list(contiguous.shape), "data": contiguous.tobytes()}


def unpack_array(value: Any, name: str, dtypes: tuple[str, ...], max_elements: int) -> np.ndarray:
    """Validate a typed-bytes map and return a read-only view of its data."""
    if not isinstance(value, dict):
        raise _invalid(name, f"expected a typed-array map, got {type(value).__name__}")
    dtype, shape, data = value.get("dtype"), value.get("shape"), value.get("data")
    if dtype not in dtypes:
        raise _invalid(name, f"dtype {dtype!r} not one of {list(dtypes)}")
    if not isinstance(shape, list) or not 1 <= len(shape) <= 4:
        raise _invalid(name, "shape must be a list of 1 to 4 integers")
    if any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in shape):
        raise _invalid(name, f"shape {shape!r} must hold non-negative integers")
    elements = math.prod(shape)
    if elements > max_elements:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"field {name!r}: {elements} elements exceed {max_elements}")
    if not isinstance(data, bytes):
        raise _invalid(name, f"data must be binary, got {type(data).__name__}")
    np_dtype = np.dtype(dtype)
    if len(data) != elements * np_dtype.itemsize:
        raise _invalid(name, f"{len(data)} data bytes for shape {shape} of {dtype}")
    return np.frombuffer(data, dtype=np_dtype).reshape(shape)


def _read_vector(fields: Mapping[str, Any], name: str, size: int) -> np.ndarray:
    array = unpack_array(fields.get(name), name, FLOAT_DTYPES, size)
    if array.shape != (size,):
        raise _invalid(name, f"shape {list(array.shape)} is not [{size}]")
    if not np.isfinite(array).all():
        raise _invalid(name, "contains NaN or infinity")
    return array.astype(np.float64)


def _pack_vector(vector: np.ndarray, name: str, size: int) -> dict[str, Any]:
    vector = np.asarray(vector, dtype=np.float64)
    if vector.shape != (size,):
        raise ValueError(f"{name} must have shape ({size},), got {vector.shape}")
    if not np.isfinite(vector).all():
        raise ValueError(f"{name} contains NaN or infinity")
    return pack_array(vector)


# ---------------------------------------------------------------------------------------------
# Images


_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}   # start-of-frame variants
_STANDALONE_MARKERS = frozenset(range(0xD0, 0xD8)) | {0x01}        # RSTn and TEM carry no length


def jpeg_dimensions(data: bytes) -> tuple[int, int, int]:
    """(height, width, components) from a JPEG header, without decoding the entropy-coded data.

    Lets a receiver refuse a decompression bomb (a tiny file declaring a huge frame) cheaply.
    """
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        raise ProtocolError(ErrorCode.BAD_IMAGE, "not a JPEG (missing start-of-image marker)")
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            raise ProtocolError(ErrorCode.BAD_IMAGE, f"JPEG marker expected at byte {position}")
        marker = data[position + 1]
        if marker == 0xFF:          # fill byte before a marker
            position += 1
            continue
        if marker in _STANDALONE_MARKERS:
            position += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            break
        length = int.from_bytes(data[position + 2:position + 4], "big")
        if length < 2:
            raise ProtocolError(ErrorCode.BAD_IMAGE, "JPEG segment length below 2")
        if marker in _SOF_MARKERS:
            header = data[position + 4:position + 2 + length]
            if len(header) < 6:
                raise ProtocolError(ErrorCode.BAD_IMAGE, "truncated JPEG frame header")
            height = int.from_bytes(header[1:3], "big")
            width = int.from_bytes(header[3:5], "big")
            return height, width, header[5]
        position += 2 + length
    raise ProtocolError(ErrorCode.BAD_IMAGE, "no JPEG frame header found")


@dataclass(frozen=True)
class ImagePayload:
    """An RGB camera frame as it travels: JPEG bytes or raw (H, W, 3) uint8 bytes.

    `height` / `width` are known without decoding (raw shape or JPEG header); `decode()` does the
    real work once and caches it, so a receiver can defer it to the frame it actually uses.
    """

    format: str
    data: bytes
    height: int
    width: int

    @classmethod
    def from_array(cls, image: np.ndarray, format: str = "jpeg", jpeg_quality: int = 90) -> "ImagePayload":
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"images are (H, W, 3) uint8 RGB, got {image.dtype} {image.shape}")
        height, width = image.shape[:2]
        if format == "raw":
            return cls("raw", np.ascontiguousarray(image).tobytes(), height, width)
        if format == "jpeg":
            import cv2  # imported here: only image-carrying code paths need OpenCV

            ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(image[..., ::-1]),
                                       [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
            if not ok:
                raise ValueError("JPEG encoding failed")
            return cls("jpeg", encoded.tobytes(), height, width)
        raise ValueError(f"image format {format!r} not one of {IMAGE_FORMATS}")

    def to_wire(self) -> dict[str, Any]:
        if self.format == "raw":
            return {"format": "raw", "dtype": UINT8_DTYPE, "shape": [self.height, self.width, 3], "data": self.data}
        return {"format": "jpeg", "data": self.data}

    @classmethod
    def from_wire(cls, value: Any, limits: ProtocolLimits) -> "ImagePayload":
        if not isinstance(value, dict):
            raise _invalid("image", f"expected an image map, got {type(value).__name__}")
        image_format = value.get("format")
        if image_format == "raw":
            side = limits.max_image_side
            pixels = unpack_array(value, "image", (UINT8_DTYPE,), side * side * 3)
            if pixels.ndim != 3 or pixels.shape[2] != 3:
                raise _invalid("image", f"raw shape {list(pixels.shape)} is not [H, W, 3]")
            height, width = pixels.shape[:2]
        elif image_format == "jpeg":
            data = value.get("data")
            if not isinstance(data, bytes):
                raise _invalid("image", "JPEG data must be binary")
            height, width, components = jpeg_dimensions(data)
            if components not in (1, 3):
                raise ProtocolError(ErrorCode.BAD_IMAGE, f"JPEG with {components} components (expected 1 or 3)")
        else:
            raise _invalid("image", f"format {image_format!r} not one of {list(IMAGE_FORMATS)}")
        if not (1 <= height <= limits.max_image_side and 1 <= width <= limits.max_image_side):
            raise ProtocolError(ErrorCode.BAD_IMAGE, f"image {height}x{width} outside 1..{limits.max_image_side} per side")
        return cls(image_format, value["data"], height, width)

    def decode(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB; raises ProtocolError(BAD_IMAGE) if the bytes do not decode."""
        return self._pixels

    @cached_property
    def _pixels(self) -> np.ndarray:
        if self.format == "raw":
            # A writable copy, like the JPEG path: consumers such as torch.from_numpy expect one.
            return np.frombuffer(self.data, dtype=np.uint8).reshape(self.height, self.width, 3).copy()
        import cv2

        decoded = cv2.imdecode(np.frombuffer(self.data, dtype=np.uint8), cv2.IMREAD_COLOR)
        if decoded is None or decoded.shape[:2] != (self.height, self.width):
            raise ProtocolError(ErrorCode.BAD_IMAGE, "JPEG data does not decode to the size its header declares")
        return np.ascontiguousarray(decoded[..., ::-1])


# ---------------------------------------------------------------------------------------------
# Messages. Each knows its wire `type`, its direction, and how to write / read its fields.


@dataclass(frozen=True)
class HelloMessage:
    """Arm -> service, first message on a connection: who I am and what I will send."""

    TYPE: ClassVar[str] = "hello"
    robot_id: str
    camera_height: int
    camera_width: int
    control_hz: float
    image_format: str = "jpeg"
    software: str = ""
    limits: dict[str, Any] | None = None   # the arm's safety limits (ARM_LIMIT_KEYS), if it announces them

    def fields(self) -> dict[str, Any]:
        fields = {"robot_id": self.robot_id, "camera_height": self.camera_height, "camera_width": self.camera_width,
                  "control_hz": self.control_hz, "image_format": self.image_format, "software": self.software}
        if self.limits is not None:   # optional key: absent, not nil, so older services see nothing new
            fields["limits"] = self.limits
        return fields

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any], limits: ProtocolLimits) -> "HelloMessage":
        image_format = _read_text(fields, "image_format", limits)
        if image_format not in IMAGE_FORMATS:
            raise _invalid("image_format", f"{image_format!r} not one of {list(IMAGE_FORMATS)}")
        return cls(
            robot_id=_read_robot_id(fields, limits),
            camera_height=_read_int(fields, "camera_height", 1, limits.max_image_side),
            camera_width=_read_int(fields, "camera_width", 1, limits.max_image_side),
            control_hz=_read_float(fields, "control_hz", MIN_CONTROL_HZ, MAX_CONTROL_HZ),
            image_format=image_format,
            software=_read_text(fields, "software", limits, default=""),
            limits=read_arm_limits(fields.get("limits")),
        )


@dataclass(frozen=True)
class WelcomeMessage:
    """Service -> arm, answer to hello: the arm may now stream observations."""

    TYPE: ClassVar[str] = "welcome"
    robot_id: str
    max_message_bytes: int
    heartbeat_interval_s: float
    session: dict[str, str | int | float] | None = None   # the planning session bound to this robot, if any
    software: str = ""

    def fields(self) -> dict[str, Any]:
        return {"robot_id": self.robot_id, "max_message_bytes": self.max_message_bytes,
                "heartbeat_interval_s": self.heartbeat_interval_s, "session": self.session, "software": self.software}

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any], limits: ProtocolLimits) -> "WelcomeMessage":
        session = fields.get("session")
        if session is not None:
            if not isinstance(session, dict) or len(session) > 32 or not all(
                isinstance(k, str) and isinstance(v, (str, int, float)) and not isinstance(v, bool)
                for k, v in session.items()
            ):
                raise _invalid("session", "expected nil or a map of string to string/number")
        return cls(
            robot_id=_read_robot_id(fields, limits),
            max_message_bytes=_read_int(fields, "max_message_bytes", 1024, 2**31),
            heartbeat_interval_s=_read_float(fields, "heartbeat_interval_s", 0.01, 3600.0),
            session=session,
            software=_read_text(fields, "software", limits, default=""),
        )


@dataclass(frozen=True)
class ObservationMessage:
    """Arm -> service: what the arm sees and where it is, numbered by a strictly increasing `seq`."""

    TYPE: ClassVar[str] = "observation"
    seq: int
    timestamp: float
    image: ImagePayload
    state: np.ndarray                     # (7,) float64
    joints: np.ndarray | None = None      # (n,) float64, optional

    def fields(self) -> dict[str, Any]:
        fields = {"seq": self.seq, "timestamp": self.timestamp, "image": self.image.to_wire(),
                  "state": _pack_vector(self.state, "state", STATE_DIM)}
        if self.joints is not None:
            fields["joints"] = _pack_vector(self.joints, "joints", len(self.joints))
        return fields

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any], limits: ProtocolLimits) -> "ObservationMessage":
        seq = _read_int(fields, "seq")
        try:
            joints = None
            if fields.get("joints") is not None:
                raw = unpack_array(fields["joints"], "joints", FLOAT_DTYPES, limits.max_joints)
                if raw.ndim != 1 or not np.isfinite(raw).all():
                    raise _invalid("joints", "must be a finite 1-D array")
                joints = raw.astype(np.float64)
            return cls(seq=seq, timestamp=_read_float(fields, "timestamp"),
                       image=ImagePayload.from_wire(fields.get("image"), limits),
                       state=_read_vector(fields, "state", STATE_DIM), joints=joints)
        except ProtocolError as error:
            raise ProtocolError(error.code, error.message, seq) from None


@dataclass(frozen=True)
class ActionMessage:
    """Service -> arm: the plan for observation `seq`.

    `target` is the absolute 7-D end-effector pose the arm should move towards (the arm clamps
    it); `delta` is the planner's action that produced it. The service stamps `seq` and
    `planning_ms`, so a planning callback may leave them at their defaults.
    """

    TYPE: ClassVar[str] = "action"
    delta: np.ndarray                     # (7,)
    target: np.ndarray                    # (7,)
    energy: float
    seq: int = 0
    planning_ms: float = 0.0
    held: bool = False                    # holding at the final goal (arrival_energy): nothing was planned

    def fields(self) -> dict[str, Any]:
        return {"seq": self.seq, "delta": _pack_vector(self.delta, "delta", STATE_DIM),
                "target": _pack_vector(self.target, "target", STATE_DIM),
                "energy": float(self.energy), "planning_ms": float(self.planning_ms), "held": bool(self.held)}

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any], limits: ProtocolLimits) -> "ActionMessage":
        return cls(seq=_read_int(fields, "seq"), delta=_read_vector(fields, "delta", STATE_DIM),
                   target=_read_vector(fields, "target", STATE_DIM), energy=_read_float(fields, "energy"),
                   planning_ms=_read_float(fields, "planning_ms", 0.0), held=_read_bool(fields, "held", False))


@dataclass(frozen=True)
class HoldMessage:
    """Service -> arm: answer to observation `seq`: keep the current pose (the model is not loaded, the
    service is shutting down, or the plan came too late)."""

    TYPE: ClassVar[str] = "hold"
    reason: str
    seq: int = 0

    def fields(self) -> dict[str, Any]:
        return {"seq": self.seq, "reason": self.reason}

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any], limits: ProtocolLimits) -> "HoldMessage":
        return cls(seq=_read_int(fields, "seq"), reason=_read_text(fields, "reason", limits))


@dataclass(frozen=True)
class StopMessage:
    """Service -> arm, unsolicited: hold now and end the control loop."""

    TYPE: ClassVar[str] = "stop"
    reason: str

    def fields(self) -> dict[str, Any]:
        return {"reason": self.reason}

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any], limits: ProtocolLimits) -> "StopMessage":
        return cls(reason=_read_text(fields, "reason", limits))


@dataclass(frozen=True)
class HeartbeatMessage:
    """Arm -> service liveness probe; the service answers with the same `timestamp` echoed."""

    TYPE: ClassVar[str] = "heartbeat"
    timestamp: float

    def fields(self) -> dict[str, Any]:
        return {"timestamp": self.timestamp}

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any], limits: ProtocolLimits) -> "HeartbeatMessage":
        return cls(timestamp=_read_float(fields, "timestamp"))


@dataclass(frozen=True)
class ErrorMessage:
    """Either direction: a message was refused. Never answered, to rule out error ping-pong."""

    TYPE: ClassVar[str] = "error"
    code: str
    message: str
    seq: int | None = None

    @classmethod
    def from_exception(cls, error: ProtocolError) -> "ErrorMessage":
        return cls(error.code.value, error.message[:DEFAULT_LIMITS.max_text], error.seq)

    def fields(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "seq": self.seq}

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any], limits: ProtocolLimits) -> "ErrorMessage":
        seq = None if fields.get("seq") is None else _read_int(fields, "seq")
        return cls(code=_read_text(fields, "code", limits), message=_read_text(fields, "message", limits), seq=seq)


Message = Union[HelloMessage, WelcomeMessage, ObservationMessage, ActionMessage, HoldMessage,
                StopMessage, HeartbeatMessage, ErrorMessage]
PlanReply = Union[ActionMessage, HoldMessage, ErrorMessage]

MESSAGE_TYPES: dict[str, type] = {cls.TYPE: cls for cls in (
    HelloMessage, WelcomeMessage, ObservationMessage, ActionMessage, HoldMessage,
    StopMessage, HeartbeatMessage, ErrorMessage)}
ARM_TO_SERVICE = frozenset({"hello", "observation", "heartbeat", "error"})
SERVICE_TO_ARM = frozenset({"welcome", "action", "hold", "stop", "heartbeat", "error"})


def encode(message: Message) -> bytes:
    """One msgpack map: {"v": 1, "type": ..., **fields}. Raises ValueError for unsendable values."""
    return msgpack.packb({"v": PROTOCOL_VERSION, "type": message.TYPE, **message.fields()}, use_bin_type=True)


def decode(frame: bytes, limits: ProtocolLimits = DEFAULT_LIMITS, accept: frozenset[str] | None = None) -> Message:
    """Parse and validate one frame; `accept` restricts the message types this receiver takes.

    Raises ProtocolError and nothing else, whatever the bytes.
    """
    if len(frame) > limits.max_message_bytes:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"{len(frame)} bytes exceed {limits.max_message_bytes}")
    try:
        fields = msgpack.unpackb(
            frame, raw=False, strict_map_key=True, use_list=True, max_bin_len=limits.max_message_bytes,
            max_str_len=limits.max_text * 4, max_array_len=64, max_map_len=64, max_ext_len=0,
        )
    except Exception as error:  # msgpack raises several unrelated types for corrupt input
        raise ProtocolError(ErrorCode.MALFORMED, f"not a msgpack frame ({type(error).__name__})") from None
    if not isinstance(fields, dict):
        raise ProtocolError(ErrorCode.MALFORMED, f"a message is a msgpack map, got {type(fields).__name__}")
    version = fields.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION, f"protocol version {version!r}; this end speaks {PROTOCOL_VERSION}")
    message_type = fields.get("type")
    cls = MESSAGE_TYPES.get(message_type) if isinstance(message_type, str) else None
    if cls is None:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {str(message_type)[:40]!r}")
    if accept is not None and message_type not in accept:
        raise ProtocolError(ErrorCode.UNEXPECTED_TYPE, f"{message_type!r} is not sent in this direction")
    try:
        return cls.from_fields(fields, limits)
    except ProtocolError:
        raise
    except Exception as error:  # defence in depth: a validator bug must not escape as a crash
        raise ProtocolError(ErrorCode.INVALID_FIELD, f"{type(error).__name__}: {error}"[:200]) from None
