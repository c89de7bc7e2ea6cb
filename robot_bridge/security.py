"""CURVE keys for the bridge and the rule that an open network bind must use them.

An arm obeys whoever sends it actions, so any endpoint reachable from another host must be
authenticated and encrypted. Keys are ZeroMQ certificate files (`jepa-planner keys`):
`NAME.key` holds the public key (safe to copy), `NAME.key_secret` the key pair (keep private).

An arm key is bound to robot ids by file name: the service's authorized-keys folder holds
`ROBOT_ID.key` for each robot an arm may speak for, so `arm-1.key` lets its key claim `arm-1`
and nothing else (copy one public key under several names to let one arm host several robots).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import zmq
import zmq.auth

from .protocol import ROBOT_ID_PATTERN


class InsecureEndpoint(ValueError):
    """A non-loopback endpoint without CURVE keys."""


def is_loopback(endpoint: str) -> bool:
    """True for endpoints only this host can reach: inproc, ipc, tcp on 127.0.0.0/8, ::1, localhost."""
    scheme, _, address = endpoint.partition("://")
    if scheme in ("inproc", "ipc"):
        return True
    if scheme != "tcp":
        return False
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", an interface name or a host name: assume reachable from outside
        return False


def require_secure(endpoint: str, keys: object | None, side: str) -> None:
    if keys is None and not is_loopback(endpoint):
        raise InsecureEndpoint(
            f"{side} endpoint {endpoint} is reachable from other hosts; refusing to run it without CURVE "
            "keys (generate them with `jepa-planner keys`, see robot_bridge/PROTOCOL.md section Security)"
        )


def _load_key_pair(secret_key_file: Path) -> tuple[bytes, bytes]:
    public, secret = zmq.auth.load_certificate(secret_key_file)
    if secret is None:
        raise ValueError(f"{secret_key_file} holds no secret key (pass the .key_secret file, not the .key)")
    return public, secret


@dataclass(frozen=True)
class ServerKeys:
    """The service's key pair and the folder of arm public keys it admits."""

    secret_key_file: Path
    authorized_keys_dir: Path

    def key_pair(self) -> tuple[bytes, bytes]:
        return _load_key_pair(Path(self.secret_key_file))

    def arm_bindings(self) -> "ArmKeyBindings":
        """Read the authorized-keys folder: each `ROBOT_ID.key` admits its key for that robot id."""
        folder = Path(self.authorized_keys_dir)
        if not folder.is_dir():
            raise ValueError(f"authorized arm keys folder {folder} does not exist")
        robot_ids_by_key: dict[str, set[str]] = {}
        for key_file in sorted(folder.glob("*.key")):
            robot_id = key_file.stem
            if not ROBOT_ID_PATTERN.match(robot_id):
                raise ValueError(f"{key_file}: an arm key file is named after the robot id it may claim "
                                 "(1-64 characters of [A-Za-z0-9_.-], first alphanumeric), e.g. arm-1.key")
            try:
                public, _ = zmq.auth.load_certificate(key_file)
            except (OSError, ValueError) as error:
                raise ValueError(f"{key_file} is not a ZeroMQ public key file: {error}") from None
            robot_ids_by_key.setdefault(public.decode("ascii"), set()).add(robot_id)
        if not robot_ids_by_key:
            raise ValueError(f"no arm public keys (*.key) in {folder}: no arm could connect")
        return ArmKeyBindings({key: frozenset(ids) for key, ids in robot_ids_by_key.items()})


class ArmKeyBindings:
    """Which robot ids each admitted arm public key may claim.

    Keys are Z85 text, the form pyzmq's authenticator reports as a connection's `User-Id`, so the
    service can check every received frame against the robot id its connection claims (by hello):
    `may_claim(frame.get("User-Id"), robot_id)`. The robot id is never taken from the routing id,
    which the client chooses. Also the authenticator's credentials provider (`callback`): only
    bound keys pass the handshake.
    """

    def __init__(self, robot_ids_by_key: Mapping[str, frozenset[str]]):
        # Robot ids are compared as bytes (as they arrive), so any bytes at all are safe to test.
        self._robot_ids_by_key = {key: frozenset(rid.encode() for rid in ids) for key, ids in robot_ids_by_key.items()}

    def __len__(self) -> int:
        return len(self._robot_ids_by_key)

    def robot_ids(self, user_id: str) -> list[str]:
        return sorted(rid.decode() for rid in self._robot_ids_by_key.get(user_id, ()))

    def may_claim(self, user_id: str, robot_id: bytes) -> bool:
        """True when the key `user_id` (Z85) is bound to `robot_id` (UTF-8 bytes)."""
        return robot_id in self._robot_ids_by_key.get(user_id, ())

    def callback(self, domain: str, z85_key: bytes) -> bool:
        """pyzmq ZAP credentials provider: admit a connection only for a bound key."""
        return z85_key.decode("ascii") in self._robot_ids_by_key


@dataclass(frozen=True)
class ClientKeys:
    """The arm's key pair and the service public key it pins."""

    secret_key_file: Path
    server_public_key_file: Path

    def apply(self, socket: zmq.Socket) -> None:
        public, secret = _load_key_pair(Path(self.secret_key_file))
        server_public, _ = zmq.auth.load_certificate(Path(self.server_public_key_file))
        socket.curve_secretkey = secret
        socket.curve_publickey = public
        socket.curve_serverkey = server_public
