"""Loaders for the on-disk layouts of real cross-modal ReID data sets.

Each loader returns a :class:`RecordList` (a ``list`` of :class:`ReIDRecord` with a ``skipped``
attribute). Labels are ``-1``; :func:`~reid_example.data.splits.make_splits` assigns training
class ids. Paths are absolute.

Bad data is found at load time, in the main process, never deep in a DataLoader worker:

* a missing index/manifest file, or a malformed line → ``FileNotFoundError`` / ``ValueError``
  naming the file (and line);
* a listed image that is missing — or, with ``verify=True``, whose header Pillow cannot read —
  raises :class:`~reid_example.data.records.ImageDecodeError` naming the file, or with
  ``on_error="skip"`` is dropped, recorded in ``RecordList.skipped`` and counted in one warning.

Layouts:

* **SYSU-MM01** — ``cam1..cam6/<id:04d>/*.jpg`` and ``exp/{train,val,test}_id.txt`` (comma
  separated ids); cameras 3 and 6 are infrared.
* **RegDB** — ``idx/{train,test}_{visible,thermal}_{trial}.txt`` with ``<relative path> <id>``
  lines; visible = camera 1, thermal = camera 2 (modality NIR). If the test ids of the files
  overlap the training ids, test identities are offset by ``100000`` to keep splits disjoint.
* **LLCM** — ``idx/{train,test}_{vis,nir}.txt`` with ``<relative path> <id>`` lines; the camera
  is parsed from a ``cam<N>`` path component or a ``_c<N>`` file-name part.
* **JSON manifest** (PRCV2025/ORBench style) — ``{"identities": [{"id": 3, "split": "train",
  "rgb": [...], "nir": [...], "sk": [...], "cp": [...], "text": ["caption", ...]}, ...]}``;
  modality keys are any :func:`sdmreid.parse_modality` alias; an image entry is a path or
  ``{"path": ..., "camera": N}``. A top-level list of identities is accepted too.
* **CSV manifest** — header ``path,label,modality,camera[,split][,text]``; ``label`` is the
  identity; a TEXT row gives ``text`` and may leave ``path`` empty; ``split`` defaults to
  ``train``.
"""

from __future__ import annotations

import csv
import json
import re
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from reid_example.data.records import ImageDecodeError, ReIDRecord
from sdmreid.modality import Modality, parse_modality

__all__ = [
    "RecordList",
    "load_csv_manifest",
    "load_json_manifest",
    "load_llcm",
    "load_regdb",
    "load_sysu_mm01",
]

OnError = Literal["raise", "skip"]


class RecordList(list[ReIDRecord]):
    """A list of records plus ``skipped``: ``(path, reason)`` of every dropped file.

    Example:
        >>> recs = RecordList([ReIDRecord(None, "a caption", 1, -1, 4, 0, "train")],
        ...                   skipped=[("cam1/0001/x.jpg", "missing")])
        >>> len(recs), recs.skipped
        (1, [('cam1/0001/x.jpg', 'missing')])
    """

    skipped: list[tuple[str, str]]

    def __init__(self, records: Iterable[ReIDRecord] = (), skipped: Iterable[tuple[str, str]] = ()):
        super().__init__(records)
        self.skipped = list(skipped)


def _check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def _problem(path: str, verify: bool) -> str | None:
    p = Path(path)
    if not p.is_file():
        return "missing"
    if verify:
        from PIL import Image

        try:
            with Image.open(p) as im:
                im.verify()
        except Exception as exc:
            return f"corrupt ({type(exc).__name__}: {exc})"
    return None


def _finish(
    records: Iterable[ReIDRecord], on_error: OnError, verify: bool, source: str
) -> RecordList:
    _check_on_error(on_error)
    kept: list[ReIDRecord] = []
    skipped: list[tuple[str, str]] = []
    for r in records:
        if r.path is not None:
            why = _problem(r.path, verify)
            if why is not None:
                if on_error == "raise":
                    raise ImageDecodeError(
                        f"image file {r.path} listed by {source} is {why} "
                        "(pass on_error='skip' to drop such files)"
                    )
                skipped.append((r.path, why))
                continue
        kept.append(r)
    if skipped:
        warnings.warn(
            f"{source}: skipped {len(skipped)} unreadable image file(s), first: {skipped[0][0]}",
            stacklevel=3,
        )
    return RecordList(kept, skipped)


def _need(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"required file not found: {path}")
    return path


def _path_label_lines(path: Path) -> Iterator[tuple[str, int]]:
    for lineno, line in enumerate(_need(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError
            yield parts[0], int(parts[1])
        except ValueError:
            raise ValueError(
                f"{path}:{lineno}: expected '<relative path> <integer id>', got {line!r}"
            ) from None


_IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def load_sysu_mm01(
    root: str | Path, *, on_error: OnError = "raise", verify: bool = False
) -> RecordList:
    """Load SYSU-MM01 (``cam1..cam6/<id>/`` + ``exp/*_id.txt``); ids in no list are ignored.

    Example:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> (root / "exp").mkdir()
        >>> for split, ids in (("train", "1"), ("val", "2"), ("test", "3")):
        ...     _ = (root / "exp" / f"{split}_id.txt").write_text(ids)
        >>> for cam in range(1, 7):
        ...     (root / f"cam{cam}").mkdir()
        >>> (root / "cam3" / "0003").mkdir()
        >>> _ = (root / "cam3" / "0003" / "0001.jpg").write_bytes(b"")
        >>> r = load_sysu_mm01(root)[0]
        >>> r.identity, r.modality, r.camera, r.split
        (3, 1, 3, 'test')
    """
    root = Path(root)
    split_of: dict[int, str] = {}
    for split in ("train", "val", "test"):
        f = _need(root / "exp" / f"{split}_id.txt")
        text = f.read_text(encoding="utf-8").replace("\n", ",")
        for tok in text.split(","):
            if not tok.strip():
                continue
            try:
                pid = int(tok)
            except ValueError:
                raise ValueError(
                    f"{f}: expected comma-separated integer ids, got {tok!r}"
                ) from None
            if split_of.setdefault(pid, split) != split:
                raise ValueError(f"{f}: identity {pid} is also listed in {split_of[pid]}_id.txt")
    records: list[ReIDRecord] = []
    for cam in range(1, 7):
        mod = int(Modality.NIR) if cam in (3, 6) else int(Modality.RGB)
        cam_dir = root / f"cam{cam}"
        if not cam_dir.is_dir():
            raise FileNotFoundError(f"required directory not found: {cam_dir}")
        for pid, split in sorted(split_of.items()):
            d = cam_dir / f"{pid:04d}"
            if not d.is_dir():
                continue
            for f in sorted(d.iterdir()):
                if f.suffix.lower() in _IMAGE_EXT:
                    records.append(ReIDRecord(str(f), None, pid, -1, mod, cam, split))
    return _finish(records, on_error, verify, f"SYSU-MM01 at {root}")


def load_regdb(
    root: str | Path, trial: int = 1, *, on_error: OnError = "raise", verify: bool = False
) -> RecordList:
    """Load one RegDB trial (``idx/{train,test}_{visible,thermal}_{trial}.txt``).

    Train and test a model per trial: testing one model on all trials leaks test identities.
    """
    if not 1 <= trial <= 10:
        raise ValueError(f"trial must be in 1..10, got {trial}")
    root = Path(root)
    rows: dict[str, list[tuple[str, int, int, int]]] = {"train": [], "test": []}
    for split in ("train", "test"):
        for name, mod, cam in (("visible", 0, 1), ("thermal", 1, 2)):
            for rel, pid in _path_label_lines(root / "idx" / f"{split}_{name}_{trial}.txt"):
                rows[split].append((rel, pid, mod, cam))
    train_ids = {pid for _, pid, _, _ in rows["train"]}
    offset = 100000 if train_ids & {pid for _, pid, _, _ in rows["test"]} else 0
    records = [
        ReIDRecord(
            str(root / rel), None, pid + (offset if split == "test" else 0), -1, mod, cam, split
        )
        for split in ("train", "test")
        for rel, pid, mod, cam in rows[split]
    ]
    return _finish(records, on_error, verify, f"RegDB trial {trial} at {root}")


_CAM_RE = re.compile(r"(?:^|[/\\])cam(\d+)(?:[/\\]|$)|_c(\d+)", re.IGNORECASE)


def _camera_from_path(rel: str, source: Path) -> int:
    m = _CAM_RE.search(rel)
    if m is None:
        raise ValueError(f"{source}: cannot find a camera ('camN' or '_cN') in path {rel!r}")
    return int(m.group(1) or m.group(2))


def load_llcm(root: str | Path, *, on_error: OnError = "raise", verify: bool = False) -> RecordList:
    """Load LLCM from ``idx/{train,test}_{vis,nir}.txt`` lists."""
    root = Path(root)
    records: list[ReIDRecord] = []
    for split in ("train", "test"):
        for name, mod in (("vis", 0), ("nir", 1)):
            f = root / "idx" / f"{split}_{name}.txt"
            for rel, pid in _path_label_lines(f):
                cam = _camera_from_path(rel, f)
                records.append(ReIDRecord(str(root / rel), None, pid, -1, mod, cam, split))
    return _finish(records, on_error, verify, f"LLCM at {root}")


def _int_field(value: Any, what: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{source}: {what} must be an integer, got {value!r}")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{source}: {what} must be an integer, got {value!r}") from None


def load_json_manifest(
    path: str | Path,
    *,
    root: str | Path | None = None,
    on_error: OnError = "raise",
    verify: bool = False,
) -> RecordList:
    """Load a PRCV2025/ORBench-style JSON manifest (see the module docstring).

    Relative image paths are resolved against ``root`` (default: the manifest's folder).
    """
    path = _need(Path(path))
    base = Path(root) if root is not None else path.parent
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON: {exc}") from None
    people = data.get("identities") if isinstance(data, dict) else data
    if not isinstance(people, list):
        raise ValueError(f"{path}: expected a list of identities or {{'identities': [...]}}")
    records: list[ReIDRecord] = []
    for k, person in enumerate(people):
        where = f"{path} identity #{k}"
        if not isinstance(person, dict) or "id" not in person:
            raise ValueError(f"{where}: expected an object with an 'id'")
        pid = _int_field(person["id"], "'id'", where)
        split = str(person.get("split", "train"))
        items = dict(person.get("images", {}))
        items.update({k2: v for k2, v in person.items() if k2 not in ("id", "split", "images")})
        for key, entries in items.items():
            try:
                mod = int(parse_modality(key))
            except ValueError as exc:
                raise ValueError(f"{where}: unknown modality key {key!r}: {exc}") from None
            if not isinstance(entries, list):
                raise ValueError(f"{where}: {key!r} must be a list")
            for e in entries:
                if mod == int(Modality.TEXT):
                    if not isinstance(e, str):
                        raise ValueError(f"{where}: captions must be strings, got {e!r}")
                    records.append(ReIDRecord(None, e, pid, -1, mod, 0, split))
                    continue
                if isinstance(e, str):
                    rel, cam = e, 0
                elif isinstance(e, dict) and isinstance(e.get("path"), str):
                    rel, cam = e["path"], _int_field(e.get("camera", 0), "'camera'", where)
                else:
                    raise ValueError(f"{where}: image entries must be a path or {{'path': ...}}")
                records.append(ReIDRecord(str(base / rel), None, pid, -1, mod, cam, split))
    return _finish(records, on_error, verify, f"manifest {path}")


def load_csv_manifest(
    path: str | Path,
    *,
    root: str | Path | None = None,
    on_error: OnError = "raise",
    verify: bool = False,
) -> RecordList:
    """Load a CSV manifest ``path,label,modality,camera[,split][,text]`` (header required)."""
    path = _need(Path(path))
    base = Path(root) if root is not None else path.parent
    records: list[ReIDRecord] = []
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        need = {"path", "label", "modality", "camera"}
        have = set(reader.fieldnames or ())
        if not need <= have:
            raise ValueError(f"{path}: header must contain {sorted(need)}, got {sorted(have)}")
        for lineno, row in enumerate(reader, 2):
            where = f"{path}:{lineno}"
            try:
                mod = int(parse_modality((row["modality"] or "").strip()))
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
            pid = _int_field((row["label"] or "").strip(), "label", where)
            cam = _int_field((row["camera"] or "0").strip() or "0", "camera", where)
            split = (row.get("split") or "train").strip() or "train"
            if mod == int(Modality.TEXT):
                text = row.get("text")
                if not text:
                    raise ValueError(f"{where}: a TEXT row needs a non-empty 'text' column")
                records.append(ReIDRecord(None, text, pid, -1, mod, cam, split))
            else:
                rel = (row["path"] or "").strip()
                if not rel:
                    raise ValueError(f"{where}: an image row needs a 'path'")
                records.append(ReIDRecord(str(base / rel), None, pid, -1, mod, cam, split))
    return _finish(records, on_error, verify, f"manifest {path}")
