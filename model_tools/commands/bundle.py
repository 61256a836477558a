"""`model-tools bundle`: a signed, immutable bundle from an ONNX model and golden inputs.

Everything a manifest can say is settable here (task, labels, pre- and post-processing, quantization,
measurements), so any bundle a device or camera accepts can be made from the command line; the quantization is
read from the graph when not given, and a claim that contradicts the graph is refused.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, get_args

from fleet_protocol.manifest import Quantization, Task
from fleet_protocol.signing import sha256_file

from ..errors import UsageError
from ..pack import key_path, pack_bundle
from .arguments import json_object


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bundle",
        help="pack and sign a model bundle",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Read inputs/outputs from the ONNX graph, compute golden outputs with onnxruntime, "
        "write NAME-VERSION.bundle signed with an ed25519 key. JSON values may be given inline or as @FILE.\n\n"
        "examples:\n"
        "  model-tools bundle --zoo blazeface --name blazeface --version 1.0.0 --key signing.pem   # camera-ready\n"
        "  model-tools bundle face.onnx --name face --version 1.0.0 --golden g.npz --key signing.pem \\\n"
        "      --task detection --labels labels.txt --preprocessing @pre.json --postprocessing @blazeface.json\n"
        "  model-tools bundle tune-out/int8-static.onnx --tune-report tune-out/report.json --name digits \\\n"
        "      --version 2.0.0 --golden g.npz --key signing.pem     # quantization and measurements from tune",
    )
    p.add_argument("model", type=Path, nargs="?", help="the .onnx file (default: the --zoo entry's)")
    p.add_argument("--name", required=True, help="model name (lower case, e.g. digits)")
    p.add_argument("--version", required=True, help="semantic version, e.g. 1.2.0")
    p.add_argument("--golden", type=Path, help=".npz of sample inputs keyed by input name (default: the --zoo entry's)")
    p.add_argument("--key", required=True, type=Path, help="ed25519 private key (PEM) from `model-tools keygen`")
    p.add_argument("--out", type=Path, default=Path("."), help="output folder (default: .)")
    p.add_argument("--zoo", metavar="NAME", help="defaults for model, golden, task, labels, pre- and post-processing "
                   "from a zoo entry (`model-tools zoo NAME`); flags given override them")
    d = p.add_argument_group("what the model is and how to feed it")
    d.add_argument("--task", choices=get_args(Task), help="how devices decode the outputs (default: other)")
    d.add_argument("--labels", type=Path, help="text file, one label per line")
    d.add_argument("--preprocessing", type=json_object,
                   help='JSON: size [w, h], layout NCHW|NHWC, color RGB|BGR|GRAY, scale, mean, std')
    d.add_argument("--postprocessing", type=json_object, metavar="JSON",
                   help="JSON settings of the device's post-processing plug-in (the manifest's `extra`): decoder, "
                   "anchors, score_threshold, nms_iou … (see docs/camera.md)")
    d.add_argument("--hardware-class", default="generic", help="hardware class this variant is for (default: generic)")
    m = p.add_argument_group("how it was made and measured")
    m.add_argument("--tune-report", type=Path, help="report.json of `model-tools tune`: quantization, calibration and "
                   "measurements of the variant that MODEL is (matched by content)")
    m.add_argument("--quantization", choices=get_args(Quantization),
                   help="quantization method (default: read from the graph; a contradicting value is refused)")
    m.add_argument("--calibration", help="name of the calibration set of a static int8 model")
    m.add_argument("--calibration-size", type=int, help="number of calibration samples")
    m.add_argument("--measurements", type=json_object, help="JSON measurements (accuracy, latency …), merged over "
                   "those from --tune-report")
    p.add_argument("--atol", type=float, help="golden check absolute tolerance (default 1e-4, quantized 1e-3)")
    p.add_argument("--rtol", type=float, help="golden check relative tolerance (default 1e-3, quantized 1e-2)")
    p.add_argument("--encrypt", action="store_true",
                   help="encrypt model.onnx (AES-256-GCM, fresh data key); writes NAME-VERSION.key beside the bundle "
                   "(mode 0600): upload it with the bundle, never ship it to devices")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=run)


def _from_tune_report(path: Path, model: Path) -> dict[str, Any]:
    from .. import tune

    digest = sha256_file
    try:
        report = json.loads(path.read_text())
        variants = report["variants"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path}: not a report.json of `model-tools tune` ({exc})") from None
    want = digest(model)
    for v in variants:
        have = v.get("sha256")
        if have is None and v.get("path") and Path(v["path"]).is_file():
            have = digest(Path(v["path"]))
        if have == want:
            if v.get("status") != "measured":
                raise UsageError(f"{model} is the {v['name']} variant in {path}, which was not measured ({v.get('verdict')})")
            return tune.manifest_fields({**report, "chosen": v["name"]})
    raise UsageError(f"{model} is none of the variants in {path} (compared by content)")


def run(args: argparse.Namespace) -> int:
    zoo = None
    if args.zoo:
        from ..zoo.base import prepare

        zoo = prepare(args.zoo)
    model = args.model or (zoo.onnx if zoo else None)
    golden = args.golden or (zoo.golden_inputs if zoo else None)
    if model is None:
        raise UsageError("give the MODEL file (or --zoo NAME)")
    if golden is None:
        raise UsageError("give --golden inputs (.npz keyed by input name), or --zoo NAME")
    if not Path(model).is_file():
        raise UsageError(f"{model}: no such file")
    try:
        key = args.key.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read key {args.key}: {exc.strerror}") from None
    labels = zoo.labels if zoo else None
    if args.labels:
        try:
            labels = [line.strip() for line in args.labels.read_text().splitlines() if line.strip()]
        except OSError as exc:
            raise UsageError(f"cannot read labels {args.labels}: {exc.strerror}") from None
    fields: dict[str, Any] = {"quantization": None, "measurements": {}}
    if args.tune_report:
        fields = _from_tune_report(args.tune_report, Path(model))
    quant = dict(fields["quantization"] or {})
    if args.quantization:
        quant["method"] = args.quantization
    if args.calibration is not None:
        quant["calibration"] = args.calibration
    if args.calibration_size is not None:
        quant["calibration_size"] = args.calibration_size
    measurements = {**(fields["measurements"] or {}), **(args.measurements or {})}
    tolerance = None
    if args.atol is not None or args.rtol is not None:
        tolerance = (1e-4 if args.atol is None else args.atol, 1e-3 if args.rtol is None else args.rtol)
    path, manifest = pack_bundle(
        Path(model), name=args.name, version=args.version, golden_inputs=Path(golden), private_key_pem=key,
        out_dir=args.out, task=args.task or (zoo.task if zoo else "other"), labels=labels,
        preprocessing=args.preprocessing or (zoo.preprocessing if zoo else None),
        extra=args.postprocessing or (zoo.extra if zoo else None), hardware_class=args.hardware_class,
        quantization=quant or None, measurements=measurements, tolerance=tolerance, encrypt=args.encrypt,
    )
    if args.json:
        out = {"bundle": str(path), "sha256": sha256_file(path), "manifest": manifest.model_dump(mode="json")}
        if manifest.encryption:
            out["key_file"] = str(key_path(path))
        print(json.dumps(out))
    else:
        print(f"{path}  sha256 {sha256_file(path)}  ({manifest.task}, quantization {manifest.quantization.method})")
        if manifest.encryption:
            print(f"{key_path(path)}  data key {manifest.encryption.key_id} (secret: upload it with the bundle)")
    return 0
