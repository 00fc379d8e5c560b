"""A safetensors writer that streams tensor by tensor, so a multi-GB conversion never holds two copies.

``safetensors.torch.save_file`` turns every tensor into bytes before writing the first, which for a
5 GB checkpoint is a second 5 GB in memory. The format is simple (an 8-byte little-endian header length,
a JSON header of dtypes, shapes and byte offsets plus ``__metadata__``, then the raw little-endian data,
https://github.com/huggingface/safetensors#format), so this module writes the header from the shapes and
then each tensor as it is produced. Files are written under a run-unique ``FILE.partial-<pid>-<hex>`` sibling and
renamed into place; the result is read back by ``safetensors`` itself in the tests.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch

from domainfm.shared.outputs import partial_path

DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def write_streaming(
    path: str | Path,
    entries: Iterable[tuple[str, torch.dtype, tuple[int, ...]]],
    produce: Callable[[str], torch.Tensor],
    metadata: Mapping[str, str],
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Writes tensors ``produce(name)`` in the order of ``entries`` (name, dtype, shape) to ``path``.

    ``produce`` is called once per tensor, while writing; its result must have the announced dtype and
    shape (a mismatch aborts and leaves nothing under ``path``). ``progress(nbytes)`` is called after each.
    """
    path = Path(path)
    entries = list(entries)
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, dtype, shape in entries:
        if dtype not in DTYPES:
            raise ValueError(f"tensor {name}: dtype {dtype} cannot be stored in safetensors")
        size = _numel(shape) * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(path)  # unique to this run: never a user's own FILE.partial
    try:
        with partial.open("wb") as handle:
            handle.write(struct.pack("<Q", len(encoded)))
            handle.write(encoded)
            for name, dtype, shape in entries:
                tensor = produce(name)
                if tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
                    raise ValueError(
                        f"tensor {name} changed while writing: {tensor.dtype} {tuple(tensor.shape)}, "
                        f"announced {dtype} {tuple(shape)}"
                    )
                data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
                handle.write(memoryview(data))
                if progress is not None:
                    progress(data.nbytes)
                del tensor, data
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for side in shape:
        count *= int(side)
    return count
