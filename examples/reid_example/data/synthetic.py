"""An embedded, generated multi-modal person ReID data set (no download).

Every identity has latent attributes; every sample renders its identity under random nuisance
factors into one of five modalities. The problem is genuinely cross-modal:

* **Identity cues** that survive a modality change: silhouette proportions (height, shoulder
  width and taper, torso/leg ratio, head size), the upper garment's texture (plain, horizontal,
  vertical or diagonal stripes, checks; frequency; diagonal orientation), sleeve and lower
  garment type (trousers/shorts/skirt), accessories (a bag on the left or right, a hat), and
  — partially — garment lightness.
* **Colour** (21 garment colours) is a strong RGB-only cue that the NIR renderer's spectral mix
  collapses onto three intensity levels, so a model that memorises RGB colour cannot match
  infrared queries.
* **Nuisances**: scale, shift, stance width, stride; camera-dependent gain, colour cast and blur;
  per-sample brightness; background gradients and clutter rectangles; occluders; pixel noise.

The pieces, one module each: :mod:`.synthetic_spec` (what a data set contains, the presets),
:mod:`.attributes` (the palette and the seeded latent factors), :mod:`.render` (the image
modalities) and :mod:`.captions` (the TEXT modality, tokenised by
:class:`~reid_example.data.text.WordTokenizer`). This module holds the dataset that ties them to
sample indices.

Determinism: identity attributes depend on ``seed`` only (shared by the splits); the samples of a
split, their cameras and nuisance parameters on ``(seed, split)`` and the spec; sample ``i``
renders to the same pixels whether rendered alone, in a batch or from the cache. Random
augmentation uses ``sample_generator(seed, epoch, index)`` (see :mod:`.transforms`).

Data sets whose rendered images fit in ``cache_bytes`` are rendered once at construction
(``uint8``) and shared copy-on-write with DataLoader workers; larger ones render in
``__getitem__``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import Dataset

from reid_example.data.attributes import camera_params, identity_attributes, rng, sample_params
from reid_example.data.captions import caption
from reid_example.data.records import EpochMixin, Sample
from reid_example.data.render import noise_bank, render
from reid_example.data.synthetic_spec import PRESETS, SyntheticSpec, preset_spec
from reid_example.data.text import CaptionTokenizer, WordTokenizer
from reid_example.data.transforms import Transform, eval_transform
from sdmreid.modality import Modality

# The spec and its presets are re-exported beside the dataset they configure.
__all__ = ["PRESETS", "SyntheticMultiModalReID", "SyntheticSpec"]

SPLITS = ("train", "val", "test")


class SyntheticMultiModalReID(EpochMixin, Dataset[Sample]):
    """The generated cross-modal ReID data set; one instance holds one split.

    Args:
        spec: what to generate (see :class:`SyntheticSpec`, :data:`PRESETS`).
        seed: the data seed; identities are shared by the splits of one seed.
        split: ``"train"``, ``"val"`` or ``"test"`` (identity-disjoint).
        transform: image transform ``(uint8 [3,H,W], generator) -> float [3,H,W]``; default
            :func:`~reid_example.data.transforms.eval_transform` (ImageNet normalisation).
        tokenizer: caption tokenizer (default :class:`WordTokenizer`; any
            :class:`~reid_example.data.text.CaptionTokenizer`).
        max_text_len: token budget per caption.
        cache: render every image once at construction (``True``), never (``False``), or when
            the ``uint8`` images take at most ``cache_bytes`` (``None``).
        cache_bytes: the automatic-cache limit.

    Attributes:
        labels, identities, modalities, cameras: ``int64`` arrays, one entry per sample;
            ``labels = label_map[identities]`` are contiguous ``0..num_classes-1``.
        texts: the caption of each TEXT sample (``None`` elsewhere).

    Example:
        >>> ds = SyntheticMultiModalReID.preset("demo", seed=0, split="val",
        ...                                     identities_per_split=(0, 4, 0))
        >>> ds.num_classes, sorted(set(ds.modalities.tolist()))
        (4, [0, 1, 2, 3, 4])
        >>> item = ds[0]
        >>> item["image"].shape, item["modality"], item["label"]
        (torch.Size([3, 64, 32]), 0, 0)
    """

    def __init__(
        self,
        spec: SyntheticSpec,
        *,
        seed: int = 0,
        split: str = "train",
        transform: Transform | None = None,
        tokenizer: CaptionTokenizer | None = None,
        max_text_len: int = 48,
        cache: bool | None = None,
        cache_bytes: int = 256 * 2**20,
    ) -> None:
        if not isinstance(spec, SyntheticSpec):
            raise TypeError(f"spec must be a SyntheticSpec, got {type(spec).__name__}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self._init_epoch(seed)
        self.spec = spec
        self.split = split
        self.transform = transform if transform is not None else eval_transform(spec.image_size)
        self.tokenizer = tokenizer if tokenizer is not None else WordTokenizer()
        self.max_text_len = max_text_len

        n_tr, n_va, n_te = spec.identities_per_split
        offsets = {"train": 0, "val": n_tr, "test": n_tr + n_va}
        n_split = spec.identities_per_split[SPLITS.index(split)]
        self._attrs_all = identity_attributes(self.seed, n_tr + n_va + n_te)
        self._cams = camera_params(self.seed)
        self._bank = noise_bank(self.seed, spec.image_size)

        r = rng(self.seed, 0x5A3, SPLITS.index(split))
        ids_local = np.arange(n_split)
        rgb_only = np.zeros(n_split, dtype=bool)
        if split == "train" and spec.rgb_only_fraction > 0:
            k = round(spec.rgb_only_fraction * n_split)
            rgb_only[r.permutation(n_split)[:k]] = True
        ident: list[npt.NDArray[np.int64]] = []
        mods: list[npt.NDArray[np.int64]] = []
        for m, lo, hi in spec.counts:
            cnt = r.integers(lo, hi + 1, n_split)
            if m != int(Modality.RGB):
                cnt[rgb_only] = 0
            ident.append(np.repeat(ids_local, cnt))
            mods.append(np.full(int(cnt.sum()), m, dtype=np.int64))
        ident_a = np.concatenate(ident) if ident else np.zeros(0, np.int64)
        mods_a = np.concatenate(mods) if mods else np.zeros(0, np.int64)
        order = np.lexsort((mods_a, ident_a))
        local = ident_a[order]
        self.modalities = mods_a[order].astype(np.int64)
        n = len(local)
        self._gid = local + offsets[split]  # row into the attribute table
        self.identities = (self._gid + 1).astype(np.int64)  # 1-based like real data sets
        self.labels = local.astype(np.int64)
        self.label_map = {int(offsets[split] + k + 1): int(k) for k in range(n_split)}
        self.num_classes = n_split
        cams = np.zeros(n, dtype=np.int64)
        for m, cam_ids in spec.cameras:
            sel = self.modalities == int(m)
            cams[sel] = np.asarray(cam_ids, dtype=np.int64)[r.integers(0, len(cam_ids), sel.sum())]
        self.cameras = cams
        self._params = sample_params(r, n)
        rt = rng(self.seed, 0x7E7, SPLITS.index(split))
        self.texts: list[str | None] = [
            caption(self._attrs_all, int(self._gid[i]), rt, spec.text_drop_p)
            if self.modalities[i] == int(Modality.TEXT)
            else None
            for i in range(n)
        ]
        self._cache: torch.Tensor | None = None
        self._cache_row = np.full(n, -1, dtype=np.int64)
        image_rows = np.flatnonzero(self.modalities != int(Modality.TEXT))
        h, w = spec.image_size
        if cache is None:
            cache = len(image_rows) * 3 * h * w <= cache_bytes
        if cache and len(image_rows):
            self._fill_cache(image_rows)

    def _fill_cache(self, image_rows: npt.NDArray[np.int64]) -> None:
        """Render ``image_rows`` once as ``uint8``, in chunks that bound the float memory."""
        self._cache_row[image_rows] = np.arange(len(image_rows))
        chunks = [
            (self.render(image_rows[s : s + 256]) * 255).round_().to(torch.uint8)
            for s in range(0, len(image_rows), 256)
        ]
        self._cache = torch.cat(chunks)

    # ---- construction helpers --------------------------------------------------------------
    @classmethod
    def preset(
        cls,
        name: str,
        *,
        seed: int = 0,
        split: str = "train",
        image_size: tuple[int, int] | None = None,
        transform: Transform | None = None,
        tokenizer: CaptionTokenizer | None = None,
        max_text_len: int = 48,
        cache: bool | None = None,
        **overrides: Any,
    ) -> SyntheticMultiModalReID:
        """Build a split of a named preset (``sysu``, ``regdb``, ``prcv2025``, ``demo``; see
        :func:`~reid_example.data.synthetic_spec.preset_spec` for the aliases).

        ``image_size`` (default: the preset's) and any :class:`SyntheticSpec` field given as a
        keyword (e.g. ``identities_per_split=(40, 10, 20)``, ``rgb_only_fraction=0.3``) override
        the preset.

        Example:
            >>> ds = SyntheticMultiModalReID.preset("regdb", seed=1, split="test",
            ...     image_size=(32, 16), identities_per_split=(0, 0, 3))
            >>> len(ds), ds.num_classes
            (60, 3)
        """
        if image_size is not None:
            overrides["image_size"] = (int(image_size[0]), int(image_size[1]))
        spec = preset_spec(name, **overrides)
        return cls(
            spec,
            seed=seed,
            split=split,
            transform=transform,
            tokenizer=tokenizer,
            max_text_len=max_text_len,
            cache=cache,
        )

    # ---- rendering ---------------------------------------------------------------------------
    def render(self, indices: Sequence[int] | npt.NDArray[np.integer[Any]]) -> torch.Tensor:
        """Render the raw images of ``indices`` (image modalities) → float ``[n, 3, H, W]``.

        No augmentation and no normalisation; independent of the cache. Runs single-threaded
        (the thread count is restored afterwards).
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"indices out of range for {len(self)} samples")
        if (self.modalities[idx] == int(Modality.TEXT)).any():
            raise ValueError("render() takes image samples only (TEXT samples have no image)")
        threads = torch.get_num_threads()
        # Small-tensor work: intra-op threads only add overhead (and collapse under contention).
        torch.set_num_threads(1)
        try:
            return self._render_rows(idx)
        finally:
            torch.set_num_threads(threads)

    def _render_rows(self, idx: npt.NDArray[np.int64]) -> torch.Tensor:
        h, w = self.spec.image_size
        out = torch.empty((len(idx), 3, h, w))
        for m in np.unique(self.modalities[idx]).tolist():
            pos = np.flatnonzero(self.modalities[idx] == m)
            rows = idx[pos]
            gid = self._gid[rows]
            ida = {k: v[gid] for k, v in self._attrs_all.items()}
            sp = {k: v[rows] for k, v in self._params.items()}
            out[torch.from_numpy(pos)] = render(
                m,
                ida,
                sp,
                self.cameras[rows],
                self._cams,
                self._bank,
                self.spec.occlusion_p,
            )
        return out

    def raw_image(self, index: int) -> torch.Tensor:
        """The ``uint8 [3, H, W]`` image of sample ``index`` (cached or rendered)."""
        row = int(self._cache_row[index])
        if self._cache is not None and row >= 0:
            return self._cache[row]
        return (self.render([index])[0] * 255).round_().to(torch.uint8)

    # ---- Dataset -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Sample:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index %= len(self)
        m = int(self.modalities[index])
        image: torch.Tensor | None = None
        tokens: torch.Tensor | None = None
        if m == int(Modality.TEXT):
            text = self.texts[index]
            assert text is not None
            tokens = self.tokenizer.encode(text, self.max_text_len)
        else:
            image = self.transform(self.raw_image(index), self.generator(index))
        return {
            "image": image,
            "tokens": tokens,
            "label": int(self.labels[index]),
            "modality": m,
            "camera": int(self.cameras[index]),
            "index": index,
        }

    def __repr__(self) -> str:
        counts = {Modality(m).name: int((self.modalities == m).sum()) for m in self.spec.modalities}
        return (
            f"SyntheticMultiModalReID(split={self.split!r}, seed={self.seed}, "
            f"identities={self.num_classes}, samples={len(self)}, counts={counts}, "
            f"image_size={self.spec.image_size})"
        )
