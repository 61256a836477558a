"""Real models that can be had offline, prepared into ONNX files with their preprocessing and labels."""

from .base import ZooModel, prepare  # noqa: F401
