"""`model-tools`: export, optimize, quantize, evaluate, tune and bundle models.

Each sub-command lives in its own module with `add_parser(subparsers)`; the module sets `func` on its parser.
Errors that are the user's (a bad file, a bad argument) are raised as UsageError and end in one line, exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings

from .errors import UsageError

# Module names under model_tools.commands, in the order --help lists them.
COMMANDS = ["keygen", "bundle", "zoo", "export", "optimize", "quantize", "evaluate", "tune"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="model-tools",
        description="Turn trained models into fast, signed edgefleet bundles.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"model_tools.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"model_tools.commands.{name}":
                continue  # a command not built yet
            raise
        module.add_parser(sub)
    return parser


# Libraries that log progress at INFO/WARNING (onnxruntime's quantizer logs through the root logger, torch's
# exporter through its own handlers): their chatter is shown only with --verbose.
NOISY = ["torch", "torch.onnx", "torch.export", "onnxscript", "onnx_ir", "onnxruntime", "skl2onnx", "matplotlib", "PIL"]


def configure_logging(verbose: bool) -> None:
    """Our own messages at INFO, everyone else's only with --verbose; the root logger is never set to INFO.

    One handler of our own on the root logger, filtered (onnxruntime's quantizer warns through the root logger
    itself, `logging.warning(...)`, and logs tracebacks of steps it recovers from at ERROR: what fails for the
    user arrives as a UsageError). Handlers someone else installed are left alone.
    """
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "_model_tools", False)), None)
    if handler is None:
        handler = logging.StreamHandler()
        handler._model_tools = True  # type: ignore[attr-defined]
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    handler.filters.clear()
    logging.getLogger("model_tools").setLevel(logging.DEBUG if verbose else logging.INFO)
    if verbose:
        root.setLevel(logging.DEBUG)
        for name in NOISY:
            logging.getLogger(name).setLevel(logging.NOTSET)
        return
    handler.addFilter(lambda r: r.name.startswith("model_tools"))
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
