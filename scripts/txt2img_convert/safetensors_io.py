"""Reader and writer for the .safetensors format (no dependency on the safetensors package).

Layout: 8-byte little-endian header length N, N bytes of JSON header mapping each name to
{"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the end of the header), an optional
"__metadata__" entry of string pairs, then the raw little-endian row-major data.

Reading errors are ValueErrors that say what is wrong without naming the file: the caller names it.
"""

import json
import struct
from typing import Dict, Optional

import torch

_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
# SD 1.x fp8 uploads store their weights in these; PyTorch has the dtypes from 2.1 on.
_FLOAT8 = {"F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
_DTYPES.update({name: getattr(torch, attr) for name, attr in _FLOAT8.items() if hasattr(torch, attr)})
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}

# Same bound as the reference implementation: a larger header is a corrupt or hostile file.
_MAX_HEADER_BYTES = 100_000_000


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def is_safetensors(path: str) -> bool:
    """Whether `path` holds safetensors rather than a PyTorch pickle, judged by its first bytes, since downloads get
    renamed and upper-cased: "{" after the 8-byte header length is safetensors (a truncated one too, which its reader
    then calls truncated; neither of torch.save's formats has it there), a zip (torch.save) or a pickle's PROTO
    opcode is a pickle. Anything else goes by the (lower-cased) extension, whose reader then says what is wrong."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        head = b""
    if head[8:9] == b"{":
        return True
    if head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
        return False
    return path.lower().endswith(".safetensors")


def read_header(path: str) -> Dict[str, dict]:
    """The JSON header of `path` (tensor entries and `__metadata__` if present)."""
    with open(path, "rb") as f:
        header, _ = _read_header(f)
    return header


def _read_header(f):
    prefix = f.read(8)
    if len(prefix) != 8:
        raise ValueError("too short for a safetensors file")
    (length,) = struct.unpack("<Q", prefix)
    if length > _MAX_HEADER_BYTES:
        raise ValueError(f"header length {length} is implausible")
    raw = f.read(length)
    if len(raw) != length:
        raise ValueError("truncated header")
    try:
        header = json.loads(raw.decode("utf-8"))
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError both
        raise ValueError(f"its header is not valid JSON ({e}): a damaged file, or its header length is "
                         "wrong") from None
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    return header, 8 + length


def load_file(path: str) -> Dict[str, torch.Tensor]:
    """All tensors of a .safetensors file, each in its own CPU storage."""
    with open(path, "rb") as f:
        header, data_start = _read_header(f)
        f.seek(0, 2)
        data_size = f.tell() - data_start
        entries = {name: entry for name, entry in header.items() if name != "__metadata__"}
        for name, entry in entries.items():
            offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
            if (not isinstance(entry, dict) or not isinstance(entry.get("shape"), list) or not isinstance(offsets, list)
                    or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)):
                raise ValueError(f"tensor {name!r} has a malformed header entry: {json.dumps(entry)[:200]}")
        # A download that stopped early keeps its whole header: say so rather than name the first tensor cut off.
        described = max((int(entry["data_offsets"][1]) for entry in entries.values()), default=0)
        if described > data_size:
            raise ValueError(f"truncated: its header describes {described} bytes of tensor data but the "
                             f"file holds {max(data_size, 0)} (an interrupted download? fetch it again)")
        # As the reference reader requires: more bytes than described would be read from the wrong offsets (a header
        # length that cuts into the header's padding still parses).
        if described < data_size:
            raise ValueError(f"its header describes {described} bytes of tensor data but the file holds "
                             f"{data_size}: a damaged file, or its header length is wrong")
        tensors: Dict[str, torch.Tensor] = {}
        for name, entry in entries.items():
            dtype_name = entry.get("dtype")
            if dtype_name in _FLOAT8 and dtype_name not in _DTYPES:
                raise ValueError(f"it holds float8 weights ({dtype_name}, in tensor {name!r}), which PyTorch "
                                 f"{torch.__version__} cannot read: run the converter under PyTorch 2.1 or later "
                                 "(set TXT2IMG_PYTHON to a python3 that has it), or convert the file to fp16 first")
            if dtype_name not in _DTYPES:
                raise ValueError(f"tensor {name!r} has unsupported dtype {dtype_name!r}")
            dtype = _DTYPES[dtype_name]
            shape = [int(s) for s in entry["shape"]]
            begin, end = (int(o) for o in entry["data_offsets"])
            numel = 1
            for s in shape:
                numel *= s
            if not 0 <= begin <= end <= data_size or end - begin != numel * _element_size(dtype):
                raise ValueError(f"tensor {name!r} has inconsistent data_offsets {entry['data_offsets']}")
            # Reading straight into a fresh uint8 tensor keeps every tensor aligned and avoids holding the
            # whole file in memory twice (SD checkpoints are several GB).
            raw = torch.empty(end - begin, dtype=torch.uint8)
            f.seek(data_start + begin)
            if end > begin and f.readinto(raw.numpy()) != end - begin:
                raise ValueError(f"truncated data for tensor {name!r}")
            tensors[name] = raw.view(dtype).reshape(shape)
    return tensors


def save_file(tensors: Dict[str, torch.Tensor], path: str, metadata: Optional[Dict[str, str]] = None) -> None:
    """Write `tensors` (any supported dtype, any device) to `path`, names in sorted order."""
    header: Dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        tensor = tensors[name]
        if tensor.dtype not in _NAMES:
            raise ValueError(f"tensor {name!r}: unsupported dtype {tensor.dtype}")
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        header[name] = {
            "dtype": _NAMES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + data.numel()],
        }
        blobs.append(data)
        offset += data.numel()
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    # Padding the header to 8 bytes keeps the data section aligned for memory-mapping readers.
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for data in blobs:
            f.write(data.numpy().tobytes())
