"""`jepa-planner keys`: generate a ZeroMQ CURVE key pair for the service or an arm.

Writes NAME.key (public key: copy it to the other side) and NAME.key_secret (key pair: stays
on this machine, mode 0600). The service loads its own NAME.key_secret plus a folder of arm
NAME.key files it admits; an arm loads its NAME.key_secret plus the service's NAME.key it pins.
Name an arm's key after its robot id: the service lets `arm-1.key` speak for robot `arm-1` only.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import zmq
import zmq.auth

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


def generate_key_pair(folder: Path, name: str, overwrite: bool = False) -> tuple[Path, Path]:
    """Create folder/NAME.key and folder/NAME.key_secret; returns (public, secret) paths."""
    if not _NAME.match(name):
        raise ValueError(f"key name {name!r}: use 1-64 characters of [A-Za-z0-9_.-]")
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
    existing = [str(p) for p in (public, secret) if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"refusing to overwrite {', '.join(existing)} (pass --force)")
    # Create the secret file private before any key material is written into it.
    secret.touch(mode=0o600, exist_ok=True)
    os.chmod(secret, 0o600)
    zmq.auth.create_certificates(folder, name)
    os.chmod(secret, 0o600)
    return public, secret


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="folder for NAME.key and NAME.key_secret")
    parser.add_argument("--name", required=True,
                        help="key name: `service`, or for an arm its robot id (the service admits NAME.key "
                             "for robot id NAME only)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing key pair")


def run(args: argparse.Namespace) -> int:
    if not zmq.has("curve"):
        print("this libzmq was built without CURVE support", file=sys.stderr)
        return 1
    try:
        public, secret = generate_key_pair(args.out, args.name, overwrite=args.force)
    except (ValueError, FileExistsError) as error:
        print(f"keys: {error}", file=sys.stderr)
        return 2
    print(f"public key: {public}  (give this to the other side)")
    print(f"secret key: {secret}  (keep private, mode 0600)")
    return 0
