"""Retrieval evaluation for (cross-modal) person re-identification.

* :func:`evaluate_retrieval` / :class:`RetrievalMetrics` — CMC, mAP and mINP, chunked over
  queries, on the features' device (:mod:`sdmreid.evaluation.metrics`).
* Modality selection, multi-modal query fusion and the published benchmark protocols
  (SYSU-MM01, RegDB, LLCM) (:mod:`sdmreid.evaluation.protocols`).
"""

from __future__ import annotations

from sdmreid.evaluation.metrics import (
    IgnoreRule,
    RetrievalMetrics,
    camera_pair_ignore,
    evaluate_retrieval,
)
from sdmreid.evaluation.protocols import (
    LLCM_NIR_CAMS,
    LLCM_RGB_CAMS,
    SYSU_ALL_RGB_CAMS,
    SYSU_INDOOR_RGB_CAMS,
    SYSU_NIR_CAMS,
    FusedQueries,
    ProtocolResult,
    RegDBTrial,
    SYSUPermutation,
    cross_modal_split,
    draw_gallery,
    evaluate_cross_modal,
    evaluate_llcm,
    evaluate_regdb,
    evaluate_sysu_mm01,
    fuse_queries,
    load_sysu_permutation,
    mean_over_trials,
    parse_direction,
    parse_sysu_paths,
)

__all__ = [
    "LLCM_NIR_CAMS",
    "LLCM_RGB_CAMS",
    "SYSU_ALL_RGB_CAMS",
    "SYSU_INDOOR_RGB_CAMS",
    "SYSU_NIR_CAMS",
    "FusedQueries",
    "IgnoreRule",
    "ProtocolResult",
    "RegDBTrial",
    "RetrievalMetrics",
    "SYSUPermutation",
    "camera_pair_ignore",
    "cross_modal_split",
    "draw_gallery",
    "evaluate_cross_modal",
    "evaluate_llcm",
    "evaluate_regdb",
    "evaluate_retrieval",
    "evaluate_sysu_mm01",
    "fuse_queries",
    "load_sysu_permutation",
    "mean_over_trials",
    "parse_direction",
    "parse_sysu_paths",
]
