"""What can go wrong with a model, by who is to blame: the request (InputError), the session, the bundle, the device."""

from __future__ import annotations


class InputError(ValueError):
    """A request whose tensors do not fit the model; the message names the input and what was expected."""


class InferenceError(RuntimeError):
    """The session failed on inputs that passed validation."""


class ModelLoadError(RuntimeError):
    """onnxruntime refused to build a session for the model (corrupt file, unsupported operator, …)."""


class GoldenCheckError(RuntimeError):
    """The model does not reproduce its golden outputs on this device within its precision's tolerance."""


class ProviderError(RuntimeError):
    """No usable provider, a required provider the device cannot use, or a precision the provider lacks."""


class MemoryBudgetError(RuntimeError):
    """Loading the model would exceed the device's memory budget: refused before anything is allocated."""


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
