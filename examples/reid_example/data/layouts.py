"""Loaders for the on-disk layouts of real cross-modal ReID data sets.

Each loader returns a :class:`RecordList` (a ``list`` of :class:`ReIDRecord` with a ``skipped``
attribute). Labels are ``-1``; :func:`~reid_example.data.splits.make_splits` assigns training
class ids. Paths are absolute.

Bad data is found at load time, in the main process, never deep in a DataLoader worker:

* a missing index/manifest file → ``FileNotFoundError`` naming it; a file that is not UTF-8
  text, a malformed line or row, an integer that is not a plain ASCII integer, a negative
  identity or camera, an id beyond int64, an unknown split, or an identity listed in two
  splits → ``ValueError`` naming the file and line/row (or the JSON identity entry);
* the same image listed twice with different fields → ``ValueError`` naming both rows; the
  same sample listed twice (an image path, or one identity's caption) → ``ValueError`` naming
  both rows, or with ``on_error="skip"`` the later rows are dropped, recorded in
  ``RecordList.skipped`` and counted in one warning;
* a listed image that is missing, or (``verify=True``, the default) that does not decode in
  full → :class:`~reid_example.data.records.ImageDecodeError` naming the file, or with
  ``on_error="skip"`` it is dropped, recorded in ``RecordList.skipped`` and counted in one
  warning. The check decodes each image exactly as the dataset will (a header check misses a
  half-written JPEG), on a thread pool; ``verify=False`` checks existence only, for very large
  sets whose files are known to be whole (``RecordDataset(on_error=...)`` then handles a file
  that fails to decode).

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
  identity; a TEXT row gives ``text`` and may leave ``path`` empty, an image row leaves
  ``text`` empty; ``split`` defaults to ``train``.

Text files are read as UTF-8 (a leading byte-order mark is accepted).
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import json
import os
import re
import warnings
from collections.abc import Generator, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from reid_example.data.records import (
    ImageDecodeError,
    OnError,
    ReIDRecord,
    check_on_error,
    load_image,
)
from sdmreid.modality import Modality, parse_modality

__all__ = [
    "RecordList",
    "load_csv_manifest",
    "load_json_manifest",
    "load_llcm",
    "load_regdb",
    "load_sysu_mm01",
]

_SPLITS = ("train", "val", "test")
_INT64_MAX = 2**63 - 1
# ASCII digits only: int() also accepts "1_000" and non-ASCII digits, which no layout means
_INT_RE = re.compile(r"[+-]?[0-9]+")

#: A record and where it was listed (``file:line``, or a JSON identity entry).
_Row = tuple[ReIDRecord, str]


class RecordList(list[ReIDRecord]):
    """A list of records plus ``skipped``: ``(path, reason)`` of every dropped file or row.

    For a dropped duplicate caption the first element is ``"text: <caption>"``.

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


def _check_options(on_error: object, verify: object) -> None:
    check_on_error(on_error)
    if not isinstance(verify, bool):
        raise TypeError(f"verify must be a bool, got {type(verify).__name__} {verify!r}")


def _need(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"required file not found: {path}")
    return path


def _read_text(path: Path) -> str:
    """The UTF-8 text of an index or manifest file; any other encoding is named as such."""
    data = _need(path).read_bytes()
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        at = bom + exc.start
        line = data[:at].count(b"\n") + 1
        raise ValueError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[at]:02x} at "
            f"offset {at}); index and manifest files must be UTF-8 encoded (re-save the file "
            "as UTF-8)"
        ) from None


def _parse_int(value: object, what: str, where: str, minimum: int = 0) -> int:
    """An integer field: a JSON integer or a string of ASCII digits, in ``[minimum, 2**63-1]``
    (every id ends up in an int64 array)."""
    if isinstance(value, str) and _INT_RE.fullmatch(value.strip()):
        v = int(value.strip())
    elif isinstance(value, int) and not isinstance(value, bool):
        v = value
    else:
        raise ValueError(f"{where}: {what} must be an integer, got {value!r}")
    if v < minimum:
        raise ValueError(f"{where}: {what} must be >= {minimum}, got {v}")
    if v > _INT64_MAX:
        raise ValueError(f"{where}: {what} must fit in int64 (at most 2**63 - 1), got {v}")
    return v


def _parse_split(value: object, where: str) -> str:
    if not isinstance(value, str) or value.strip() not in _SPLITS:
        raise ValueError(f"{where}: split must be one of {', '.join(_SPLITS)}, got {value!r}")
    return value.strip()


def _record(
    where: str,
    path: str | None,
    text: str | None,
    identity: int,
    modality: int,
    camera: int,
    split: str,
) -> _Row:
    try:
        return ReIDRecord(path, text, identity, -1, modality, camera, split), where
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None


# --- checks shared by every layout -------------------------------------------------------------


def _sample_key(r: ReIDRecord) -> tuple[object, ...]:
    if r.modality == int(Modality.TEXT):
        return ("text", r.identity, r.text, r.camera, r.split)
    return ("image", os.path.normpath(str(r.path)))


def _same_sample(a: ReIDRecord, b: ReIDRecord) -> bool:
    fields = ("text", "identity", "modality", "camera", "split")
    return all(getattr(a, f) == getattr(b, f) for f in fields)


def _describe(r: ReIDRecord) -> str:
    mod = Modality(r.modality).name
    return f"identity {r.identity}, modality {mod}, camera {r.camera}, split {r.split}"


def _check_rows(
    rows: Iterable[_Row], on_error: OnError, source: str
) -> tuple[list[ReIDRecord], list[tuple[str, str]]]:
    """Refuse an identity in two splits and an image listed with two different sets of fields;
    refuse a sample listed twice, or keep its first row (``on_error="skip"``)."""
    first: dict[tuple[object, ...], _Row] = {}
    split_of: dict[int, _Row] = {}
    kept: list[ReIDRecord] = []
    duplicates: list[tuple[str, str, str]] = []  # (what, first row, this row)
    for r, where in rows:
        owner, owner_at = split_of.setdefault(r.identity, (r, where))
        if owner.split != r.split:
            raise ValueError(
                f"{source}: identity {r.identity} is in split {owner.split!r} ({owner_at}) and "
                f"in split {r.split!r} ({where}); splits must be identity-disjoint"
            )
        key = _sample_key(r)
        seen = first.setdefault(key, (r, where))
        if seen[0] is r:
            kept.append(r)
            continue
        what = str(r.path) if r.text is None else f"text: {r.text}"
        if not _same_sample(seen[0], r):
            raise ValueError(
                f"{source}: image {r.path} is listed twice with different fields: "
                f"{seen[1]} ({_describe(seen[0])}) and {where} ({_describe(r)})"
            )
        duplicates.append((what, seen[1], where))
    if duplicates and on_error == "raise":
        listed = "; ".join(f"{what} at {a} and {b}" for what, a, b in duplicates[:3])
        more = f" (and {len(duplicates) - 3} more)" if len(duplicates) > 3 else ""
        raise ValueError(
            f"{source}: {len(duplicates)} duplicated row(s): {listed}{more}; remove them, or "
            "pass on_error='skip' to keep the first row of each"
        )
    skipped = [(what, f"duplicate of {a} ({b})") for what, a, b in duplicates]
    if skipped:
        warnings.warn(
            f"{source}: skipped {len(skipped)} duplicate row(s), first: "
            f"{skipped[0][0]} ({skipped[0][1]})",
            stacklevel=4,
        )
    return kept, skipped


def _problem(path: str, verify: bool) -> str | None:
    if not Path(path).is_file():
        return "missing"
    if verify:
        try:
            load_image(path)
        except ImageDecodeError as exc:
            cause = exc.__cause__ if exc.__cause__ is not None else exc
            return f"corrupt ({type(cause).__name__}: {cause})"
    return None


def _problems(paths: Sequence[str], verify: bool) -> Generator[str | None, None, None]:
    """``_problem`` of every path, in order; decodes run on threads (Pillow releases the GIL
    while decoding), and the ones not yet started are cancelled when the generator is closed."""
    if not verify or len(paths) < 2:
        yield from (_problem(p, verify) for p in paths)
        return
    pool = ThreadPoolExecutor(max_workers=min(16, (os.cpu_count() or 1) + 4))
    try:
        yield from pool.map(_problem, paths, [verify] * len(paths))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _finish(rows: Iterable[_Row], on_error: OnError, verify: bool, source: str) -> RecordList:
    records, skipped = _check_rows(rows, on_error, source)
    image_at = [i for i, r in enumerate(records) if r.modality != int(Modality.TEXT)]
    bad: set[int] = set()
    unreadable: list[tuple[str, str]] = []
    paths = [str(records[i].path) for i in image_at]
    # closed explicitly: a raise below must not leave the pool decoding the remaining files
    with contextlib.closing(_problems(paths, verify)) as problems:
        for i, why in zip(image_at, problems, strict=True):
            if why is None:
                continue
            if on_error == "raise":
                raise ImageDecodeError(
                    f"image file {records[i].path} listed by {source} is {why} "
                    "(pass on_error='skip' to drop such files)"
                )
            bad.add(i)
            unreadable.append((str(records[i].path), why))
    if unreadable:
        warnings.warn(
            f"{source}: skipped {len(unreadable)} unreadable image file(s), first: "
            f"{unreadable[0][0]} ({unreadable[0][1]})",
            stacklevel=3,
        )
    return RecordList((r for i, r in enumerate(records) if i not in bad), skipped + unreadable)


def _path_label_lines(path: Path) -> Iterator[tuple[str, int, str]]:
    """``(relative path, identity, "file:line")`` of each non-blank line."""
    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{where}: expected '<relative path> <integer id>', got {line!r}")
        yield parts[0], _parse_int(parts[1], "identity", where), where


_IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def load_sysu_mm01(
    root: str | Path, *, on_error: OnError = "raise", verify: bool = True
) -> RecordList:
    """Load SYSU-MM01 (``cam1..cam6/<id>/`` + ``exp/*_id.txt``); ids in no list are ignored.

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> (root / "exp").mkdir()
        >>> for split, ids in (("train", "1"), ("val", "2"), ("test", "3")):
        ...     _ = (root / "exp" / f"{split}_id.txt").write_text(ids)
        >>> for cam in range(1, 7):
        ...     (root / f"cam{cam}").mkdir()
        >>> (root / "cam3" / "0003").mkdir()
        >>> Image.new("L", (4, 8)).save(root / "cam3" / "0003" / "0001.jpg")
        >>> r = load_sysu_mm01(root)[0]
        >>> r.identity, r.modality, r.camera, r.split
        (3, 1, 3, 'test')
    """
    _check_options(on_error, verify)
    root = Path(root)
    split_of: dict[int, str] = {}
    for split in ("train", "val", "test"):
        f = root / "exp" / f"{split}_id.txt"
        for tok in _read_text(f).replace("\n", ",").split(","):
            if not tok.strip():
                continue
            pid = _parse_int(tok, "identity", f"{f}")
            if split_of.setdefault(pid, split) != split:
                raise ValueError(f"{f}: identity {pid} is also listed in {split_of[pid]}_id.txt")
    rows: list[_Row] = []
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
                    rows.append(_record(str(f), str(f), None, pid, mod, cam, split))
    return _finish(rows, on_error, verify, f"SYSU-MM01 at {root}")


def load_regdb(
    root: str | Path, trial: int = 1, *, on_error: OnError = "raise", verify: bool = True
) -> RecordList:
    """Load one RegDB trial (``idx/{train,test}_{visible,thermal}_{trial}.txt``).

    Train and test a model per trial: testing one model on all trials leaks test identities.
    """
    _check_options(on_error, verify)
    if isinstance(trial, bool) or not isinstance(trial, int) or not 1 <= trial <= 10:
        raise ValueError(f"trial must be an int in 1..10, got {trial!r}")
    root = Path(root)
    lines: dict[str, list[tuple[str, int, int, int, str]]] = {"train": [], "test": []}
    for split in ("train", "test"):
        for name, mod, cam in (("visible", 0, 1), ("thermal", 1, 2)):
            f = root / "idx" / f"{split}_{name}_{trial}.txt"
            for rel, pid, where in _path_label_lines(f):
                lines[split].append((rel, pid, mod, cam, where))
    train_ids = {pid for _, pid, _, _, _ in lines["train"]}
    offset = 100000 if train_ids & {pid for _, pid, _, _, _ in lines["test"]} else 0
    rows = [
        _record(
            where, str(root / rel), None, pid + (offset if split == "test" else 0), mod, cam, split
        )
        for split in ("train", "test")
        for rel, pid, mod, cam, where in lines[split]
    ]
    return _finish(rows, on_error, verify, f"RegDB trial {trial} at {root}")


_CAM_RE = re.compile(r"(?:^|[/\\])cam([0-9]+)(?:[/\\]|$)|_c([0-9]+)", re.IGNORECASE)


def _camera_from_path(rel: str, where: str) -> int:
    m = _CAM_RE.search(rel)
    if m is None:
        raise ValueError(f"{where}: cannot find a camera ('camN' or '_cN') in path {rel!r}")
    return _parse_int(m.group(1) or m.group(2), "camera", where)


def load_llcm(root: str | Path, *, on_error: OnError = "raise", verify: bool = True) -> RecordList:
    """Load LLCM from ``idx/{train,test}_{vis,nir}.txt`` lists."""
    _check_options(on_error, verify)
    root = Path(root)
    rows: list[_Row] = []
    for split in ("train", "test"):
        for name, mod in (("vis", 0), ("nir", 1)):
            for rel, pid, where in _path_label_lines(root / "idx" / f"{split}_{name}.txt"):
                cam = _camera_from_path(rel, where)
                rows.append(_record(where, str(root / rel), None, pid, mod, cam, split))
    return _finish(rows, on_error, verify, f"LLCM at {root}")


def _json_entries(person: dict[str, Any], where: str) -> Iterator[tuple[str, Any]]:
    """``(modality key, entries)`` of an identity object: its top-level modality keys, then
    those under ``"images"``."""
    images = person.get("images", {})
    if not isinstance(images, dict):
        raise ValueError(
            f"{where}: 'images' must be an object mapping modality keys to lists, got {images!r}"
        )
    for key, entries in person.items():
        if key not in ("id", "split", "images"):
            yield key, entries
    yield from images.items()


def _json_image(e: object, where: str) -> tuple[str, int]:
    if isinstance(e, str) and e:
        return e, 0
    if isinstance(e, dict) and set(e) <= {"path", "camera"}:
        rel = e.get("path")
        if isinstance(rel, str) and rel:
            return rel, _parse_int(e.get("camera", 0), "camera", where)
    raise ValueError(
        f"{where}: image entries must be a path or {{'path': ..., 'camera': N}}, got {e!r}"
    )


def load_json_manifest(
    path: str | Path,
    *,
    root: str | Path | None = None,
    on_error: OnError = "raise",
    verify: bool = True,
) -> RecordList:
    """Load a PRCV2025/ORBench-style JSON manifest (see the module docstring).

    Relative image paths are resolved against ``root`` (default: the manifest's folder).
    """
    _check_options(on_error, verify)
    path = Path(path)
    text = _read_text(path)
    try:
        data = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, or an integer too long to convert
        raise ValueError(f"{path}: invalid JSON: {exc}") from None
    base = Path(root) if root is not None else path.parent
    people = data.get("identities") if isinstance(data, dict) else data
    if not isinstance(people, list):
        raise ValueError(f"{path}: expected a list of identities or {{'identities': [...]}}")
    rows: list[_Row] = []
    for k, person in enumerate(people):
        where = f"{path} identity #{k}"
        if not isinstance(person, dict) or "id" not in person:
            raise ValueError(f"{where}: expected an object with an 'id'")
        pid = _parse_int(person["id"], "identity", where)
        split = _parse_split(person.get("split", "train"), where)
        for key, entries in _json_entries(person, where):
            try:
                mod = int(parse_modality(key))
            except ValueError as exc:
                raise ValueError(f"{where}: unknown modality key {key!r}: {exc}") from None
            if not isinstance(entries, list):
                raise ValueError(f"{where}: {key!r} must be a list, got {entries!r}")
            for e in entries:
                if mod == int(Modality.TEXT):
                    if not isinstance(e, str):
                        raise ValueError(f"{where}: captions must be strings, got {e!r}")
                    if not e.strip():
                        raise ValueError(f"{where}: empty caption {e!r} in {key!r}")
                    rows.append(_record(where, None, e, pid, mod, 0, split))
                else:
                    rel, cam = _json_image(e, where)
                    rows.append(_record(where, str(base / rel), None, pid, mod, cam, split))
    return _finish(rows, on_error, verify, f"manifest {path}")


_CSV_NEED = ("path", "label", "modality", "camera")
_CSV_ALLOWED = (*_CSV_NEED, "split", "text")


def _csv_header(header: list[str] | None, path: Path) -> list[str]:
    names = [h.strip() for h in header or ()]
    missing = [n for n in _CSV_NEED if n not in names]
    if missing:
        raise ValueError(
            f"{path}: header must contain {list(_CSV_NEED)}, got {names} (missing {missing})"
        )
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"{path}: header lists column(s) {twice} more than once")
    unknown = [n for n in names if n not in _CSV_ALLOWED]
    if unknown:
        raise ValueError(
            f"{path}: unknown column(s) {unknown} in the header (allowed: {list(_CSV_ALLOWED)})"
        )
    return names


def _csv_rows(path: Path) -> Iterator[tuple[dict[str, str], str]]:
    """``(row as a dict, "file:line")`` of each non-blank data row; the fields must match the
    header one for one."""
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    try:
        names = _csv_header(next(reader, None), path)
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if not row:
                continue
            if len(row) != len(names):
                raise ValueError(
                    f"{where}: {len(row)} fields but the header has {len(names)} "
                    "(quote a field that contains a comma)"
                )
            yield dict(zip(names, row, strict=True)), where
    except csv.Error as exc:
        raise ValueError(f"{path}:{reader.line_num}: malformed CSV: {exc}") from None


def load_csv_manifest(
    path: str | Path,
    *,
    root: str | Path | None = None,
    on_error: OnError = "raise",
    verify: bool = True,
) -> RecordList:
    """Load a CSV manifest ``path,label,modality,camera[,split][,text]`` (header required)."""
    _check_options(on_error, verify)
    path = Path(path)
    base = Path(root) if root is not None else path.parent
    rows: list[_Row] = []
    for row, where in _csv_rows(path):
        try:
            mod = int(parse_modality(row["modality"].strip()))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        pid = _parse_int(row["label"], "identity", where)
        cam = _parse_int(row["camera"].strip() or "0", "camera", where)
        split = _parse_split(row.get("split", "").strip() or "train", where)
        text = row.get("text", "")
        rel = row["path"].strip()
        if mod == int(Modality.TEXT):
            if not text.strip():
                raise ValueError(f"{where}: a TEXT row needs a non-empty 'text' column")
            rows.append(_record(where, None, text, pid, mod, cam, split))
        else:
            if not rel:
                raise ValueError(f"{where}: an image row needs a 'path'")
            if text.strip():
                raise ValueError(
                    f"{where}: an image row must leave 'text' empty (give a caption its own "
                    f"TEXT row), got {text!r}"
                )
            rows.append(_record(where, str(base / rel), None, pid, mod, cam, split))
    return _finish(rows, on_error, verify, f"manifest {path}")
