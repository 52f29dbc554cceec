"""Bad manifests and index files (issue 23, item 10): a clear ``ValueError`` naming the file and
the row, never a deep ``OverflowError``/``UnicodeDecodeError`` or a silently kept row."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from reid_example.data import (
    RecordDataset,
    ReIDRecord,
    load_csv_manifest,
    load_json_manifest,
    load_llcm,
    load_regdb,
    load_sysu_mm01,
    make_splits,
)

INT64_MAX = 2**63 - 1


def png(path: Path, value: int = 7) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 12), (value, value, value)).save(path)
    return path


def csv(root: Path, body: str, header: str = "path,label,modality,camera,split,text") -> Path:
    path = root / "m.csv"
    path.write_text(header + "\n" + body)
    return path


# --- duplicate rows -----------------------------------------------------------------------------


def test_duplicate_csv_rows_are_refused_naming_the_file_and_rows(tmp_path):
    png(tmp_path / "a.png")
    png(tmp_path / "b.png")
    path = csv(tmp_path, "a.png,1,rgb,1,train,\nb.png,1,ir,3,train,\na.png,1,rgb,1,train,\n")
    with pytest.raises(ValueError, match=r"m\.csv.*a\.png.*m\.csv:2.*m\.csv:4"):
        load_csv_manifest(path)


def test_duplicate_csv_rows_are_dropped_with_a_warning_under_skip(tmp_path):
    png(tmp_path / "a.png")
    path = csv(
        tmp_path,
        "a.png,1,rgb,1,train,\n./a.png,1,rgb,1,train,\n"
        ",1,text,0,train,a man\n,1,text,0,train,a man\n",
    )
    with pytest.warns(UserWarning, match="skipped 2 duplicate"):
        recs = load_csv_manifest(path, on_error="skip")
    assert [(r.modality, r.text) for r in recs] == [(0, None), (4, "a man")]
    assert [why for _, why in recs.skipped] == [
        f"duplicate of {path}:2 ({path}:3)",
        f"duplicate of {path}:4 ({path}:5)",
    ]


def test_one_image_listed_with_different_fields_is_refused_even_under_skip(tmp_path):
    png(tmp_path / "a.png")
    path = csv(tmp_path, "a.png,1,rgb,1,train,\na.png,2,rgb,1,train,\n")
    for on_error in ("raise", "skip"):
        with pytest.raises(ValueError, match=r"a\.png.*m\.csv:2.*m\.csv:3"):
            load_csv_manifest(path, on_error=on_error)


def test_the_same_caption_of_two_identities_is_not_a_duplicate(tmp_path):
    path = csv(tmp_path, ",1,text,0,train,a man\n,2,text,0,train,a man\n")
    assert [r.identity for r in load_csv_manifest(path)] == [1, 2]


def test_duplicate_json_and_index_entries_are_refused(tmp_path):
    png(tmp_path / "img" / "a.png")
    path = tmp_path / "m.json"
    path.write_text(json.dumps([{"id": 1, "rgb": ["img/a.png"]}, {"id": 1, "rgb": ["img/a.png"]}]))
    with pytest.raises(ValueError, match=r"img/a\.png.*identity #0.*identity #1"):
        load_json_manifest(path)
    idx = tmp_path / "idx"
    idx.mkdir()
    for split in ("train", "test"):
        for name in ("visible", "thermal"):
            png(tmp_path / f"{split}{name}.png")
            lines = f"{split}{name}.png 1\n"
            if (split, name) == ("test", "thermal"):
                lines += f"{split}{name}.png 1\n"
            (idx / f"{split}_{name}_1.txt").write_text(lines)
    with pytest.raises(ValueError, match=r"test_thermal_1\.txt:1.*test_thermal_1\.txt:2"):
        load_regdb(tmp_path)


def test_an_identity_in_two_splits_is_refused_naming_both_rows(tmp_path):
    path = csv(tmp_path, ",1,text,0,train,a man\n,2,text,0,test,a woman\n,1,text,0,test,a boy\n")
    with pytest.raises(
        ValueError, match=r"identity 1.*'train' \(.*m\.csv:2\).*'test' \(.*m\.csv:4\)"
    ):
        load_csv_manifest(path)


# --- encodings ----------------------------------------------------------------------------------

LATIN1 = "path,label,modality,camera,split,text\n,1,text,0,train,un homme \xe0 v\xe9lo\n"


def test_non_utf8_csv_manifest_names_the_file_and_the_encoding(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(LATIN1.encode("latin-1"))
    with pytest.raises(ValueError, match=r"m\.csv.*UTF-8") as err:
        load_csv_manifest(path)
    assert not isinstance(err.value, UnicodeDecodeError)


def test_non_utf8_json_manifest_and_index_files_name_the_file(tmp_path):
    path = tmp_path / "m.json"
    path.write_bytes('[{"id": 1, "text": ["caf\xe9"]}]'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"m\.json.*UTF-8"):
        load_json_manifest(path)
    (tmp_path / "exp").mkdir()
    for split in ("train", "val", "test"):
        (tmp_path / "exp" / f"{split}_id.txt").write_bytes(b"1" if split != "val" else b"\xff2")
    with pytest.raises(ValueError, match=r"val_id\.txt.*UTF-8"):
        load_sysu_mm01(tmp_path)
    idx = tmp_path / "idx"
    idx.mkdir()
    (idx / "train_vis.txt").write_bytes("cam1/\xe9.jpg 1\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"train_vis\.txt.*UTF-8"):
        load_llcm(tmp_path)


def test_utf8_csv_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(("\ufeff" + LATIN1).encode("utf-8"))
    assert [r.text for r in load_csv_manifest(path)] == ["un homme \xe0 v\xe9lo"]


# --- integer fields -----------------------------------------------------------------------------


def test_identity_too_large_for_int64_names_the_row(tmp_path):
    path = csv(tmp_path, f",{2**70},text,0,train,a man\n")
    with pytest.raises(ValueError, match=r"m\.csv:2.*identity must fit in int64"):
        load_csv_manifest(path)
    jpath = tmp_path / "m.json"
    jpath.write_text(json.dumps([{"id": 2**70, "text": ["a man"]}]))
    with pytest.raises(ValueError, match=r"m\.json identity #0.*int64"):
        load_json_manifest(jpath)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("label", "-3", "identity must be >= 0"),
        ("label", "3.5", "identity must be an integer"),
        ("label", "1_000", "identity must be an integer"),
        ("label", "\u0663", "identity must be an integer"),  # a non-ASCII digit
        ("label", "", "identity must be an integer"),
        ("camera", "-1", "camera must be >= 0"),
        ("camera", str(2**64), "camera must fit in int64"),
        ("camera", "two", "camera must be an integer"),
        ("modality", "depth", "modality"),
        ("split", "tset", "split must be one of"),
    ],
)
def test_bad_csv_field_names_the_file_row_and_field(tmp_path, field, value, message):
    row = {"path": "", "label": "4", "modality": "text", "camera": "0", "split": "train"}
    row[field] = value
    path = csv(tmp_path, ",".join(row.values()) + ",a caption\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:2") + ".*" + re.escape(message)):
        load_csv_manifest(path)


@settings(max_examples=40, deadline=None)
@given(
    identity=st.one_of(
        st.integers(), st.integers(-(2**66), 2**66), st.sampled_from([0, INT64_MAX])
    ),
    camera=st.one_of(st.integers(-5, 10), st.integers()),
)
def test_any_integer_identity_and_camera_is_loaded_or_refused_naming_the_row(
    tmp_path_factory, identity, camera
):
    path = csv(tmp_path_factory.mktemp("ints"), f",{identity},text,{camera},train,a man\n")
    if 0 <= identity <= INT64_MAX and 0 <= camera <= INT64_MAX:
        (r,) = load_csv_manifest(path)
        assert (r.identity, r.camera) == (identity, camera)
        ds = RecordDataset([r])
        assert ds.identities.tolist() == [identity] and ds.cameras.tolist() == [camera]
    else:
        with pytest.raises(ValueError, match=re.escape(f"{path}:2")):
            load_csv_manifest(path)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"id": True, "text": ["x"]}, "identity must be an integer"),
        ({"id": 1.0, "text": ["x"]}, "identity must be an integer"),
        ({"id": -1, "text": ["x"]}, "identity must be >= 0"),
        ({"id": 1, "split": 3, "text": ["x"]}, "split must be one of"),
        ({"id": 1, "split": "tset", "text": ["x"]}, "split must be one of"),
        ({"id": 1, "images": ["a.png"]}, "'images' must be an object"),
        ({"id": 1, "text": [""]}, "empty caption"),
        ({"id": 1, "rgb": [{"path": "a.png", "camera": -2}]}, "camera must be >= 0"),
        ({"id": 1, "rgb": [{"path": "a.png", "camera": 2**64}]}, "camera must fit in int64"),
        ({"id": 1, "rgb": [""]}, "image entries must be a path"),
    ],
)
def test_bad_json_entry_names_the_file_and_identity(tmp_path, entry, message):
    png(tmp_path / "a.png")
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"identities": [{"id": 0, "text": ["y"]}, entry]}))
    with pytest.raises(
        ValueError, match=re.escape(f"{path} identity #1") + ".*" + re.escape(message)
    ):
        load_json_manifest(path)


def test_index_file_integers_are_checked_naming_the_line(tmp_path):
    idx = tmp_path / "idx"
    idx.mkdir()
    for split in ("train", "test"):
        for name in ("vis", "nir"):
            (idx / f"{split}_{name}.txt").write_text(f"{split}/cam1/{name}.jpg 1\n")
    (idx / "test_nir.txt").write_text(f"test/cam1/nir.jpg {2**70}\n")
    with pytest.raises(ValueError, match=r"test_nir\.txt:1.*int64"):
        load_llcm(tmp_path)
    (idx / "test_nir.txt").write_text("test/cam1/nir.jpg 1_0\n")
    with pytest.raises(ValueError, match=r"test_nir\.txt:1"):
        load_llcm(tmp_path)
    (tmp_path / "exp").mkdir()
    for split, ids in (("train", "1"), ("val", f"{2**70}"), ("test", "2")):
        (tmp_path / "exp" / f"{split}_id.txt").write_text(ids)
    with pytest.raises(ValueError, match=r"val_id\.txt.*int64"):
        load_sysu_mm01(tmp_path)


# --- row shape ----------------------------------------------------------------------------------


def test_csv_row_with_an_unquoted_comma_is_refused(tmp_path):
    path = csv(tmp_path, ",1,text,0,train,a man, tall and thin\n")
    with pytest.raises(ValueError, match=r"m\.csv:2.*7 fields.*header has 6.*quote"):
        load_csv_manifest(path)


def test_csv_row_with_missing_fields_is_refused(tmp_path):
    path = csv(tmp_path, "a.png,1\n")
    with pytest.raises(ValueError, match=r"m\.csv:2.*2 fields.*header has 6"):
        load_csv_manifest(path)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("path,label,modality", "header must contain"),
        ("path,label,modality,camera,splt", "unknown column"),
        ("path,label,label,modality,camera", "more than once"),
        ("", "header must contain"),
    ],
)
def test_bad_csv_header_names_the_file(tmp_path, header, message):
    path = csv(tmp_path, "", header=header)
    with pytest.raises(ValueError, match=r"m\.csv.*" + re.escape(message)):
        load_csv_manifest(path)


def test_image_row_with_a_caption_is_refused(tmp_path):
    png(tmp_path / "a.png")
    path = csv(tmp_path, "a.png,1,rgb,1,train,a man\n")
    with pytest.raises(ValueError, match=r"m\.csv:2.*image row.*text"):
        load_csv_manifest(path)


def test_csv_nul_byte_names_the_row(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(b"path,label,modality,camera\n,1,te\x00xt,0\n")
    with pytest.raises(ValueError, match=r"m\.csv"):
        load_csv_manifest(path)


# --- records built in code ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"identity": 2**70}, ValueError, "identity must fit in int64"),
        ({"identity": -1}, ValueError, "identity must be >= 0"),
        ({"identity": True}, TypeError, "identity must be an int"),
        ({"identity": 1.0}, TypeError, "identity must be an int"),
        ({"camera": -1}, ValueError, "camera must be >= 0"),
        ({"label": -2}, ValueError, "label must be >= -1"),
        ({"label": 2**63}, ValueError, "label must fit in int64"),
        ({"split": ""}, ValueError, "split"),
        ({"path": ""}, ValueError, "path"),
    ],
)
def test_record_fields_are_checked(kwargs, error, message):
    fields = {
        "path": "a.png",
        "text": None,
        "identity": 1,
        "label": -1,
        "modality": 0,
        "camera": 1,
        "split": "train",
    }
    fields.update(kwargs)
    with pytest.raises(error, match=re.escape(message)):
        ReIDRecord(**fields)


def test_numpy_integer_fields_are_stored_as_int():
    import numpy as np

    r = ReIDRecord("a.png", None, np.int64(3), -1, np.int32(1), np.uint8(2), "train")
    assert type(r.identity) is int and type(r.modality) is int and type(r.camera) is int
    assert make_splits([r]).train[0].label == 0
