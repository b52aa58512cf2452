"""The paper's evaluation numbers, as pure functions on NumPy arrays.

- Face verification: genuine/impostor pairs (built by identity or read from an LFW `pairs.txt`),
  cosine scores between matcher embeddings, ROC AUC per probe/gallery setting (MM, MT, UU, UT, TT).
- Image quality of the unmasked face U against the true face T at 256 px: PSNR and SSIM from
  scikit-image, and a PSNR restricted to a region (the mask), which scikit-image does not offer.

Nothing here knows about Ray, files or models: embeddings and uint8 images in, numbers out.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# Probe kind (used for index `a` of a pair) and gallery kind (index `b`). T: true unmasked face,
# M: synthetically masked face, U: our unmasked face g(f(M)).
SETTINGS: dict[str, tuple[str, str]] = {
    "MM": ("M", "M"),
    "MT": ("M", "T"),
    "UU": ("U", "U"),
    "UT": ("U", "T"),
    "TT": ("T", "T"),
}

# PSNR of two identical images is infinite; we report this finite value instead so that means and
# metrics.json stay finite. It lies above the largest finite PSNR of any uint8 image up to
# 2048x2048x3 values (10 log10(255^2 * 12.6e6) ~ 119.2 dB), so it never reorders images.
PSNR_IDENTICAL = 120.0

MAX_PIXEL = 255.0


# ---------------------------------------------------------------- verification pairs


@dataclass(frozen=True)
class VerificationPairs:
    """Pairs of row indices into the evaluated faces; `genuine[k]` says a[k] and b[k] are one person.

    `a` is the probe side and `b` the gallery side (see SETTINGS). `skipped` counts pairs of a pairs
    file whose images were not among the evaluated faces (for example, no face was detected).
    """

    a: np.ndarray
    b: np.ndarray
    genuine: np.ndarray
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.genuine)


def verification_pairs(
    identities: Sequence[str],
    max_pairs: int | None = None,
    seed: int = 0,
    ids: Sequence[str] | None = None,
) -> VerificationPairs:
    """All genuine pairs (same identity) and as many impostor pairs (different identities).

    Impostors are drawn uniformly without replacement from all different-identity pairs. When there
    are fewer impostor pairs than genuine ones, or `max_pairs` caps the total, both halves are cut to
    the same size, so the set is always balanced (`max_pairs` odd: one pair fewer).

    The result depends only on the multiset of (identity, id) rows and the seed, never on the input
    order or on hash/set ordering: rows are put in a canonical order (by identity, then by `ids`
    when given, else by input position) before sampling, and the sampled pairs are mapped back to
    input positions. With `ids`, shuffling the input yields the same pairs of ids; without, the same
    pairs of identities.
    """
    n = len(identities)
    if ids is not None and len(ids) != n:
        raise ValueError(f"{len(ids)} ids for {n} identities")
    if max_pairs is not None and max_pairs < 2:
        raise ValueError(f"max_pairs must be at least 2 (one genuine and one impostor), got {max_pairs}")
    tiebreak = list(ids) if ids is not None else list(range(n))
    canonical = np.array(
        sorted(range(n), key=lambda i: (str(identities[i]), tiebreak[i])), dtype=np.int64
    ).reshape(-1)
    sorted_identities = [str(identities[i]) for i in canonical]

    # Identity groups are contiguous runs in canonical order.
    group_start = np.zeros(n, dtype=np.int64)
    group_end = np.zeros(n, dtype=np.int64)
    start = 0
    for pos in range(1, n + 1):
        if pos == n or sorted_identities[pos] != sorted_identities[start]:
            group_start[start:pos] = start
            group_end[start:pos] = pos
            start = pos

    genuine_a, genuine_b = [], []
    for begin in np.unique(group_start):
        size = int(group_end[begin] - begin)
        if size > 1:
            rows, cols = np.triu_indices(size, k=1)
            genuine_a.append(rows + begin)
            genuine_b.append(cols + begin)
    gen_a = np.concatenate(genuine_a) if genuine_a else np.zeros(0, dtype=np.int64)
    gen_b = np.concatenate(genuine_b) if genuine_b else np.zeros(0, dtype=np.int64)

    # Impostor pairs (i, j), i < j in canonical order, are exactly j in [group_end[i], n): number them
    # 0..total-1 row by row, so a uniform sample of numbers is a uniform sample of pairs without ever
    # listing all O(n^2) of them.
    per_row = n - group_end
    row_offset = np.concatenate([[0], np.cumsum(per_row)])
    n_impostor = int(row_offset[-1])

    n_each = min(len(gen_a), n_impostor)
    if max_pairs is not None:
        n_each = min(n_each, max_pairs // 2)
    rng = np.random.default_rng(seed)
    if n_each < len(gen_a):
        keep = np.sort(rng.choice(len(gen_a), size=n_each, replace=False))
        gen_a, gen_b = gen_a[keep], gen_b[keep]
    flat = np.sort(rng.choice(n_impostor, size=n_each, replace=False)) if n_each else np.zeros(0, np.int64)
    imp_a = np.searchsorted(row_offset, flat, side="right") - 1
    imp_b = group_end[imp_a] + (flat - row_offset[imp_a])

    a = canonical[np.concatenate([gen_a, imp_a]).astype(np.int64)]
    b = canonical[np.concatenate([gen_b, imp_b]).astype(np.int64)]
    genuine = np.concatenate([np.ones(n_each, dtype=bool), np.zeros(n_each, dtype=bool)])
    return VerificationPairs(a=a, b=b, genuine=genuine)


_LFW_KEY = re.compile(r"(?:^|/)([^/]+/[^/]+?)(?:\.[A-Za-z0-9]+)?$")


def _lfw_key(item_id: str) -> str:
    """`lfw/Name/Name_0001.jpg` -> `Name/Name_0001`: the part of an item id a pairs file can name."""
    match = _LFW_KEY.search(item_id.replace("\\", "/"))
    return match.group(1) if match else item_id


def read_lfw_pairs(lines: str | Iterable[str], ids: Sequence[str]) -> VerificationPairs:
    """Pairs from LFW's `pairs.txt` (or `pairsDevTrain.txt`/`pairsDevTest.txt`), onto row indices.

    The format: an optional header of integers (`10 300`: folds and pairs per fold, or `2200`), then
    `name n1 n2` for two images of one person and `name1 n1 name2 n2` for two people. Image `n` of
    `name` is the item whose id ends in `name/name_000n` (any extension, any leading folders).
    Pairs naming an image that is not in `ids` are skipped and counted in `skipped`.
    """
    text_lines = lines.splitlines() if isinstance(lines, str) else list(lines)
    index: dict[str, int] = {}
    for row, item_id in enumerate(ids):
        key = _lfw_key(str(item_id))
        if key in index:
            raise ValueError(f"two items map to the LFW image {key}: {ids[index[key]]!r} and {item_id!r}")
        index[key] = row

    def image(name: str, number: str) -> str:
        return f"{name}/{name}_{int(number):04d}"

    a, b, genuine = [], [], []
    skipped = 0
    first = True
    for line_number, raw in enumerate(text_lines, start=1):
        fields = raw.split()
        if not fields:
            continue
        if first and all(f.isdigit() for f in fields):
            first = False
            continue  # the header: fold and pair counts, which we do not need
        first = False
        if len(fields) == 3:
            left, right, same = image(fields[0], fields[1]), image(fields[0], fields[2]), True
        elif len(fields) == 4:
            left, right, same = image(fields[0], fields[1]), image(fields[2], fields[3]), False
        else:
            raise ValueError(f"pairs file line {line_number}: expected 3 or 4 fields, got {raw!r}")
        if left not in index or right not in index:
            skipped += 1
            continue
        a.append(index[left])
        b.append(index[right])
        genuine.append(same)
    return VerificationPairs(
        a=np.array(a, dtype=np.int64),
        b=np.array(b, dtype=np.int64),
        genuine=np.array(genuine, dtype=bool),
        skipped=skipped,
    )


# ---------------------------------------------------------------- scores and ROC


def cosine_scores(emb_a: np.ndarray, emb_b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity: L2-normalise each row, then the dot product of row k with row k."""
    emb_a = np.asarray(emb_a, dtype=np.float64)
    emb_b = np.asarray(emb_b, dtype=np.float64)
    if emb_a.shape != emb_b.shape or emb_a.ndim != 2:
        raise ValueError(f"need two [n, dim] arrays of one shape, got {emb_a.shape} and {emb_b.shape}")
    # The floor keeps an all-zero embedding (a failed matcher) at score 0 instead of NaN.
    norm_a = np.maximum(np.linalg.norm(emb_a, axis=1, keepdims=True), 1e-12)
    norm_b = np.maximum(np.linalg.norm(emb_b, axis=1, keepdims=True), 1e-12)
    return np.einsum("nd,nd->n", emb_a / norm_a, emb_b / norm_b)


def roc_auc(scores: np.ndarray, genuine: np.ndarray) -> float:
    """Area under the ROC curve of genuine (positive) against impostor scores; ties count half."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.asarray(genuine, dtype=bool), np.asarray(scores, dtype=np.float64)))


def roc_curve_points(scores: np.ndarray, genuine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) over all thresholds, for plotting."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(np.asarray(genuine, dtype=bool), np.asarray(scores, dtype=np.float64))
    return fpr, tpr


def protocol_aucs(
    embeddings: Mapping[str, np.ndarray], pairs: VerificationPairs
) -> tuple[dict[str, float], dict[str, tuple[np.ndarray, np.ndarray, float]]]:
    """ROC AUC for each setting of SETTINGS whose two kinds are present in `embeddings`.

    `embeddings` maps a kind ('T', 'M', 'U') to [n_faces, dim] rows aligned with the pairs' indices.
    Returns ({setting: auc}, {setting: (fpr, tpr, auc)}), settings in SETTINGS order.
    """
    aucs: dict[str, float] = {}
    curves: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
    for setting, (probe, gallery) in SETTINGS.items():
        if probe not in embeddings or gallery not in embeddings:
            continue
        scores = cosine_scores(
            np.asarray(embeddings[probe])[pairs.a], np.asarray(embeddings[gallery])[pairs.b]
        )
        auc = roc_auc(scores, pairs.genuine)
        fpr, tpr = roc_curve_points(scores, pairs.genuine)
        aucs[setting] = auc
        curves[setting] = (fpr, tpr, auc)
    if not aucs:
        raise ValueError(f"no setting can be scored from embedding kinds {sorted(embeddings)}")
    return aucs, curves


# ---------------------------------------------------------------- image quality


def _check_images(u: np.ndarray, t: np.ndarray) -> None:
    if u.shape != t.shape or u.ndim != 3 or u.shape[-1] != 3:
        raise ValueError(f"need two HxWx3 images of one shape, got {u.shape} and {t.shape}")
    if u.dtype != np.uint8 or t.dtype != np.uint8:
        raise ValueError(f"need uint8 images, got {u.dtype} and {t.dtype}")


def psnr(u: np.ndarray, t: np.ndarray) -> float:
    """PSNR in dB of the unmasked image U against the true T (uint8 HxWx3; the paper uses 256 px).

    Identical images give PSNR_IDENTICAL rather than infinity.
    """
    from skimage.metrics import peak_signal_noise_ratio

    _check_images(u, t)
    if np.array_equal(u, t):
        return PSNR_IDENTICAL
    return float(peak_signal_noise_ratio(t, u, data_range=MAX_PIXEL))


def ssim(u: np.ndarray, t: np.ndarray) -> float:
    """SSIM of U against T over colour channels (scikit-image defaults: 7x7 uniform window)."""
    from skimage.metrics import structural_similarity

    _check_images(u, t)
    return float(structural_similarity(t, u, channel_axis=-1, data_range=MAX_PIXEL))


def region_psnr(u: np.ndarray, t: np.ndarray, region: np.ndarray) -> float:
    """PSNR over only the pixels where `region` (HxW bool) is true, for example the mask.

    Ours, not scikit-image's (which has no region argument), written to agree with it: the MSE is the
    mean over the region's pixels and all three channels, then 10 log10(255^2 / MSE). With the whole
    image as the region it equals `psnr`. An empty region gives NaN (nothing to measure; callers
    average with nanmean); identical pixels give PSNR_IDENTICAL.
    """
    _check_images(u, t)
    region = np.asarray(region, dtype=bool)
    if region.shape != u.shape[:2]:
        raise ValueError(f"region {region.shape} does not match images {u.shape[:2]}")
    if not region.any():
        return math.nan
    diff = u[region].astype(np.float64) - t[region].astype(np.float64)
    mse = float(np.mean(diff**2))
    if mse == 0.0:
        return PSNR_IDENTICAL
    return float(10.0 * np.log10(MAX_PIXEL**2 / mse))
