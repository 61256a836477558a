"""Post-processing plug-ins; importing this package registers every kind."""

from . import blazeface, textdet  # noqa: F401  (registration)
from .base import PostprocessConfig, PostProcessor, UnsupportedModel, build, plugin_type  # noqa: F401
