"""CURVE keys for the bridge and the rule that an open network bind must use them.

An arm obeys whoever sends it actions, so any endpoint reachable from another host must be
authenticated and encrypted. Keys are ZeroMQ certificate files (`jepa-planner keys`):
`NAME.key` holds the public key (safe to copy), `NAME.key_secret` the key pair (keep private).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth


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

    def authorized_keys(self) -> list[bytes]:
        folder = Path(self.authorized_keys_dir)
        if not folder.is_dir():
            raise ValueError(f"authorized arm keys folder {folder} does not exist")
        keys = list(zmq.auth.load_certificates(folder))
        if not keys:
            raise ValueError(f"no arm public keys (*.key) in {folder}: no arm could connect")
        return keys


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
