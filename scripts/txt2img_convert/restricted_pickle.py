"""A pickle reader for PyTorch checkpoints that can never run their code.

Every pickled file (.ckpt, .bin, .pt) is read here, never by torch.load: torch.load(weights_only=True) has been
bypassed to run code (CVE-2025-32434, torch <= 2.5.1), and it refuses PyTorch Lightning checkpoints (CompVis'
sd-v1-4.ckpt, ...), which also pickle callbacks and hyper-parameters beside the weights. This reader resolves only
the globals tensors are built from and turns every other one into an inert stand-in that is never imported or
called, for both of torch.save's formats (zip and the legacy one), and reads the storages itself, checking each
zip record's CRC (which torch.load skips, so that a damaged download would become other weights).
"""

import io
import os
import pickle
import struct
import zipfile
import zlib
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch


class _Ignored:
    """What the restricted unpickler gives for a global it does not trust (a class of a training framework,
    `os.system`, ...): a class that does nothing whatever it is called, built or filled with, and keeps only the
    state it is built with (what the restricted unpickler made: tensors, containers, stand-ins), which
    `stand_in_state` reads. One subclass per global, whose `global_name` says which."""

    global_name = "?"
    state = None

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):
        pass

    def append(self, item):
        pass

    def extend(self, items):
        pass

    def __repr__(self):
        return f"<ignored {self.global_name}>"


def stand_in_state(value):
    """The state a stand-in was built with (a pickled object's __dict__: a dict, or a (dict, slots) tuple), or None
    for anything else."""
    return value.state if isinstance(value, _Ignored) else None


def ignored_name(value) -> Optional[str]:
    """The global that `value` stands for, if it is (an instance of) a restricted unpickler's stand-in."""
    if isinstance(value, _Ignored) or (isinstance(value, type) and issubclass(value, _Ignored)):
        return value.global_name
    return None


class _StorageType:
    """A pickled storage class (`torch.FloatStorage`, ...): only its element type matters."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class _Storage:
    """A pickled storage: its elements as a 1-D tensor, which the tensors built on it view."""

    def __init__(self, elements: torch.Tensor) -> None:
        self.elements = elements


# The storage classes that torch.save names (torch.<Name>Storage, also torch.cuda.*; torch.UntypedStorage is bytes).
_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
    "ComplexDoubleStorage": torch.complex128, "ComplexFloatStorage": torch.complex64, "UntypedStorage": torch.uint8,
}


def _ints(value, what: str) -> Tuple[int, ...]:
    if not isinstance(value, (tuple, list, torch.Size)) or not all(type(v) is int for v in value):
        raise pickle.UnpicklingError(f"a tensor's {what} is {value!r}, not integers")
    return tuple(value)


def _rebuild_tensor(storage, storage_offset, size, stride, *ignored) -> torch.Tensor:
    """torch._utils._rebuild_tensor(_v2) on a `_Storage`; requires_grad, backward hooks and metadata (the
    further arguments) mean nothing to weights and are dropped. A stand-in never becomes (part of) a tensor."""
    if not isinstance(storage, _Storage):
        found = ignored_name(storage)
        raise pickle.UnpicklingError(f"a tensor is built from {'an object of ' + found if found else repr(storage)}"
                                     f"{' (not loaded)' if found else ''} instead of a storage")
    if type(storage_offset) is not int:
        raise pickle.UnpicklingError(f"a tensor's storage offset is {storage_offset!r}")
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    if len(size) != len(stride):
        raise pickle.UnpicklingError(f"a tensor has size {size} but stride {stride}")
    try:
        return storage.elements.as_strided(size, stride, storage_offset)
    except RuntimeError as e:  # out of the storage's bounds
        raise pickle.UnpicklingError(f"a tensor does not fit its storage: {e}") from None


def _rebuild_parameter(data, *ignored) -> torch.Tensor:
    """torch._utils._rebuild_parameter(_with_state): the weights are the data; the rest is training state."""
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError(f"a parameter holds {data!r}, not a tensor")
    return data


def _layout(tensor: torch.Tensor):
    return tensor.data_ptr(), tuple(tensor.shape), tensor.stride()


# The globals that a state dict of tensors is made of, by "module.name"; torch.load(weights_only=True) allows
# the same (and a few more, e.g. sparse tensors, which SD checkpoints do not hold). Tensors are built by
# `_RestrictedUnpickler._rebuild_tensor`, which keeps them to check.
_REBUILD_TENSOR = {"torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2"}
_TRUSTED: Dict[str, object] = {
    "collections.OrderedDict": OrderedDict,
    "torch.Size": torch.Size,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
}
_STORAGE_TYPES = {f"{module}.{name}": dtype for name, dtype in _STORAGE_DTYPES.items()
                  for module in ("torch", "torch.cuda")}
_STORAGE_TYPES["torch.storage.UntypedStorage"] = torch.uint8


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only `_TRUSTED` globals: every other one becomes an `_Ignored` stand-in,
    recorded in `ignored`. It imports nothing, and the only callables a pickle can reach are the trusted
    containers and the tensor builders above. `storage(pid)` answers persistent ids (torch.save's storages)."""

    def __init__(self, file, storage: Callable, ignored: Dict[str, type]) -> None:
        super().__init__(file, encoding="utf-8")
        self._storage = storage
        self._ignored = ignored

    def find_class(self, module, name):
        full = f"{module}.{name}"
        if full in _REBUILD_TENSOR:
            return self._rebuild_tensor
        if full in _TRUSTED:
            return _TRUSTED[full]
        if full in _STORAGE_TYPES:
            # A new one each time: a pickle may change an object it names (BUILD sets attributes), which for a
            # shared one would change how later files are read.
            return _StorageType(_STORAGE_TYPES[full])
        if full not in self._ignored:
            self._ignored[full] = type(f"Ignored[{full}]", (_Ignored,), {"global_name": full})
        return self._ignored[full]

    def _rebuild_tensor(self, storage, *args) -> torch.Tensor:
        tensor = _rebuild_tensor(storage, *args)
        self._rebuilt.append((tensor, _layout(tensor), storage.elements, storage.elements.data_ptr()))
        return tensor

    def load(self):
        """The pickle's object, once every tensor built from a storage is checked to be still as it was built: a
        pickle can change an object after building it (BUILD), and `Tensor.__setstate__` then calls `set_`, which
        would grow a tensor, and its storage, past what the file holds."""
        self._rebuilt = []
        data = super().load()
        for tensor, layout, elements, address in self._rebuilt:
            if _layout(tensor) != layout or elements.data_ptr() != address or tensor.requires_grad \
                    or tensor._backward_hooks is not None:
                raise pickle.UnpicklingError("a tensor is changed after it is built (a BUILD of its state): it no "
                                             "longer holds what the file's storage holds")
        return data

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or pid[0] not in ("storage", b"storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        if not isinstance(pid[1], _StorageType):
            raise pickle.UnpicklingError(f"a storage of unknown type {ignored_name(pid[1]) or pid[1]!r}")
        return self._storage(pid)


class Damaged(Exception):
    """The file is not all there, or not as torch.save wrote it (an interrupted or corrupted download)."""


def _bytes_of(elements: torch.Tensor):
    return elements.view(-1).view(torch.uint8).numpy() if elements.numel() else b""


def _read_into(f, elements: torch.Tensor, what: str) -> None:
    raw = _bytes_of(elements)
    done = 0
    while done < len(raw):
        n = f.readinto(raw[done:])
        if not n:
            raise Damaged(f"{what} is truncated")
        done += n


def _read_record(archive: zipfile.ZipFile, file, info: zipfile.ZipInfo, elements: torch.Tensor) -> None:
    """A zip record's bytes into `elements`, checked against its CRC. torch.save stores records uncompressed: those are
    read straight from `file` (the archive's file), which is twice as fast as through zipfile."""
    what = f"record {info.filename}"
    if info.compress_type == zipfile.ZIP_STORED:
        file.seek(info.header_offset)
        header = file.read(30)
        if len(header) != 30 or header[:4] != b"PK\x03\x04":
            raise Damaged(f"{what} has no local header where the archive's directory puts it")
        name_length, extra_length = struct.unpack("<HH", header[26:30])
        file.seek(info.header_offset + 30 + name_length + extra_length)
        _read_into(file, elements, what)
    else:
        with archive.open(info) as record:
            _read_into(record, elements, what)
    if zlib.crc32(_bytes_of(elements)) != info.CRC:
        raise Damaged(f"{what} fails its CRC check")


def _storage_elements(dtype: torch.dtype, numel, available: int) -> torch.Tensor:
    """Room for a storage of `numel` elements, which a file of `available` bytes must be able to hold."""
    if type(numel) is not int or not 0 <= numel * torch.empty((), dtype=dtype).element_size() <= available:
        raise pickle.UnpicklingError(f"a storage of {numel!r} {dtype} elements does not fit the file")
    return torch.empty(numel, dtype=dtype)


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


def unpickle(path: str, ignored: Dict[str, type], before_reading: Optional[Callable[[Any], None]] = None):
    """The object that torch.save wrote to `path`, unpickled by `_RestrictedUnpickler` (zip archives of
    torch >= 1.6 and the older "legacy" stream). Raises Damaged for a file cut short or with a record that fails its
    CRC check, pickle.UnpicklingError (and what reading malformed bytes raises) for other files. `before_reading` is
    called with the object once it is unpickled, before its tensors' bytes are read (they hold garbage then), so
    that a file can be refused by its names without reading gigabytes first."""
    if zipfile.is_zipfile(path):
        try:
            return _unpickle_zip(path, ignored, before_reading)
        except zipfile.BadZipFile as e:  # zipfile's own CRC check of the small records it reads
            raise Damaged(str(e)) from None

    with open(path, "rb") as f:
        if f.read(4) == b"PK\x03\x04":
            raise Damaged("a zip archive without its directory, which is written at its end: cut short")
        f.seek(0)

        def plain():
            return _RestrictedUnpickler(f, lambda pid: None, ignored).load()

        if plain() != _LEGACY_MAGIC:
            raise pickle.UnpicklingError("not a file written by torch.save")
        if plain() != _LEGACY_PROTOCOL:
            raise pickle.UnpicklingError("unsupported torch.save protocol version")
        info = plain()
        if not isinstance(info, dict) or not info.get("little_endian", False):
            raise pickle.UnpicklingError("big-endian tensor data is not supported")
        roots: Dict[str, torch.Tensor] = {}

        def legacy_storage(pid):
            if len(pid) != 6:
                raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
            _, storage_type, key, _location, numel, view = pid
            if key not in roots:
                roots[key] = _storage_elements(storage_type.dtype, numel, os.fstat(f.fileno()).st_size)
            elements = roots[key]
            if view is not None:  # (view key, offset, size) in elements of the root storage
                offset, count = _ints(view[1:], "view")
                elements = elements[offset:][:count]
            return _Storage(elements)

        data = _RestrictedUnpickler(f, legacy_storage, ignored).load()
        keys = plain()
        if not isinstance(keys, list) or set(keys) != set(roots):
            raise pickle.UnpicklingError("the storages listed do not match those the tensors use")
        if before_reading is not None:
            before_reading(data)
        # The data of each storage follows in the listed order, each after its element count.
        for key in keys:
            elements = roots[key]
            count = f.read(8)
            if len(count) != 8:
                raise Damaged(f"storage {key} is truncated")
            if struct.unpack("<q", count)[0] != elements.numel():
                raise pickle.UnpicklingError(f"storage {key} does not hold the {elements.numel()} elements "
                                             "its tensors use")
            _read_into(f, elements, f"storage {key}")
        return data


def _unpickle_zip(path: str, ignored: Dict[str, type], before_reading: Optional[Callable[[Any], None]]):
    """unpickle() of a zip archive, whose records hold data.pkl and the storages, one a record."""
    with zipfile.ZipFile(path) as archive, open(path, "rb") as file:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise pickle.UnpicklingError("not a torch.save archive (no single <folder>/data.pkl)")
        root = pickles[0][: -len("data.pkl")]
        if root + "byteorder" in archive.namelist() and archive.read(root + "byteorder") != b"little":
            raise pickle.UnpicklingError("big-endian tensor data is not supported")
        storages: Dict[str, _Storage] = {}
        records: List[Tuple[zipfile.ZipInfo, torch.Tensor]] = []

        def zip_storage(pid):
            _, storage_type, key, _location, numel = pid
            if key not in storages:
                info = archive.getinfo(f"{root}data/{key}")
                elements = _storage_elements(storage_type.dtype, numel, info.file_size)
                if info.file_size != elements.numel() * elements.element_size():
                    raise pickle.UnpicklingError(f"record {info.filename} does not hold {numel} {storage_type.dtype}")
                records.append((info, elements))
                storages[key] = _Storage(elements)
            return storages[key]

        # Read whole, so that zipfile checks its CRC (the unpickler stops at the pickle's end, before zipfile would).
        data = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), zip_storage, ignored).load()
        if before_reading is not None:
            before_reading(data)
        for info, elements in records:
            _read_record(archive, file, info, elements)
        return data
