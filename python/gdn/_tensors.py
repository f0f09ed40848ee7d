"""A uniform view of NumPy arrays and torch tensors: gdn dtype, shape, element strides, address,
device.

Neither NumPy nor torch is imported here: an object can only be a torch tensor if torch is
already imported, so the check looks in sys.modules and importing gdn stays cheap.
"""
import sys
from dataclasses import dataclass, replace

from ._lib import DType

_NUMPY_DTYPES = {"float32": DType.F32, "float16": DType.F16, "float64": DType.F64,
                 "int32": DType.I32, "int64": DType.I64}
_TORCH_DTYPES = {"float32": DType.F32, "float16": DType.F16, "bfloat16": DType.BF16,
                 "float64": DType.F64, "int32": DType.I32, "int64": DType.I64}


@dataclass(frozen=True)
class Tensor:
    """What gdn needs to know of one array argument.

    kind is "numpy" or "torch"; dtype is a DType or None (a dtype gdn never takes); strides are
    in elements; device is "cpu" or "cuda:<index>"."""

    name: str
    obj: object
    kind: str
    dtype: object
    dtype_name: str
    shape: tuple
    strides: tuple
    ptr: int
    device: str
    writable: bool

    def merged_leading(self, stride):
        """The same memory seen with its two leading dimensions as one, `stride` elements apart
        (the caller has checked that the rows are evenly spaced)."""
        shape = (self.shape[0] * self.shape[1],) + self.shape[2:]
        return replace(self, shape=shape, strides=(stride,) + self.strides[2:])

    def buffer_end(self):
        """The address just past the memory that owns this view (the root NumPy array's bytes, the
        torch storage), or None when that cannot be told."""
        if self.kind == "torch":
            try:
                storage = self.obj.untyped_storage()
                return storage.data_ptr() + storage.nbytes()
            except (AttributeError, RuntimeError):  # torch < 2.0, or a tensor without storage
                return None
        import numpy

        root = self.obj
        while isinstance(root.base, numpy.ndarray):
            root = root.base
        byte_bounds = getattr(getattr(numpy.lib, "array_utils", None), "byte_bounds", None) or \
            getattr(numpy, "byte_bounds", None)
        return None if byte_bounds is None else byte_bounds(root)[1]


def _is_numpy(obj):
    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(obj, numpy.ndarray)


def _is_torch(obj):
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def _describe_numpy(name, array):
    if not array.dtype.isnative:
        raise TypeError(f"{name}: byte-swapped dtype {array.dtype.str} (gdn reads native byte order)")
    itemsize = array.dtype.itemsize
    if any(stride % itemsize for stride in array.strides):
        raise ValueError(f"{name}: byte strides {array.strides} are not multiples of the element size {itemsize}")
    return Tensor(name, array, "numpy", _NUMPY_DTYPES.get(array.dtype.name), array.dtype.name, tuple(array.shape),
                  tuple(stride // itemsize for stride in array.strides), array.ctypes.data, "cpu",
                  bool(array.flags.writeable))


def _describe_torch(name, tensor):
    import torch  # already imported: _is_torch found it in sys.modules

    if tensor.layout != torch.strided:
        raise TypeError(f"{name}: a {tensor.layout} tensor; gdn takes dense (strided) tensors")
    if tensor.is_conj() or tensor.is_neg():
        raise TypeError(f"{name}: a tensor with a pending conj/neg view; call .resolve_conj()/.resolve_neg()")
    dtype_name = str(tensor.dtype).replace("torch.", "")
    device = "cpu" if tensor.device.type == "cpu" else str(tensor.device)
    if tensor.device.type == "cuda" and tensor.device.index is None:
        device = f"cuda:{torch.cuda.current_device()}"
    return Tensor(name, tensor, "torch", _TORCH_DTYPES.get(dtype_name), dtype_name, tuple(tensor.shape),
                  tuple(tensor.stride()), tensor.data_ptr(), device, True)


def describe(name, obj):
    """A Tensor for `obj`, a NumPy array or a torch tensor; TypeError for anything else."""
    if _is_numpy(obj):
        return _describe_numpy(name, obj)
    if _is_torch(obj):
        return _describe_torch(name, obj)
    raise TypeError(f"{name}: expected a torch.Tensor or a numpy.ndarray, got {type(obj).__name__}")


def empty_like_shape(template, shape):
    """An uninitialised array of `shape` with template's kind, dtype and device."""
    if template.kind == "torch":
        import torch

        return torch.empty(shape, dtype=template.obj.dtype, device=template.obj.device)
    import numpy

    return numpy.empty(shape, dtype=template.obj.dtype)


def cuda_stream_handle(device):
    """The cudaStream_t (as an int) of torch's current stream on `device` ("cuda:<i>")."""
    import torch

    return torch.cuda.current_stream(torch.device(device)).cuda_stream
