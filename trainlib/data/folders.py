"""Image folders: the files of a class-per-folder tree, listed, identified and decoded with memory that grows by
a few dozen bytes per file, not by Python objects per file.

A folder of 200,000 images listed as Python strings and tuples (torchvision's `make_dataset`, `Path.rglob`)
held about 300 bytes per file in each of several lists alive at once; here the names are one NumPy byte-string
array relative to the root, the labels one int64 array, and the content digests are folded into one hash as
the files are read.
"""

from __future__ import annotations

import hashlib
import itertools
import multiprocessing
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from trainlib.device import memory_quota
from trainlib.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's


def decode_image(path: str, size: tuple[int, int], channels: int) -> np.ndarray:
    """One image file -> uint8 (C, H, W), converted to `channels` (1 gray, 3 RGB) and resized."""
    try:
        return _decode(path, size, channels)
    except _UNREADABLE as exc:
        raise DataError(f"cannot read image {path}: {_why(exc, path)}") from exc


def _decode(path: str, size: tuple[int, int], channels: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("L" if channels == 1 else "RGB")
        if img.size != (size[1], size[0]):
            img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        arr = np.array(img, dtype=np.uint8)  # a writable copy (torch.from_numpy needs one)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy()


_UNREADABLE = (OSError, SyntaxError, ValueError)  # PIL's UnidentifiedImageError is an OSError


def _why(exc: Exception, path: str) -> str:
    """PIL's reason without the path it repeats."""
    return str(exc).replace(f" {path!r}", "").replace(path, "the file") or type(exc).__name__


class ImageFiles(torch.utils.data.Dataset):
    """Images decoded on demand: item -> (uint8 CxHxW, label). The names are relative to `root`, as one
    byte-string array (a DataLoader worker receives them pickled as one buffer, not as 200,000 objects)."""

    def __init__(self, root: str, names: np.ndarray, labels, size: tuple[int, int], channels: int):
        self.root, self.names = str(root), np.asarray(names, dtype=np.bytes_)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.size, self.channels = tuple(size), channels

    def __len__(self) -> int:
        return len(self.names)

    def path(self, i: int) -> str:
        return os.path.join(self.root, os.fsdecode(self.names[i]))

    @property
    def paths(self) -> list[str]:
        """Every file's full path (a list: for tests and small folders)."""
        return [self.path(i) for i in range(len(self))]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(decode_image(self.path(i), self.size, self.channels)), int(self.labels[i])

    def take(self, rows, labels=None) -> ImageFiles:
        """The files at `rows` (with new `labels` when given)."""
        rows = np.asarray(rows, dtype=np.int64)
        return ImageFiles(self.root, self.names[rows], self.labels[rows] if labels is None else labels,
                          self.size, self.channels)

    def relabelled(self, labels) -> ImageFiles:
        return ImageFiles(self.root, self.names, labels, self.size, self.channels)

    @property
    def decoded_bytes(self) -> int:
        return len(self) * self.channels * self.size[0] * self.size[1]

    def state(self) -> dict:
        """What `save_dataset` writes (plain tensors and strings: readable with torch.load(weights_only=True))."""
        width = max(1, self.names.dtype.itemsize)
        names = np.ascontiguousarray(self.names.astype(f"S{width}")).view(np.uint8).reshape(len(self), width)
        return {"root": self.root, "names": torch.from_numpy(names.copy()), "size": list(self.size),
                "channels": self.channels}

    @classmethod
    def from_state(cls, state: dict, labels) -> ImageFiles:
        names = state["names"].numpy()
        names = np.ascontiguousarray(names).view(f"S{names.shape[1]}").reshape(-1)
        return cls(state["root"], names, labels, tuple(state["size"]), state["channels"])


def walk(folder: str):
    """Files under `folder`, recursively, in torchvision's order (directories sorted, then names sorted)."""
    for top, dirs, files in sorted(os.walk(folder, followlinks=True)):
        dirs.sort()
        for name in sorted(files):
            yield os.path.join(top, name)


def list_images(root: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(classes, names relative to root, labels) of a class-per-folder tree, as torchvision's ImageFolder
    finds them (same classes, same order, same errors), a class at a time."""
    if not root.is_dir():
        raise DataError(f"data.path: no such directory: {root}")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if not classes:
        raise DataError(f"imagefolder {root}: Couldn't find any class folder in {root}.")
    names, labels, empty = [], [], []
    for k, cls in enumerate(classes):
        found = [os.fsencode(os.path.relpath(p, root)) for p in walk(os.path.join(root, cls))
                 if p.lower().endswith(IMAGE_EXTENSIONS)]
        if not found:
            empty.append(cls)
        names.append(np.array(found, dtype=np.bytes_))
        labels.append(np.full(len(found), k, dtype=np.int64))
    if empty:
        raise DataError(f"imagefolder {root}: Found no valid file for the classes {', '.join(sorted(empty))}. "
                        f"Supported extensions are: {', '.join(IMAGE_EXTENSIONS)}")
    width = max(a.dtype.itemsize for a in names)
    return classes, np.concatenate([a.astype(f"S{width}") for a in names]), np.concatenate(labels)


def file_digest(path: str | Path) -> tuple[int, str]:
    """(size in bytes, sha256 of the bytes) of a file, read in 1 MiB chunks (sha256: twice blake2b's speed on
    CPUs with SHA instructions, measured here)."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def files_identity(root: str | Path, files, digests: np.ndarray | None = None) -> str:
    """One sha256 over (name relative to root, size, content digest) of each file in order: what the files hold,
    not when they were written, so new content of the same size and time counts as a change and a copied folder
    does not. Folded in as each file is read: nothing per file is kept, except each file's sha256 into row i of
    `digests` ((N, 32) uint8) when given."""
    h, root = hashlib.sha256(), Path(root)
    for i, path in enumerate(files):
        name = os.path.relpath(path, root) if Path(path) != root else Path(path).name
        size, digest = file_digest(path)
        h.update(f"{name}\0{size}\0{digest}\n".encode())
        if digests is not None:
            digests[i] = np.frombuffer(bytes.fromhex(digest), dtype=np.uint8)
    return h.hexdigest()


_last_read: list[tuple] = []  # [(key, identity, digests)] of the last image folder hashed in this process


def _unchanged_key(root: str, names: np.ndarray) -> tuple:
    """What says a folder's images are the ones hashed before, read from their metadata alone: the root, the names,
    and the files' total size and newest modification and change times (a write changes a file's ctime, which
    cannot be set back, so new content of the same size and mtime changes the key too)."""
    size = newest_m = newest_c = 0
    for name in names:
        stat = os.stat(os.path.join(root, os.fsdecode(name)))
        size, newest_m, newest_c = size + stat.st_size, max(newest_m, stat.st_mtime_ns), max(newest_c, stat.st_ctime_ns)
    return str(root), hashlib.sha256(names.tobytes()).hexdigest(), size, newest_m, newest_c


def image_digests(root: str, names: np.ndarray) -> tuple[str, np.ndarray]:
    """(files_identity of the images `names` under `root`, the sha256 of each as (N, 32) bytes). A run reads each
    file once for both: the ingest's cache key (sources.fingerprint, also asked by the pre-flight) and the ingest
    itself (the decoded cache is kept by each file's content) take the last folder's digests while its files'
    metadata says they are unchanged (32 bytes a file kept)."""
    key = _unchanged_key(root, names)
    if _last_read and _last_read[0][0] == key:
        return _last_read[0][1], _last_read[0][2]
    digests = np.empty((len(names), 32), dtype=np.uint8)
    identity = files_identity(root, (os.path.join(root, os.fsdecode(n)) for n in names), digests)
    _last_read[:] = [(key, identity, digests)]
    return identity, digests


def folder_files(root: Path):
    """Every file under `root` (or `root` itself when it is a file), in a stable order."""
    return iter([str(root)]) if root.is_file() else walk(str(root))


def size_text(n: float) -> str:
    """Bytes as people read them: 1.5 GiB, 12.0 MiB, 3.2 KiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 2**10:.1f} KiB"


def check_fits(files: ImageFiles, budget_gib: float | None) -> None:
    """Refuse, before decoding, a folder whose decoded images would not fit the memory budget (`data.memory_budget`
    GiB; default half this machine's memory). A run holds the decoded images once (measured: 0.8x their bytes
    above a streamed run's peak at 200,000 images); the estimate counts them twice, a margin for the copies made
    while they are read, hashed and saved."""
    need, budget = 2 * files.decoded_bytes, (budget_gib * 2**30 if budget_gib else memory_quota() / 2)
    if need > budget:
        c, (h, w) = files.channels, files.size
        whose = "data.memory_budget" if budget_gib else "data.memory_budget's default: half of this machine's memory"
        raise DataError(
            f"data: {len(files):,} images of {c}x{h}x{w} decoded in memory need about {size_text(need)} (twice their "
            f"{size_text(files.decoded_bytes)}, a margin for the copies made while reading them), over the memory "
            f"budget of {size_text(budget)} ({whose}); set data.stream: true to decode them per batch instead")


Failures = list[tuple[int, str]]  # the files that could not be decoded: (index, why)


def _decode_chunk(files: ImageFiles) -> tuple[np.ndarray, Failures]:
    """The chunk's images (an unreadable one's row left zero) and its unreadable files (index in the chunk)."""
    out, failed = np.zeros((len(files), files.channels, *files.size), dtype=np.uint8), []
    for i in range(len(files)):
        try:
            out[i] = _decode(files.path(i), files.size, files.channels)
        except _UNREADABLE as exc:
            failed.append((i, _why(exc, files.path(i))))
    return out, failed


def decode_blocks(files: ImageFiles, workers: int, chunk: int = 512) -> Iterator[tuple[np.ndarray, Failures]]:
    """The images decoded, in order, `chunk` at a time (uint8 (n, C, H, W) blocks, with the block's unreadable files
    by their index in `files`), by `workers` processes (PIL holds the GIL for part of a decode, so threads scale
    worse), at most two blocks per worker ahead of the reader. Every file is tried: one unreadable file stops none."""
    starts = range(0, len(files), chunk)
    parts = (files.take(np.arange(a, min(a + chunk, len(files)))) for a in starts)

    def placed(start: int, done: tuple[np.ndarray, Failures]) -> tuple[np.ndarray, Failures]:
        return done[0], [(start + i, why) for i, why in done[1]]

    if workers == 0 or len(files) <= chunk:
        yield from (placed(a, _decode_chunk(p)) for a, p in zip(starts, parts, strict=True))
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
        at = iter(starts)
        ahead = deque(pool.submit(_decode_chunk, p) for p in itertools.islice(parts, 2 * workers))
        try:
            while ahead:
                block = ahead.popleft().result()
                ahead.extend(pool.submit(_decode_chunk, p) for p in itertools.islice(parts, 1))
                yield placed(next(at), block)
        finally:
            for future in ahead:
                future.cancel()


def decode_all(files: ImageFiles, workers: int, chunk: int = 512) -> tuple[torch.Tensor, Failures]:
    """Every image decoded into one uint8 (N, C, H, W) tensor made once, in order, and the unreadable files (their
    rows zero; see decode_blocks)."""
    out, at, failed = np.empty((len(files), files.channels, *files.size), dtype=np.uint8), 0, []
    for block, bad in decode_blocks(files, workers, chunk):
        out[at:at + len(block)] = block
        at, failed = at + len(block), failed + bad
    return torch.from_numpy(out), failed
