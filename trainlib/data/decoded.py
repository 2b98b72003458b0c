"""Decoded images cached by content: a folder's images decoded and resized once, kept in a pack file, and read
back a row at a time (streamed) or whole (in memory).

A pack is a folder `<cache>/decoded-<C>x<H>x<W>/<digest>/` holding `images.npy` (uint8 (N, C, H, W), rows in the
dataset's order) and `digests.npy` (the sha256 of each row's source file, (N, 32) bytes); its name is the digest of
those digests, so the same files in the same order make the same pack and a second ingest finds it whole. A new
pack takes the rows of files it shares with the newest earlier packs of the same size by content (a file edited
in place is decoded again, a renamed or copied one is not) and decodes only the rest, in worker processes.

Rows are read with `os.pread`, not a memory map: mapped pages of a pack would count in the process's resident
memory as an epoch touched them, and streaming exists to keep that flat.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainlib.data import folders
from trainlib.data.folders import ImageFiles
from trainlib.errors import DataError

log = logging.getLogger(__name__)

REUSE_PACKS = 8  # newest earlier packs of the same size searched for rows to reuse
BLOCK = 1024  # rows read, decoded or copied at a time


def _header(shape: tuple[int, ...]) -> bytes:
    """The .npy header of a C-ordered uint8 array of `shape` (readable by np.load)."""
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue()


def _data_offset(path: Path) -> int:
    """Where the rows of an .npy file start."""
    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_1_0(f)
        return f.tell()


class PackedImages(torch.utils.data.Dataset):
    """Streamed images read from a pack: item -> (uint8 CxHxW, label). Each process opens the file once, on its
    first read (a DataLoader worker receives the path, not an open file)."""

    def __init__(self, pack: str, labels, size: tuple[int, int], channels: int, rows=None):
        self.pack, self.size, self.channels = str(pack), tuple(size), channels
        self.labels = np.asarray(labels, dtype=np.int64)
        self.rows = np.arange(len(self.labels), dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
        self._fd, self._offset = None, None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None}

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def row_bytes(self) -> int:
        return self.channels * self.size[0] * self.size[1]

    @property
    def decoded_bytes(self) -> int:
        return len(self) * self.row_bytes

    def _open(self) -> int:
        if self._fd is None:
            path = Path(self.pack) / "images.npy"
            self._offset = _data_offset(path)
            self._fd = os.open(path, os.O_RDONLY)
        return self._fd

    def raw(self, row: int) -> bytes:
        """The bytes of the pack's `row` (not of item `row`: items may be a subset of the pack's rows)."""
        fd, n = self._open(), self.row_bytes
        data = os.pread(fd, n, self._offset + int(row) * n)
        if len(data) != n:
            raise DataError(f"{self.pack}: the decoded-image cache is shorter than it says (row {row}); "
                            "delete it (it is made again)")
        return data

    def read(self, i: int) -> np.ndarray:
        return np.frombuffer(self.raw(self.rows[i]), dtype=np.uint8).reshape(self.channels, *self.size).copy()

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.read(i)), int(self.labels[i])

    def batch(self, items: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Items `items` as one uint8 (n, C, H, W) tensor and their labels, each row read straight into place."""
        fd, n = self._open(), self.row_bytes
        out = np.empty((len(items), self.channels, *self.size), dtype=np.uint8)
        flat = memoryview(out.reshape(-1))
        for j, row in enumerate(self.rows[items].tolist()):
            if os.preadv(fd, [flat[j * n:(j + 1) * n]], self._offset + row * n) != n:
                raise DataError(f"{self.pack}: the decoded-image cache is shorter than it says (row {row}); "
                                "delete it (it is made again)")
        return torch.from_numpy(out), torch.from_numpy(self.labels[items])

    def take(self, rows, labels=None) -> PackedImages:
        rows = np.asarray(rows, dtype=np.int64)
        return PackedImages(self.pack, self.labels[rows] if labels is None else labels, self.size, self.channels,
                            self.rows[rows])

    def relabelled(self, labels) -> PackedImages:
        return PackedImages(self.pack, labels, self.size, self.channels, self.rows)

    def state(self) -> dict:
        return {"pack": self.pack, "rows": torch.from_numpy(self.rows), "size": list(self.size),
                "channels": self.channels}

    @classmethod
    def from_state(cls, state: dict, labels) -> PackedImages:
        return cls(state["pack"], labels, tuple(state["size"]), state["channels"], state["rows"].numpy())

    def __del__(self):
        if self._fd is not None:
            os.close(self._fd)


@dataclass(frozen=True)
class Built:
    """A pack and how it was made: rows reused from earlier packs, rows decoded now."""

    path: Path
    reused: int
    decoded: int
    unreadable: list[tuple[int, str]]  # the files that could not be decoded: (index, why); their rows are zero


def _earlier(folder: Path, exclude: Path) -> list[Path]:
    packs = [p for p in folder.iterdir()  # not the temporary folders of packs being written (".name.pid.tmp")
             if p.is_dir() and p != exclude and not p.name.startswith(".") and (p / "complete").exists()]
    return sorted(packs, key=lambda p: (p / "complete").stat().st_mtime, reverse=True)[:REUSE_PACKS]


def _sources(digests: np.ndarray, packs: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """For each digest, (index into packs, row there) of an earlier copy, or (-1, -1)."""
    which, where = np.full(len(digests), -1, np.int64), np.full(len(digests), -1, np.int64)
    key = digests.view("S32").reshape(-1)
    for k, pack in enumerate(packs):
        theirs = np.load(pack / "digests.npy").view("S32").reshape(-1)
        order = np.argsort(theirs)
        at = np.clip(np.searchsorted(theirs[order], key), 0, len(theirs) - 1)
        hit = (theirs[order][at] == key) & (which < 0)
        which[hit], where[hit] = k, order[at][hit]
    return which, where


def build(files: ImageFiles, digests: np.ndarray, cache: Path, workers: int = 2) -> Built:
    """The pack of `files` (whose sha256 are `digests`) under `cache`, made when missing from the rows of earlier
    packs with the same content and by decoding the rest. Written under a temporary name and renamed complete."""
    folder = Path(cache) / f"decoded-{files.channels}x{files.size[0]}x{files.size[1]}"
    path = folder / hashlib.sha256(digests.tobytes()).hexdigest()[:32]
    if (path / "complete").exists():
        return Built(path, len(files), 0, _unreadable(path))
    folder.mkdir(parents=True, exist_ok=True)
    need = files.decoded_bytes + digests.nbytes
    free = shutil.disk_usage(folder).free
    if need > free * 0.9:
        raise OSError(f"{need / 2**20:,.0f} MiB of decoded images would leave {folder} with under 10% of its "
                      f"{free / 2**20:,.0f} MiB free")
    packs = _earlier(folder, path)
    which, where = _sources(digests, packs)
    tmp = folder / f".{path.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        unreadable = _write(files, packs, which, where, tmp, workers)
        kept = digests.copy()
        kept[[i for i, _ in unreadable]] = 0  # a row never decoded is never reused (an unlikely digest: all zero)
        np.save(tmp / "digests.npy", kept)
        (tmp / "complete").write_text(json.dumps({"images": len(files), "reused": int((which >= 0).sum()),
                                                  "unreadable": unreadable}))
        try:
            os.rename(tmp, path)
        except OSError:  # another process made the same pack meanwhile: theirs is as good
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    reused = int((which >= 0).sum())
    return Built(path, reused, len(files) - reused, unreadable)


def _unreadable(pack: Path) -> list[tuple[int, str]]:
    """The files a complete pack could not decode, as it recorded them."""
    return [(int(i), str(why)) for i, why in json.loads((pack / "complete").read_text()).get("unreadable", [])]


def _write(files: ImageFiles, packs: list[Path], which, where, tmp: Path, workers: int) -> list[tuple[int, str]]:
    shape, row = (len(files), files.channels, *files.size), files.channels * files.size[0] * files.size[1]
    header = _header(shape)
    readers = [PackedImages(str(p), np.zeros(1), files.size, files.channels) for p in packs]
    with open(tmp / "images.npy", "wb") as f:
        f.write(header)
        f.truncate(len(header) + len(files) * row)
        fd = f.fileno()
        for k, reader in enumerate(readers):  # rows reused, copied in the earlier pack's order (sequential reads)
            mine = np.flatnonzero(which == k)
            for i in mine[np.argsort(where[mine])]:
                os.pwrite(fd, reader.raw(where[i]), len(header) + int(i) * row)
        missing, at, unreadable = np.flatnonzero(which < 0), 0, []
        for block, bad in folders.decode_blocks(files.take(missing), workers, chunk=BLOCK):
            unreadable += [(int(missing[i]), why) for i, why in bad]
            rows = missing[at:at + len(block)]
            if rows[-1] - rows[0] == len(rows) - 1:  # contiguous (a first pack: all of them): one write
                os.pwrite(fd, block.tobytes(), len(header) + int(rows[0]) * row)
            else:
                for j, i in enumerate(rows):
                    os.pwrite(fd, block[j].tobytes(), len(header) + int(i) * row)
            at += len(block)
    return unreadable


def load(pack: Path, size: tuple[int, int], channels: int, images: int) -> torch.Tensor:
    """The pack's images in memory, as one uint8 (N, C, H, W) tensor read straight into place (no second copy)."""
    path = Path(pack) / "images.npy"
    shape = (images, channels, *size)
    return torch.from_numpy(np.fromfile(path, np.uint8, int(np.prod(shape)), offset=_data_offset(path)).reshape(shape))
