"""`model-tools keygen`: an ed25519 key pair for signing bundles."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from fleet_protocol.signing import generate_keypair, key_id, load_public_key

from ..errors import UsageError


def add_parser(sub) -> None:
    p = sub.add_parser("keygen", help="make an ed25519 key pair for signing bundles",
                       description="Write PREFIX.pem (private, mode 600) and PREFIX.pub.pem (public).")
    p.add_argument("--out", default="signing", help="path prefix of the two files (default: ./signing)")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    private_path = Path(f"{args.out}.pem")
    public_path = Path(f"{args.out}.pub.pem")
    for path in (private_path, public_path):
        if path.exists() and not args.force:
            raise UsageError(f"{path} exists; pass --force to overwrite it")
    private, public = generate_keypair()
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    public_path.write_bytes(public)
    kid = key_id(load_public_key(public))
    if args.json:
        print(json.dumps({"private_key": str(private_path), "public_key": str(public_path), "key_id": kid}))
    else:
        print(f"private key: {private_path}\npublic key:  {public_path}\nkey id:      {kid}")
    return 0
