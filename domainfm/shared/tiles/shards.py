"""Whole-shard decoding straight from the shard file, per the zarr v3 ``sharding_indexed`` codec spec.

A shard file holds its inner chunks followed by an index of ``(offset, nbytes)`` little-endian uint64
pairs per chunk (``2**64 - 1`` for a chunk that is not stored) and the CRC-32C of that index. Reading a
whole shard through zarr's array API pays per-chunk overhead (measured: 3.6k tiles/s against 15k tiles/s
for decoding alone, see ``domainfm bench stream``); this decoder reads the file once, checks the index
checksum and decodes every inner chunk with numcodecs straight into the output (numcodecs releases the
GIL, so reader threads run in parallel). Layouts it does not know (other codecs, index at the start) fall
back to zarr.
"""

from __future__ import annotations

import mmap
import threading
from pathlib import Path

import crc32c as _crc32c
import numcodecs
import numpy as np
import zarr

from domainfm.shared.errors import DomainfmError

EMPTY = 2**64 - 1


class ShardCorruptError(DomainfmError):
    """A shard file is truncated, has a bad index checksum, or lacks a chunk."""


class ShardDecoder:
    """Decodes shards of one sharded array; ``supported`` is False for layouts it does not handle."""

    def __init__(self, array: zarr.Array) -> None:
        self.array = array
        self.supported = False
        codecs = array.metadata.codecs
        if len(codecs) != 1 or type(codecs[0]).__name__ != "ShardingCodec":
            return
        sharding = codecs[0]
        if str(getattr(sharding.index_location, "value", sharding.index_location)) != "end":
            return
        if [type(c).__name__ for c in sharding.index_codecs] != ["BytesCodec", "Crc32cCodec"]:
            return
        inner = [type(c).__name__ for c in sharding.codecs]
        if inner[:1] != ["BytesCodec"] or len(inner) > 2:
            return
        endian = getattr(sharding.codecs[0].endian, "value", sharding.codecs[0].endian)
        if array.dtype.itemsize > 1 and endian not in ("little", None):
            return
        if inner[1:] == ["BloscCodec"]:
            self.decoder = numcodecs.Blosc()
        elif inner[1:] == ["ZstdCodec"]:
            self.decoder = numcodecs.Zstd()
        elif inner[1:] == []:
            self.decoder = None
        else:
            return
        self.rows_per_chunk = int(array.chunks[0])
        self.rows_per_shard = int(array.shards[0])
        self.chunks_per_shard = self.rows_per_shard // self.rows_per_chunk
        self.item_shape = tuple(int(v) for v in array.shape[1:])
        if tuple(array.chunks[1:]) != self.item_shape or tuple(array.shards[1:]) != self.item_shape:
            return  # only shards split along the first axis
        self.chunk_bytes = self.rows_per_chunk * int(np.prod(self.item_shape)) * array.dtype.itemsize
        self.supported = True

    @property
    def shard_bytes(self) -> int:
        """Bytes of one decoded shard (the size of an ``out`` buffer for :meth:`decode`)."""
        return self.chunks_per_shard * self.chunk_bytes

    def _open(self, path: Path) -> tuple[mmap.mmap, np.ndarray]:
        """Maps the shard file (no copy out of the page cache) and checks its index."""
        try:
            with open(path, "rb") as handle:
                data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            raise ShardCorruptError(f"shard file {path} is missing") from None
        except ValueError:  # an empty file cannot be mapped
            raise ShardCorruptError(f"shard file {path} is truncated (0 bytes)") from None
        size, index_size = len(data), 16 * self.chunks_per_shard
        if size < index_size + 4:
            raise ShardCorruptError(f"shard file {path} is truncated ({size} bytes)")
        index_bytes = data[size - index_size - 4 : size - 4]
        if np.uint32(_crc32c.crc32c(index_bytes)).tobytes() != data[size - 4 : size]:
            raise ShardCorruptError(f"shard file {path} is corrupt or truncated: its index checksum does not match")
        return data, np.frombuffer(index_bytes, "<u8").reshape(-1, 2)

    def _chunk_span(self, data: mmap.mmap, index: np.ndarray, k: int, path: Path) -> tuple[int, int]:
        """``(offset, nbytes)`` of inner chunk ``k``, checked against the file's size."""
        offset, nbytes = int(index[k, 0]), int(index[k, 1])
        if offset == EMPTY or offset + nbytes > len(data) - 16 * self.chunks_per_shard - 4:
            raise ShardCorruptError(f"shard file {path}: inner chunk {k} is missing or out of bounds")
        if self.decoder is None and nbytes != self.chunk_bytes:
            raise ShardCorruptError(f"shard file {path}: inner chunk {k} holds {nbytes} bytes, not {self.chunk_bytes}")
        return offset, nbytes

    def _decode_chunk(self, data: mmap.mmap, index: np.ndarray, k: int, target: np.ndarray, path: Path) -> None:
        offset, nbytes = self._chunk_span(data, index, k, path)
        try:
            if self.decoder is None:
                target[:] = np.frombuffer(data, np.uint8, count=nbytes, offset=offset)
                return
            chunk = memoryview(data)[offset : offset + nbytes]
            try:
                self.decoder.decode(chunk, out=target)
            finally:
                chunk.release()
        except (RuntimeError, ValueError) as error:  # numcodecs and numpy report damage this way
            raise ShardCorruptError(f"shard file {path}: inner chunk {k} cannot be decoded ({error})") from error

    def decode(self, path: Path, rows: int, expected_crc: int | None = None) -> np.ndarray:
        """The first ``rows`` rows of the shard in ``path``; with ``expected_crc``, checks the whole file first."""
        data, index = self._open(path)
        if expected_crc is not None:
            check = FileCheck(data, path, expected_crc)
            check.finish()
        out = np.empty(self.shard_bytes, np.uint8)
        with data:
            for k in range(-(-rows // self.rows_per_chunk)):
                self._decode_chunk(data, index, k, out[k * self.chunk_bytes : (k + 1) * self.chunk_bytes], path)
        return out.view(self.array.dtype).reshape(-1, *self.item_shape)[:rows]

    def copy_rows(
        self, path: Path, rows: np.ndarray, targets: list[np.ndarray], expected_crc: int | None = None
    ) -> None:
        """Copies row ``rows[i]`` (local to the shard) of the shard in ``path`` into ``targets[i]``.

        Only the inner chunks holding ``rows`` are decoded, one at a time, into a per-thread scratch
        buffer of one inner chunk (about 2 MiB, so it is still in cache when its rows are copied out).
        Uncompressed chunks are not copied at all: each row is copied once, from the mapped file (the
        page cache) straight to its target.

        With ``expected_crc`` the CRC-32C of the whole file is computed on the way, in file order, and
        checked after the last chunk: a mismatch raises :class:`ShardCorruptError` before this returns,
        so a caller never hands on what it copied from a changed file. An uncompressed chunk is checked
        row by row, each row just after it is copied: the copy brings the row from memory (the page cache)
        and the checksum then reads it from the core's cache, so memory is read once, as without checks
        (the cost measured with ``domainfm bench stream`` is in docs/reliability.md).
        """
        data, index = self._open(path)
        wanted: dict[int, list[int]] = {}
        for position, row in enumerate(rows.tolist()):
            wanted.setdefault(row, []).append(position)
        needed = sorted({row // self.rows_per_chunk for row in wanted})
        check = None if expected_crc is None else FileCheck(data, path, expected_crc)
        if check is not None:
            needed.sort(key=lambda k: int(index[k, 0]))
        try:
            if self.decoder is None:
                for k in needed:
                    offset, nbytes = self._chunk_span(data, index, k, path)
                    chunk = np.frombuffer(data, np.uint8, count=nbytes, offset=offset)
                    chunk = chunk.view(self.array.dtype).reshape(-1, *self.item_shape)
                    if check is not None:
                        check.upto(offset)  # the bytes before this chunk (none in zarr's layout)
                    _copy_chunk_rows(chunk, k * self.rows_per_chunk, wanted, targets, check)
                    del chunk
            else:
                scratch = _scratch(self.chunk_bytes)
                chunk = scratch.view(self.array.dtype).reshape(-1, *self.item_shape)
                for k in needed:
                    if check is not None:
                        offset, nbytes = self._chunk_span(data, index, k, path)
                        check.upto(offset + nbytes)
                    self._decode_chunk(data, index, k, scratch, path)
                    _copy_chunk_rows(chunk, k * self.rows_per_chunk, wanted, targets, None)
            if check is not None:
                check.finish()
        finally:
            if check is not None:
                check.release()
            data.close()


def _copy_chunk_rows(
    chunk: np.ndarray, first_row: int, wanted: dict[int, list[int]], targets: list[np.ndarray], check: FileCheck | None
) -> None:
    """Copies the wanted rows of one chunk, whose rows are ``first_row`` on.

    With ``check``, every row of the chunk is added to the checksum, in order, just after it is copied.
    """
    for r in range(len(chunk)):
        positions = wanted.get(first_row + r)
        if check is None and positions is None:
            continue
        source = chunk[r]
        for position in positions or ():
            targets[position][...] = source
        if check is not None:
            check.add(source)  # the row the copy has just brought into the cache


class FileCheck:
    """The running CRC-32C of a mapped shard file, fed in file order and compared at the end."""

    def __init__(self, data: mmap.mmap, path: Path, expected: int) -> None:
        self.data: np.ndarray | None = np.frombuffer(data, np.uint8)
        self.path, self.expected, self.crc, self.pos = path, int(expected), 0, 0

    def upto(self, end: int) -> None:
        """Adds the file's bytes up to ``end`` (exclusive) to the checksum."""
        if self.data is not None and end > self.pos:
            self.crc = _crc32c.crc32c(self.data[self.pos : end], self.crc)
            self.pos = end

    def add(self, row: np.ndarray) -> None:
        """Adds the next bytes of the file, given as the array that maps them (a row about to be copied)."""
        if self.data is not None:
            self.crc = _crc32c.crc32c(row, self.crc)
            self.pos += row.nbytes

    def finish(self) -> None:
        """Adds the rest of the file and raises :class:`ShardCorruptError` if the checksum differs."""
        if self.data is None:
            return
        self.upto(len(self.data))
        self.release()
        if self.crc != self.expected:
            raise ShardCorruptError(
                f"shard file {self.path} does not match its recorded checksum (crc32c {self.crc:08x}, recorded "
                f"{self.expected:08x}): it was changed, damaged or swapped with another shard; rebuild the store "
                "(rerun the ingest command with --overwrite)"
            )

    def release(self) -> None:
        """Drops the view of the map (so the map can close)."""
        self.data = None


def file_crc32c(path: Path) -> int:
    """CRC-32C of a whole file (mapped, not copied)."""
    with open(path, "rb") as handle:
        if handle.seek(0, 2) == 0:
            return 0
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            view = np.frombuffer(data, np.uint8)
            try:
                return int(_crc32c.crc32c(view))
            finally:
                del view


def shard_file(array_folder: Path, shard: int, ndim: int) -> Path:
    """The file of shard ``shard`` of an ``ndim``-D array sharded along its first axis only.

    zarr v3's default chunk key encoding: ``c/<shard>/0/0/...``, one ``0`` per further axis.
    """
    return Path(array_folder, "c", str(shard), *["0"] * (ndim - 1))


def write_raw_shard(path: Path, parts: list[np.ndarray], rows_per_chunk: int, chunks_per_shard: int) -> int:
    """Writes rows (``parts`` in order) as one uncompressed shard file, byte for byte what zarr writes.

    Returns the CRC-32C of the whole file (computed from the buffers as they are written).

    For arrays whose inner chunks have no compressor (``bytes`` codec only, little-endian): the inner
    chunks are the rows' bytes in order, a last partial chunk padded with zeros (the fill value) to its full
    size, then the ``(offset, nbytes)`` index (``2**64 - 1`` for chunks past the data) and its CRC-32C.
    Each part is written straight from its buffer (a memory-mapped staging file costs one copy in the
    kernel), instead of zarr's concatenate-encode-assemble copies. Written to ``path.partial`` and renamed.
    """
    parts = [part for part in parts if len(part)]
    if not parts:
        raise ValueError(f"no rows to write into shard {path}")
    row_bytes = parts[0][:1].nbytes
    rows = sum(len(part) for part in parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)  # never written through: it may be a link to a staged file (ingest assembly)
    crc = 0
    with open(partial, "wb") as handle:
        for part in parts:
            flat = np.ascontiguousarray(part).reshape(-1).view(np.uint8)
            crc = _crc32c.crc32c(flat, crc)
            handle.write(memoryview(flat))
        tail = raw_shard_tail(rows, row_bytes, rows_per_chunk, chunks_per_shard)
        handle.write(tail)
        crc = _crc32c.crc32c(tail, crc)
    partial.replace(path)
    return int(crc)


def raw_shard_tail(rows: int, row_bytes: int, rows_per_chunk: int, chunks_per_shard: int) -> bytes:
    """What follows ``rows`` rows in an uncompressed shard file: zero padding of the last chunk, the index, its CRC."""
    chunk_bytes = rows_per_chunk * row_bytes
    stored = -(-rows // rows_per_chunk)
    index = np.full((chunks_per_shard, 2), EMPTY, "<u8")
    index[:stored, 0] = np.arange(stored, dtype=np.uint64) * chunk_bytes
    index[:stored, 1] = chunk_bytes
    padding = stored * rows_per_chunk - rows
    return bytes(padding * row_bytes) + index.tobytes() + np.uint32(_crc32c.crc32c(index.tobytes())).tobytes()


_local = threading.local()


def _scratch(size: int) -> np.ndarray:
    """A per-thread uint8 buffer of ``size`` bytes, reused across chunks."""
    buffer = getattr(_local, "scratch", None)
    if buffer is None or buffer.size != size:
        buffer = _local.scratch = np.empty(size, np.uint8)
    return buffer
