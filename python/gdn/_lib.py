"""Finding and loading libgdn, and a ctypes mirror of include/gdn.h.

Everything here follows gdn.h field by field and value by value; nothing else in the package
touches ctypes. The library is loaded once, at import, and checked: its version must be the
package's version, and its gdn_decode_params must hold at least the fields this mirror sets.
"""
import ctypes
import ctypes.util
import enum
import os
import warnings
from pathlib import Path

from ._header import header_version

_PACKAGE_DIR = Path(__file__).resolve().parent
# python/gdn/ -> the repository root, where `make` leaves build/libgdn.so and include/gdn.h.
_REPO_ROOT = _PACKAGE_DIR.parent.parent


class Status(enum.IntEnum):
    """gdn_status."""

    OK = 0
    ERR_INVALID_ARGUMENT = 1
    ERR_NULL_POINTER = 2
    ERR_INVALID_SHAPE = 3
    ERR_INVALID_STRIDE = 4
    ERR_UNSUPPORTED_DTYPE = 5
    ERR_UNSUPPORTED_LAYOUT = 6
    ERR_UNSUPPORTED_HEAD_SIZE = 7
    ERR_SLOT_OUT_OF_RANGE = 8
    ERR_MISALIGNED = 9
    ERR_BACKEND_UNAVAILABLE = 10
    ERR_WRONG_MEMORY = 11
    ERR_OVERLAP = 12
    ERR_DEVICE = 13


class DType(enum.IntEnum):
    """gdn_dtype."""

    F32 = 0
    F16 = 1
    BF16 = 2
    F64 = 3
    I32 = 4
    I64 = 5


class Layout(enum.IntEnum):
    """gdn_state_layout: VK is a pool [slots, HV, V, K], KV a pool [slots, HV, K, V]."""

    VK = 0
    KV = 1


class HeadMap(enum.IntEnum):
    """gdn_head_map: GROUPED h = hv / (HV / H), TILED h = hv % H."""

    GROUPED = 0
    TILED = 1


class Backend(enum.IntEnum):
    """gdn_backend."""

    AUTO = 0
    CPU = 1
    CUDA = 2
    REFERENCE = 3


_c_enum = ctypes.c_int  # every gdn enum has values 0..13: the C compiler stores it as an int

MAX_TOKENS = 16
"""GDN_MAX_TOKENS: the most tokens per sequence in one multi-token call."""
MAX_HEAD_DIM = 256
"""GDN_MAX_HEAD_DIM: the largest K and V any backend takes."""


class DecodeParams(ctypes.Structure):
    """gdn_decode_params, in the order of gdn.h. Fields after num_threads are the multi-token
    ones (SPEC operation 2); a library older than them has a shorter struct (see _Library)."""

    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("num_seqs", ctypes.c_int64),
        ("num_q_heads", ctypes.c_int64),
        ("num_v_heads", ctypes.c_int64),
        ("head_dim_k", ctypes.c_int64),
        ("head_dim_v", ctypes.c_int64),
        ("act_dtype", _c_enum),
        ("q", ctypes.c_void_p),
        ("q_stride", ctypes.c_int64),
        ("k", ctypes.c_void_p),
        ("k_stride", ctypes.c_int64),
        ("v", ctypes.c_void_p),
        ("v_stride", ctypes.c_int64),
        ("a", ctypes.c_void_p),
        ("a_stride", ctypes.c_int64),
        ("b", ctypes.c_void_p),
        ("b_stride", ctypes.c_int64),
        ("out", ctypes.c_void_p),
        ("out_stride", ctypes.c_int64),
        ("A_log", ctypes.c_void_p),
        ("dt_bias", ctypes.c_void_p),
        ("scale", ctypes.c_float),
        ("qk_l2norm", ctypes.c_int),
        ("head_map", _c_enum),
        ("state_pool", ctypes.c_void_p),
        ("num_slots", ctypes.c_int64),
        ("state_layout", _c_enum),
        ("state_dtype", _c_enum),
        ("slot_indices", ctypes.c_void_p),
        ("write_slot_indices", ctypes.c_void_p),
        ("index_dtype", _c_enum),
        ("null_slot_zero", ctypes.c_int),
        ("backend", _c_enum),
        ("stream", ctypes.c_void_p),
        ("num_threads", ctypes.c_int),
        ("num_tokens", ctypes.c_int64),
        ("cu_seqlens", ctypes.c_void_p),
        ("token_slots", ctypes.c_void_p),
        ("token_slots_stride", ctypes.c_int64),
        ("num_accepted", ctypes.c_void_p),
        ("bad_index_rows", ctypes.c_void_p),  # checked mode (0.3)
        ("pdl", ctypes.c_int),  # programmatic dependent launch (0.4)
        ("state_slot_stride", ctypes.c_int64),  # paged pools (0.4)
        ("total_tokens", ctypes.c_int64),  # varlen calls of any length (0.5)
        ("has_initial_state", ctypes.c_void_p),
        ("g", ctypes.c_void_p),  # precomputed gates (0.5)
        ("g_stride", ctypes.c_int64),
        ("beta", ctypes.c_void_p),
        ("beta_stride", ctypes.c_int64),
        ("workspace", ctypes.c_void_p),  # the caller's scratch (0.7)
        ("workspace_bytes", ctypes.c_size_t),
    ]


# The one-token decode sets no field past num_threads, so a library whose struct ends there
# (gdn 0.1) serves it; a shorter struct would lack fields this package writes.
_ONE_TOKEN_FIELDS_END = DecodeParams.num_threads.offset + ctypes.sizeof(ctypes.c_int)
# Multi-token decode (decode_tokens) writes every field up to num_accepted: a library with a
# shorter struct would ignore them and compute something else, so it is refused for that call.
MULTI_TOKEN_FIELDS_END = DecodeParams.num_accepted.offset + ctypes.sizeof(ctypes.c_void_p)
# Checked mode (bad_index_rows, gdn 0.3): only a library whose struct holds the field can take it.
COUNTER_FIELD_END = DecodeParams.bad_index_rows.offset + ctypes.sizeof(ctypes.c_void_p)
# Paged pools (state_slot_stride, gdn 0.4): only a library whose struct holds the field can take them.
SLOT_STRIDE_FIELD_END = DecodeParams.state_slot_stride.offset + ctypes.sizeof(ctypes.c_int64)
# Varlen calls of any length, has_initial_state and precomputed g/beta (gdn 0.5): every field up to
# beta_stride. A library with a shorter struct would ignore them and compute something else.
VARLEN_FIELDS_END = DecodeParams.beta_stride.offset + ctypes.sizeof(ctypes.c_int64)
# A workspace (gdn 0.7): only a library whose struct holds the fields (and has
# gdn_decode_workspace_size) is given one.
WORKSPACE_FIELDS_END = DecodeParams.workspace_bytes.offset + ctypes.sizeof(ctypes.c_size_t)


def _declare(lib):
    """Argument and result types of every gdn function the package calls."""
    signatures = {
        "gdn_version_number": (ctypes.c_uint, []),
        "gdn_version_string": (ctypes.c_char_p, []),
        "gdn_status_string": (ctypes.c_char_p, [_c_enum]),
        "gdn_last_error": (ctypes.c_char_p, []),
        "gdn_dtype_size": (ctypes.c_size_t, [_c_enum]),
        "gdn_dtype_name": (ctypes.c_char_p, [_c_enum]),
        "gdn_backend_name": (ctypes.c_char_p, [_c_enum]),
        "gdn_backend_built": (ctypes.c_int, [_c_enum]),
        "gdn_cuda_device_count": (ctypes.c_int, []),
        "gdn_cuda_device_info": (_c_enum, [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t,
                                           ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)]),
        "gdn_decode_params_init": (None, [ctypes.c_void_p]),
        "gdn_decode": (_c_enum, [ctypes.c_void_p]),
        "gdn_decode_backend_for": (_c_enum, [ctypes.c_void_p, ctypes.POINTER(_c_enum)]),
    }
    if hasattr(lib, "gdn_decode_workspace_size"):  # (0.7)
        signatures["gdn_decode_workspace_size"] = (_c_enum, [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)])
    for name, (restype, argtypes) in signatures.items():
        function = getattr(lib, name)
        function.restype = restype
        function.argtypes = argtypes


def _candidates():
    """(description, what to hand to ctypes.CDLL) in the documented search order."""
    explicit = os.environ.get("GDN_LIBRARY")
    if explicit:
        # An explicit choice is never silently replaced by another library.
        return [("$GDN_LIBRARY", explicit)]
    found = [("next to the package", str(_PACKAGE_DIR / "libgdn.so")),
             ("the repository build", str(_REPO_ROOT / "build" / "libgdn.so"))]
    system = ctypes.util.find_library("gdn")
    found.append(("ctypes.util.find_library('gdn')", system))
    return found


def _load_cdll():
    """The first candidate that loads, or ImportError listing every one tried and why not."""
    tried = []
    for where, path in _candidates():
        if path is None:
            tried.append(f"  {where}: not found")
            continue
        if os.sep in path and not os.path.exists(path):
            tried.append(f"  {where}: {path}: no such file")
            continue
        try:
            return ctypes.CDLL(path), path
        except OSError as error:
            tried.append(f"  {where}: {path}: {error}")
    raise ImportError("gdn: cannot load libgdn. Build it with `make lib` in the gdn repository, or set "
                      "GDN_LIBRARY to the path of libgdn.so. Tried:\n" + "\n".join(tried))


def _expected_version():
    """The version this package was built as: _version.py (written at build time), else the
    header of the repository the package sits in; None when neither is there."""
    try:
        from ._version import __version__
        return __version__
    except ImportError:
        pass
    header = _REPO_ROOT / "include" / "gdn.h"
    return header_version(header) if header.is_file() else None


class _Library:
    """The loaded libgdn: its ctypes handle, path, version and the size of its params struct."""

    def __init__(self):
        self.cdll, self.path = _load_cdll()
        try:
            _declare(self.cdll)
        except AttributeError as error:
            raise ImportError(f"gdn: {self.path} is not a gdn library this package can use: {error}") from None
        self.version = self.cdll.gdn_version_string().decode()
        # The package's version: what it was built as, the library's when that is unknown.
        self.package_version = _expected_version() or self.version
        self._check_version()
        self.params_size = self._library_params_size()

    def _check_version(self):
        if self.package_version == self.version:
            return
        message = (f"gdn: the Python package is version {self.package_version} but {self.path} is version "
                   f"{self.version}; rebuild the library (`make lib`) or reinstall the package "
                   "(`pip install ./python`)")
        if os.environ.get("GDN_ALLOW_VERSION_MISMATCH") == "1":
            warnings.warn(message, RuntimeWarning, stacklevel=3)
        else:
            raise ImportError(message + " (GDN_ALLOW_VERSION_MISMATCH=1 turns this into a warning)")

    def _library_params_size(self):
        """sizeof(gdn_decode_params) in the loaded library, learnt from gdn_decode_params_init.

        The buffer is much larger than any struct so that a newer library cannot write past it."""
        probe = (ctypes.c_byte * 4096)()
        self.cdll.gdn_decode_params_init(probe)
        size = ctypes.c_size_t.from_buffer(probe).value
        if not _ONE_TOKEN_FIELDS_END <= size <= len(probe):
            raise ImportError(f"gdn: {self.path} reports sizeof(gdn_decode_params) = {size}, which this "
                              f"package cannot use (it needs at least {_ONE_TOKEN_FIELDS_END})")
        return size

    def new_params(self):
        """A DecodeParams filled by gdn_decode_params_init, with the library's struct_size.

        The struct lies in a buffer as large as the larger of the two structs: a newer library
        initialises fields unknown here (zero), an older one leaves the unknown tail zero."""
        buffer = (ctypes.c_byte * max(self.params_size, ctypes.sizeof(DecodeParams)))()
        self.cdll.gdn_decode_params_init(buffer)
        return DecodeParams.from_buffer(buffer)

    def last_error(self):
        return self.cdll.gdn_last_error().decode(errors="replace")

    def status_string(self, status):
        return self.cdll.gdn_status_string(int(status)).decode(errors="replace")


LIB = _Library()
