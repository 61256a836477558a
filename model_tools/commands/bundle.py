"""`model-tools bundle`: a signed, immutable bundle from an ONNX model and golden inputs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fleet_protocol.signing import sha256_file

from ..errors import UsageError
from .arguments import json_object
from ..pack import key_path, pack_bundle


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bundle",
        help="pack and sign a model bundle",
        description="Read inputs/outputs from the ONNX graph, compute golden outputs with onnxruntime, "
        "write NAME-VERSION.bundle signed with an ed25519 key.",
    )
    p.add_argument("model", type=Path, help="the .onnx file")
    p.add_argument("--name", required=True, help="model name (lower case, e.g. digits)")
    p.add_argument("--version", required=True, help="semantic version, e.g. 1.2.0")
    p.add_argument("--golden", required=True, type=Path, help=".npz of sample inputs keyed by input name")
    p.add_argument("--key", required=True, type=Path, help="ed25519 private key (PEM) from `model-tools keygen`")
    p.add_argument("--out", type=Path, default=Path("."), help="output folder (default: .)")
    p.add_argument("--task", default="other", help="classification, detection, ocr-recognition, … (default: other)")
    p.add_argument("--labels", type=Path, help="text file, one label per line")
    p.add_argument("--preprocessing", type=json_object, help="JSON object: size, layout, color, scale, mean, std")
    p.add_argument("--hardware-class", default="generic", help="hardware class this variant is for (default: generic)")
    p.add_argument("--atol", type=float, default=1e-4, help="golden check absolute tolerance")
    p.add_argument("--rtol", type=float, default=1e-3, help="golden check relative tolerance")
    p.add_argument("--encrypt", action="store_true",
                   help="encrypt model.onnx (AES-256-GCM, fresh data key); writes NAME-VERSION.key beside the bundle "
                   "(mode 0600): upload it with the bundle, never ship it to devices")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        key = args.key.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read key {args.key}: {exc.strerror}") from None
    labels = None
    if args.labels:
        try:
            labels = [line.strip() for line in args.labels.read_text().splitlines() if line.strip()]
        except OSError as exc:
            raise UsageError(f"cannot read labels {args.labels}: {exc.strerror}") from None
    path, manifest = pack_bundle(
        args.model, name=args.name, version=args.version, golden_inputs=args.golden, private_key_pem=key,
        out_dir=args.out, task=args.task, labels=labels, preprocessing=args.preprocessing, hardware_class=args.hardware_class,
        tolerance=(args.atol, args.rtol), encrypt=args.encrypt,
    )
    if args.json:
        out = {"bundle": str(path), "sha256": sha256_file(path), "manifest": manifest.model_dump(mode="json")}
        if manifest.encryption:
            out["key_file"] = str(key_path(path))
        print(json.dumps(out))
    else:
        print(f"{path}  sha256 {sha256_file(path)}")
        if manifest.encryption:
            print(f"{key_path(path)}  data key {manifest.encryption.key_id} (secret: upload it with the bundle)")
    return 0
