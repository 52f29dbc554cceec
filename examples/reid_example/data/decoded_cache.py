"""Decoded images in a memory-mapped file, so that epochs after the first skip image decoding.

:class:`DecodedImageCache` keeps the decoded ``uint8 [3, H, W]`` image of each of a list of image
files in one flat file under a directory (``data.decoded_cache``), each at an offset fixed up
front from the image's header, and a one-byte "filled" flag per image in a second file. A
:class:`~reid_example.data.records.RecordDataset` given a cache looks there first and stores what
it decodes: the first epoch decodes every image once (in whichever DataLoader worker meets it —
both files are shared memory maps, so every worker and the main process see each other's
images), later epochs and later runs read the bytes back. The images are stored as decoded, before
any resizing or augmentation, so a cached image equals a decoded one bit for bit.

The files are named after a fingerprint of the file list (paths, sizes, modification times): a
run on the same files reuses them, a changed or added file gives a new cache. A file whose header
cannot be read has no slot and is decoded every time (and handled by the dataset's ``on_error``).

Example:
    >>> import tempfile, os
    >>> from PIL import Image
    >>> d = tempfile.mkdtemp()
    >>> paths = [os.path.join(d, f"{i}.png") for i in range(2)]
    >>> for i, p in enumerate(paths):
    ...     Image.new("RGB", (4, 6), (i, 2, 3)).save(p)
    >>> cache = DecodedImageCache.open(os.path.join(d, "cache"), paths)
    >>> cache.get(0) is None
    True
    >>> cache.put(0, torch.zeros(3, 6, 4, dtype=torch.uint8))
    >>> again = DecodedImageCache.open(os.path.join(d, "cache"), paths)  # a later run
    >>> again.get(0).shape, again.filled, len(again)
    (torch.Size([3, 6, 4]), 1, 2)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

__all__ = ["DecodedImageCache"]

_FORMAT = 1


def _fingerprint(paths: Sequence[str | None]) -> str:
    """sha256 over each path with its size and modification time (``-`` for no file)."""
    h = hashlib.sha256(f"decoded-cache-v{_FORMAT}".encode())
    for p in paths:
        if p is None:
            h.update(b"\0-\n")
            continue
        try:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}\0missing\n".encode())
    return h.hexdigest()[:20]


def _header_size(path: str | None) -> tuple[int, int]:
    """``(height, width)`` from the image header (``(0, 0)``: no slot for this file)."""
    if path is None:
        return 0, 0
    from PIL import Image

    try:
        with Image.open(path) as im:
            width, height = im.size
    except Exception:  # unreadable: the dataset decodes it (and applies on_error) each time
        return 0, 0
    return int(height), int(width)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class DecodedImageCache:
    """Decoded ``uint8 [3, H, W]`` images of a list of files, memory-mapped from a directory.

    Build it with :meth:`open`. :meth:`get` returns a cached image (a copy) or ``None``;
    :meth:`put` stores a decoded one. Slots are addressed by the position of the file in the list
    given to :meth:`open` (a dataset's record index).
    """

    def __init__(self, directory: Path, key: str, shapes: npt.NDArray[np.int64]) -> None:
        self.directory = directory
        self.key = key
        #: ``[n, 3]``: byte offset, height, width of each slot (height 0: no slot)
        self.shapes = shapes
        self._open_maps()

    def _open_maps(self) -> None:
        total = int((3 * self.shapes[:, 1] * self.shapes[:, 2]).sum())
        self._data = np.memmap(self._file("u8"), dtype=np.uint8, mode="r+", shape=(max(total, 1),))
        n = max(len(self.shapes), 1)
        self._flags = np.memmap(self._file("filled"), dtype=np.uint8, mode="r+", shape=(n,))

    def _file(self, suffix: str) -> Path:
        return self.directory / f"decoded-{self.key}.{suffix}"

    @classmethod
    def open(
        cls, directory: str | os.PathLike[str], paths: Sequence[str | None]
    ) -> DecodedImageCache:
        """The cache of ``paths`` under ``directory``: the existing one for these files, or a new
        one (image headers read, files allocated; nothing decoded yet).

        Args:
            directory: where the cache files live (created if needed).
            paths: one entry per dataset item: its image file, or ``None`` (a caption).
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        key = _fingerprint(paths)
        index = d / f"decoded-{key}.json"
        if index.exists():
            meta = json.loads(index.read_text())
            shapes = np.asarray(meta["shapes"], dtype=np.int64).reshape(-1, 3)
            if meta.get("format") == _FORMAT and len(shapes) == len(paths):
                return cls(d, key, shapes)
        sizes = np.asarray([_header_size(p) for p in paths], dtype=np.int64).reshape(-1, 2)
        nbytes = 3 * sizes[:, 0] * sizes[:, 1]
        offsets = np.concatenate([[0], np.cumsum(nbytes)[:-1]]) if len(nbytes) else nbytes
        shapes = np.column_stack([offsets, sizes]).astype(np.int64)
        # data and flags first, the index last: a cache is in use only once all three exist
        data = d / f"decoded-{key}.u8"
        with open(data, "wb") as fh:
            fh.truncate(max(int(nbytes.sum()), 1))
        _atomic_write(d / f"decoded-{key}.filled", bytes(max(len(paths), 1)))
        meta = {"format": _FORMAT, "files": len(paths), "shapes": shapes.ravel().tolist()}
        _atomic_write(index, json.dumps(meta).encode())
        return cls(d, key, shapes)

    def __len__(self) -> int:
        return len(self.shapes)

    @property
    def filled(self) -> int:
        """How many images are stored."""
        return int(np.count_nonzero(self._flags[: len(self.shapes)]))

    def get(self, index: int) -> torch.Tensor | None:
        """The stored image of slot ``index`` (a copy), or ``None`` when not stored yet."""
        if not self._flags[index]:
            return None
        offset, h, w = (int(v) for v in self.shapes[index])
        arr = np.array(self._data[offset : offset + 3 * h * w]).reshape(3, h, w)
        return torch.from_numpy(arr)

    def put(self, index: int, image: torch.Tensor) -> None:
        """Store the decoded ``uint8 [3, H, W]`` image of slot ``index``. An image of another
        size than the header said (or a slot without one) is not stored."""
        offset, h, w = (int(v) for v in self.shapes[index])
        if h == 0 or image.dtype != torch.uint8 or tuple(image.shape) != (3, h, w):
            return
        self._data[offset : offset + 3 * h * w] = image.contiguous().numpy().reshape(-1)
        self._flags[index] = 1  # after the bytes: a reader never sees a flag before its image

    # DataLoader workers started by "spawn" get the cache pickled: they map the same files
    def __getstate__(self) -> dict[str, Any]:
        return {"directory": str(self.directory), "key": self.key, "shapes": self.shapes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.directory = Path(state["directory"])
        self.key = state["key"]
        self.shapes = state["shapes"]
        self._open_maps()
