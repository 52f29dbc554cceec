"""Corrupt image files (issue 23, item 2): ``on_error`` keeps its promise for decode failures.

A half-written JPEG passes ``Image.verify()`` (which checks nothing for JPEG), so these tests
truncate real JPEG files and check that the loaders decode every listed image up front, and that
a dataset meeting an undecodable file later substitutes and counts it instead of killing a
DataLoader worker.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from reid_example.data import (
    ImageDecodeError,
    RecordDataset,
    ReIDRecord,
    collate_multimodal,
    eval_transform,
    load_csv_manifest,
    load_image,
    load_sysu_mm01,
)
from torch.utils.data import DataLoader

IDENTITY = eval_transform((12, 6), mean=(0, 0, 0), std=(1, 1, 1))


def jpeg_bytes(value: int, size: tuple[int, int] = (6, 12)) -> bytes:
    """A small, noisy JPEG (noise keeps the entropy-coded data long enough to cut)."""
    rng = np.random.default_rng(value)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    pixels[..., 0] = value  # a per-file signature in the red channel, before compression
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def half_written_jpeg(path: Path, value: int = 77) -> Path:
    # cut in the middle of the entropy-coded scan: the header (all verify() reads) stays whole
    data = jpeg_bytes(value)
    scan = data.index(b"\xff\xda")
    return write(path, data[: (scan + len(data)) // 2])


def csv_manifest(root: Path, rows: list[str]) -> Path:
    path = root / "m.csv"
    path.write_text("path,label,modality,camera\n" + "".join(r + "\n" for r in rows))
    return path


def test_half_written_jpeg_passes_pillow_verify_but_not_a_decode(tmp_path):
    # the premise of the defect: verify() reads the header only
    bad = half_written_jpeg(tmp_path / "bad.jpg")
    with Image.open(bad) as im:
        im.verify()
    with pytest.raises(ImageDecodeError, match=re.escape("bad.jpg")):
        load_image(bad)


def test_truncated_jpeg_in_csv_manifest_is_skipped_and_counted_under_skip(tmp_path):
    for k in range(3):
        write(tmp_path / f"ok{k}.jpg", jpeg_bytes(10 + k))
    bad = half_written_jpeg(tmp_path / "bad.jpg")
    path = csv_manifest(
        tmp_path, ["ok0.jpg,1,rgb,1", "bad.jpg,1,rgb,1", "ok1.jpg,1,rgb,2", "ok2.jpg,2,ir,3"]
    )
    with pytest.warns(UserWarning, match="skipped 1 unreadable image"):
        recs = load_csv_manifest(path, on_error="skip")
    assert [Path(r.path).name for r in recs] == ["ok0.jpg", "ok1.jpg", "ok2.jpg"]
    assert [p for p, _ in recs.skipped] == [str(bad)]
    assert "truncated" in recs.skipped[0][1]
    # every kept sample decodes, in loader workers too
    ds = RecordDataset(recs, IDENTITY)
    loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_multimodal)
    assert sum(int(b["images"].shape[0]) for b in loader) == 3
    assert ds.decode_failures == 0


def test_truncated_jpeg_in_csv_manifest_is_refused_at_load_under_raise(tmp_path):
    write(tmp_path / "ok.jpg", jpeg_bytes(1))
    half_written_jpeg(tmp_path / "bad.jpg")
    path = csv_manifest(tmp_path, ["ok.jpg,1,rgb,1", "bad.jpg,1,rgb,1"])
    with pytest.raises(ImageDecodeError, match=r"bad\.jpg.*m\.csv.*truncated"):
        load_csv_manifest(path)


def test_truncated_jpeg_in_a_folder_layout_is_found_by_the_default_load(tmp_path):
    (tmp_path / "exp").mkdir()
    for split, ids in (("train", "1"), ("val", ""), ("test", "")):
        (tmp_path / "exp" / f"{split}_id.txt").write_text(ids)
    for cam in range(1, 7):
        (tmp_path / f"cam{cam}").mkdir()
    write(tmp_path / "cam1" / "0001" / "0001.jpg", jpeg_bytes(3))
    bad = half_written_jpeg(tmp_path / "cam1" / "0001" / "0002.jpg")
    with pytest.raises(ImageDecodeError, match=re.escape(str(bad))):
        load_sysu_mm01(tmp_path)
    with pytest.warns(UserWarning, match="skipped 1"):
        assert len(load_sysu_mm01(tmp_path, on_error="skip")) == 1
    # verify=False checks existence only: the cheap check for very large sets
    assert len(load_sysu_mm01(tmp_path, verify=False)) == 2


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_loader_verify_must_be_a_bool(tmp_path, bad):
    path = csv_manifest(tmp_path, [])
    with pytest.raises(TypeError, match="verify"):
        load_csv_manifest(path, verify=bad)


@settings(max_examples=25, deadline=None)
@given(
    fmt=st.sampled_from(["JPEG", "PNG"]),
    cut=st.floats(min_value=0.0, max_value=1.0),
    flip=st.one_of(st.none(), st.tuples(st.floats(0.0, 1.0), st.integers(1, 255))),
)
def test_any_damaged_image_is_kept_only_if_it_decodes(tmp_path_factory, fmt, cut, flip):
    # for all truncations and byte flips of a valid file: under skip the loader never keeps a
    # record that the dataset then fails to decode
    root = tmp_path_factory.mktemp("damaged")
    pixels = np.random.default_rng(0).integers(0, 256, (12, 6, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    data = bytearray(buf.getvalue()[: round(cut * len(buf.getvalue()))])
    if flip is not None and data:
        at, xor = flip
        data[min(len(data) - 1, int(at * len(data)))] ^= xor
    write(root / "x.img", bytes(data))
    path = csv_manifest(root, ["x.img,1,rgb,1"])
    with quiet():
        recs = load_csv_manifest(path, on_error="skip")
    assert len(recs) + len(recs.skipped) == 1
    ds = RecordDataset(recs, IDENTITY)
    for i in range(len(ds)):
        assert ds[i]["image"].shape == (3, 12, 6)
    assert ds.decode_failures == 0


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Accept a skip warning without requiring one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


# --- a file that fails to decode after loading: RecordDataset(on_error=...) --------------------


def dataset_with_late_corruption(root: Path, on_error: str) -> tuple[RecordDataset, list[bytes]]:
    """Records of one identity/modality (3 files) + another modality; file 1 breaks after load."""
    blobs = [jpeg_bytes(40 + k) for k in range(4)]
    recs = [
        ReIDRecord(
            str(write(root / f"{k}.jpg", blobs[k])), None, 5, -1, 0 if k < 3 else 1, 1, "train"
        )
        for k in range(4)
    ]
    half_written_jpeg(root / "1.jpg")
    return RecordDataset(recs, IDENTITY, on_error=on_error), blobs


def decoded(blob: bytes) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")).copy())


def test_record_dataset_raise_names_the_undecodable_file(tmp_path):
    ds, _ = dataset_with_late_corruption(tmp_path, "raise")
    with pytest.raises(ImageDecodeError, match=re.escape("1.jpg")):
        ds[1]


def test_record_dataset_skip_substitutes_deterministically_and_counts(tmp_path):
    ds, blobs = dataset_with_late_corruption(tmp_path, "skip")
    with pytest.warns(UserWarning, match=r"1\.jpg.*2\.jpg"):
        item = ds[1]
    # the next image of the same identity and modality, in record order, stands in; the
    # item keeps the requested record's label, modality, camera and index
    expected = decoded(blobs[2]).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(item["image"], expected, atol=1e-6, rtol=0)
    assert (item["label"], item["modality"], item["camera"], item["index"]) == (0, 0, 1, 1)
    assert ds.decode_failures == 1 and ds.failed_paths() == [str(tmp_path / "1.jpg")]


@pytest.mark.parametrize("workers", [0, 2])
def test_record_dataset_skip_never_kills_a_loader_worker(tmp_path, workers):
    ds, _ = dataset_with_late_corruption(tmp_path, "skip")
    loader = DataLoader(ds, batch_size=4, num_workers=workers, collate_fn=collate_multimodal)
    with quiet():
        (batch,) = list(loader)
    reference = torch.stack([ds[i]["image"] for i in (0, 2, 2, 3)])
    torch.testing.assert_close(batch["images"], reference)  # same with and without workers
    assert ds.decode_failures == 1  # counted in the workers, read in the main process


def test_record_dataset_skip_without_a_substitute_names_the_file(tmp_path):
    ds, _ = dataset_with_late_corruption(tmp_path, "skip")
    (tmp_path / "0.jpg").unlink()
    (tmp_path / "2.jpg").write_bytes(b"")
    with quiet(), pytest.raises(ImageDecodeError, match=r"1\.jpg.*no other image of identity 5"):
        ds[1]
    assert ds.decode_failures == 3


def test_record_dataset_on_error_is_checked(tmp_path):
    with pytest.raises(ValueError, match="on_error"):
        RecordDataset([], on_error="ignore")
