"""Retrieval evaluation for (cross-modal) person re-identification.

* :mod:`~sdmreid.evaluation.metrics` — :func:`evaluate_retrieval` / :class:`RetrievalMetrics`:
  CMC, mAP and mINP, chunked over queries, on the features' device; ignore rules.
* :mod:`~sdmreid.evaluation.protocols` — generic protocol helpers: modality selection,
  multi-modal query fusion, :func:`evaluate_all_to_rgb`, the seeded gallery draw, multi-trial
  results.
* One module per published benchmark: :mod:`~sdmreid.evaluation.sysu_mm01`,
  :mod:`~sdmreid.evaluation.regdb`, :mod:`~sdmreid.evaluation.llcm`, and the PRCV 2025
  challenge's MM-k protocol, :mod:`~sdmreid.evaluation.prcv`.

Every public name is importable from ``sdmreid.evaluation`` directly.
"""

from __future__ import annotations

from sdmreid.evaluation.llcm import LLCM_NIR_CAMS, LLCM_RGB_CAMS, evaluate_llcm
from sdmreid.evaluation.metrics import (
    IgnoreRule,
    RetrievalMetrics,
    camera_pair_ignore,
    evaluate_retrieval,
)
from sdmreid.evaluation.prcv import (
    PRCV_QUERY_MODALITIES,
    Combination,
    PRCVResult,
    QueryGroups,
    build_query_groups,
    combination_name,
    evaluate_prcv,
)
from sdmreid.evaluation.protocols import (
    FusedQueries,
    ProtocolResult,
    cross_modal_split,
    draw_gallery,
    evaluate_all_to_rgb,
    evaluate_cross_modal,
    fuse_queries,
    mean_over_trials,
    parse_direction,
)
from sdmreid.evaluation.regdb import RegDBTrial, evaluate_regdb
from sdmreid.evaluation.sysu_mm01 import (
    SYSU_ALL_RGB_CAMS,
    SYSU_INDOOR_RGB_CAMS,
    SYSU_NIR_CAMS,
    SYSUPermutation,
    evaluate_sysu_mm01,
    load_sysu_permutation,
    parse_sysu_paths,
    sysu_ignore_rule,
)

__all__ = [
    "LLCM_NIR_CAMS",
    "LLCM_RGB_CAMS",
    "PRCV_QUERY_MODALITIES",
    "SYSU_ALL_RGB_CAMS",
    "SYSU_INDOOR_RGB_CAMS",
    "SYSU_NIR_CAMS",
    "Combination",
    "FusedQueries",
    "IgnoreRule",
    "PRCVResult",
    "ProtocolResult",
    "QueryGroups",
    "RegDBTrial",
    "RetrievalMetrics",
    "SYSUPermutation",
    "build_query_groups",
    "camera_pair_ignore",
    "combination_name",
    "cross_modal_split",
    "draw_gallery",
    "evaluate_all_to_rgb",
    "evaluate_cross_modal",
    "evaluate_llcm",
    "evaluate_prcv",
    "evaluate_regdb",
    "evaluate_retrieval",
    "evaluate_sysu_mm01",
    "fuse_queries",
    "load_sysu_permutation",
    "mean_over_trials",
    "parse_direction",
    "parse_sysu_paths",
    "sysu_ignore_rule",
]
