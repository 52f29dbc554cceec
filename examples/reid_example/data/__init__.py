"""Data layer of the reference trainer: the embedded synthetic data set, real data-set layouts,
identity-disjoint splits, tensor transforms and augmentations, the caption tokenizer and the
multi-modal collate function.
"""

from reid_example.data.collate import collate_multimodal
from reid_example.data.layouts import (
    RecordList,
    load_csv_manifest,
    load_json_manifest,
    load_llcm,
    load_regdb,
    load_sysu_mm01,
)
from reid_example.data.records import (
    ImageDecodeError,
    RecordDataset,
    ReIDRecord,
    build_label_map,
    load_image,
    remap_labels,
)
from reid_example.data.splits import DataSplits, make_splits
from reid_example.data.synthetic import SyntheticMultiModalReID
from reid_example.data.synthetic_spec import PRESETS, SyntheticSpec, preset_spec
from reid_example.data.text import CaptionTokenizer, WordTokenizer
from reid_example.data.transforms import (
    Compose,
    Normalize,
    RandomChannel,
    RandomCrop,
    RandomErasing,
    RandomGrayscale,
    RandomHorizontalFlip,
    Resize,
    ToFloat,
    eval_transform,
    sample_generator,
    train_transform,
)

__all__ = [
    "PRESETS",
    "CaptionTokenizer",
    "Compose",
    "DataSplits",
    "ImageDecodeError",
    "Normalize",
    "RandomChannel",
    "RandomCrop",
    "RandomErasing",
    "RandomGrayscale",
    "RandomHorizontalFlip",
    "ReIDRecord",
    "RecordDataset",
    "RecordList",
    "Resize",
    "SyntheticMultiModalReID",
    "SyntheticSpec",
    "ToFloat",
    "WordTokenizer",
    "build_label_map",
    "collate_multimodal",
    "eval_transform",
    "load_csv_manifest",
    "load_image",
    "load_json_manifest",
    "load_llcm",
    "load_regdb",
    "load_sysu_mm01",
    "make_splits",
    "preset_spec",
    "remap_labels",
    "sample_generator",
    "train_transform",
]
