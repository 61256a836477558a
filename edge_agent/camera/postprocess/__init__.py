"""Post-processing plug-ins, one per task; importing this package registers every one."""

from . import detection, ocr_detection, ocr_orientation, ocr_recognition  # noqa: F401  (registration)
from .base import (  # noqa: F401
    BoxDecoder,
    CropReader,
    PostprocessConfig,
    PostProcessor,
    UnsupportedModel,
    build,
    plugin_class,
    tasks,
)
