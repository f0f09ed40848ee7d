"""Exceptions carrying a gdn status and the library's message for the failed call.

A failed gdn call wrote nothing (gdn.h): catching one of these leaves the state pool and the
outputs as they were before the call.
"""
from ._lib import LIB, Status


class GdnError(RuntimeError):
    """A gdn call returned `status`; `message` is gdn_last_error() for that call."""

    def __init__(self, status, message, function="gdn_decode"):
        self.status = Status(status)
        self.message = message
        self.function = function
        super().__init__(f"{function}: {LIB.status_string(self.status)} ({self.status.name}): {message}")


class GdnArgumentError(GdnError, ValueError):
    """The library refused an argument (shape, stride, dtype, slot index, alignment, memory...)."""


class GdnBackendUnavailableError(GdnError):
    """The backend asked for is not built into this libgdn, or has no usable device."""


class GdnDeviceError(GdnError):
    """The GPU runtime reported an error (launch failure)."""


def error_for(status, function="gdn_decode"):
    """The exception for a non-OK `status` just returned on this thread by `function`."""
    status = Status(status)
    if status == Status.ERR_BACKEND_UNAVAILABLE:
        kind = GdnBackendUnavailableError
    elif status == Status.ERR_DEVICE:
        kind = GdnDeviceError
    else:
        kind = GdnArgumentError
    return kind(status, LIB.last_error(), function)


def check(status, function="gdn_decode"):
    """Raises the matching GdnError unless `status` is GDN_OK."""
    if status != Status.OK:
        raise error_for(status, function)
