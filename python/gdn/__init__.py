"""gdn: Gated DeltaNet decode kernels (libgdn, CPU and CUDA backends) for NumPy and PyTorch.

    import gdn
    out = gdn.decode(q, k, v, a, b, A_log, dt_bias, state_pool, slot_indices)
    out = gdn.decode_tokens(q, k, v, a, b, A_log, dt_bias, state_pool, slot_indices=slots)  # [N, T, ...]
    out = gdn.forward(q, k, v, a, b, A_log, dt_bias, state_pool, cu_seqlens=cu, slot_indices=slots)

gdn.decode (one token per sequence), gdn.decode_tokens (several: speculative verify, MTP) and
gdn.forward (varlen sequences of any length: prefill and mixed batches) are the library's own
contract (see their docstrings and include/gdn.h); gdn.compat has
drop-in wrappers with the signatures of FLA, vLLM, SGLang and FlashInfer. The package loads
libgdn with ctypes at import: $GDN_LIBRARY, else a libgdn.so next to the package, else the
repository's build/libgdn.so, else the system's (ctypes.util.find_library).
"""
import ctypes

from ._lib import LIB, MAX_HEAD_DIM, MAX_TOKENS, Backend, DType, HeadMap, Layout, Status
from .decode import _BACKENDS, _option, decode, decode_backend_for, decode_tokens
from .forward import forward
from .errors import GdnArgumentError, GdnBackendUnavailableError, GdnDeviceError, GdnError, check
from . import compat

# The package is released with the library it wraps: its version is the library's, checked at
# load time (a mismatch is an ImportError unless GDN_ALLOW_VERSION_MISMATCH=1).
__version__ = LIB.package_version


def library_version():
    """The version string of the loaded libgdn (gdn_version_string), e.g. "0.2.0"."""
    return LIB.version


def library_path():
    """The path (or name) libgdn was loaded from."""
    return LIB.path


def backend_built(name):
    """Whether backend `name` ("cpu", "cuda", "reference") is compiled into the loaded libgdn."""
    return bool(LIB.cdll.gdn_backend_built(_option("backend", name, _BACKENDS)))


def cuda_device_count():
    """CUDA devices libgdn can use (sm_80 or newer); 0 without the cuda backend, a driver or a GPU."""
    return LIB.cdll.gdn_cuda_device_count()


def cuda_device_info(device=0):
    """(name, (major, minor)) of CUDA device `device`; GdnError if the library cannot use it."""
    name = ctypes.create_string_buffer(256)
    major, minor = ctypes.c_int(), ctypes.c_int()
    check(LIB.cdll.gdn_cuda_device_info(device, name, len(name), ctypes.byref(major), ctypes.byref(minor)),
          "gdn_cuda_device_info")
    return name.value.decode(errors="replace"), (major.value, minor.value)


__all__ = [
    "decode", "decode_tokens", "decode_backend_for", "forward", "compat", "MAX_TOKENS", "MAX_HEAD_DIM",
    "GdnError", "GdnArgumentError", "GdnBackendUnavailableError", "GdnDeviceError",
    "Status", "DType", "Layout", "HeadMap", "Backend",
    "library_version", "library_path", "backend_built", "cuda_device_count", "cuda_device_info",
    "__version__",
]
