"""unmask_core.metrics: verification pairs, AUC per probe/gallery setting, PSNR/SSIM."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from sklearn.metrics import roc_auc_score, roc_curve

from unmask_core import metrics
from unmask_core.metrics import VerificationPairs

# ---------------------------------------------------------------- AUC


def test_auc_counts_genuine_above_impostor_pairs():
    # Genuine 0.9 beats both impostors, genuine 0.4 beats only 0.1: 3 of 4 orderings are right.
    scores = np.array([0.9, 0.4, 0.5, 0.1])
    genuine = np.array([True, True, False, False])
    assert metrics.roc_auc(scores, genuine) == 0.75


def test_auc_counts_ties_as_half():
    scores = np.array([0.5, 0.2, 0.5, 0.1])  # 0.5 ties 0.5 (half), beats 0.1; 0.2 beats 0.1 only
    genuine = np.array([True, True, False, False])
    assert metrics.roc_auc(scores, genuine) == (0.5 + 1 + 0 + 1) / 4


def test_auc_and_roc_points_agree_with_scikit_learn():
    rng = np.random.default_rng(3)
    genuine = rng.random(500) < 0.4
    scores = rng.normal(size=500) + genuine * 0.8
    assert metrics.roc_auc(scores, genuine) == pytest.approx(roc_auc_score(genuine, scores), abs=1e-12)
    fpr, tpr = metrics.roc_curve_points(scores, genuine)
    want_fpr, want_tpr, _ = roc_curve(genuine, scores)
    np.testing.assert_allclose(fpr, want_fpr)
    np.testing.assert_allclose(tpr, want_tpr)
    assert fpr[0] == 0 and tpr[-1] == 1


def test_cosine_scores_normalise_rows():
    a = np.array([[3.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    b = np.array([[10.0, 0.0], [-2.0, -2.0], [1.0, 0.0]])
    np.testing.assert_allclose(metrics.cosine_scores(a, b), [1.0, -1.0, 0.0])


# ---------------------------------------------------------------- pair builder


def _pair_sets(identities, ids, pairs: VerificationPairs):
    genuine = {frozenset((ids[i], ids[j])) for i, j, g in zip(pairs.a, pairs.b, pairs.genuine) if g}
    impostor = {frozenset((ids[i], ids[j])) for i, j, g in zip(pairs.a, pairs.b, pairs.genuine) if not g}
    return genuine, impostor


def _corpus(n_identities=12, seed=0):
    rng = np.random.default_rng(seed)
    identities, ids = [], []
    for person in range(n_identities):
        for k in range(int(rng.integers(1, 6))):
            identities.append(f"person_{person:02d}")
            ids.append(f"person_{person:02d}/{k}.png")
    return identities, ids


def test_pairs_are_all_genuine_pairs_and_as_many_distinct_impostors():
    identities, ids = _corpus()
    pairs = metrics.verification_pairs(identities, seed=5, ids=ids)
    counts = Counter(identities)
    all_genuine = sum(c * (c - 1) // 2 for c in counts.values())
    assert pairs.genuine.sum() == all_genuine
    assert (~pairs.genuine).sum() == all_genuine  # balanced
    for i, j, same in zip(pairs.a, pairs.b, pairs.genuine):
        assert i != j
        assert (identities[i] == identities[j]) == same
    genuine, impostor = _pair_sets(identities, ids, pairs)
    assert len(genuine) == all_genuine and len(impostor) == all_genuine  # no pair drawn twice


def test_pairs_do_not_depend_on_input_order():
    identities, ids = _corpus()
    reference = _pair_sets(identities, ids, metrics.verification_pairs(identities, seed=1, ids=ids))
    for shuffle_seed in range(3):
        order = np.random.default_rng(shuffle_seed).permutation(len(ids))
        shuffled_identities = [identities[i] for i in order]
        shuffled_ids = [ids[i] for i in order]
        pairs = metrics.verification_pairs(shuffled_identities, seed=1, ids=shuffled_ids)
        assert _pair_sets(shuffled_identities, shuffled_ids, pairs) == reference


def test_pairs_without_ids_keep_the_same_identity_pairs_under_shuffling():
    identities, _ = _corpus()

    def identity_pairs(idents):
        pairs = metrics.verification_pairs(idents, seed=2)
        return Counter(tuple(sorted((idents[i], idents[j]))) for i, j in zip(pairs.a, pairs.b))

    order = np.random.default_rng(9).permutation(len(identities))
    assert identity_pairs([identities[i] for i in order]) == identity_pairs(identities)


def test_pairs_follow_the_seed():
    identities, ids = _corpus()
    one = metrics.verification_pairs(identities, seed=1, ids=ids)
    again = metrics.verification_pairs(identities, seed=1, ids=ids)
    other = metrics.verification_pairs(identities, seed=2, ids=ids)
    np.testing.assert_array_equal(one.a, again.a)
    np.testing.assert_array_equal(one.b, again.b)
    assert _pair_sets(identities, ids, one)[1] != _pair_sets(identities, ids, other)[1]


@pytest.mark.parametrize("max_pairs", [2, 7, 10, 40])
def test_max_pairs_caps_and_stays_balanced(max_pairs):
    identities, ids = _corpus()
    pairs = metrics.verification_pairs(identities, max_pairs=max_pairs, seed=0, ids=ids)
    assert len(pairs) == max_pairs - max_pairs % 2
    assert pairs.genuine.sum() == (~pairs.genuine).sum()
    for i, j, same in zip(pairs.a, pairs.b, pairs.genuine):
        assert (identities[i] == identities[j]) == same


def test_few_impostors_cut_the_genuine_half_to_match():
    identities = ["big"] * 6 + ["lone"]  # 15 genuine pairs, only 6 impostor pairs exist
    pairs = metrics.verification_pairs(identities)
    assert pairs.genuine.sum() == 6 and (~pairs.genuine).sum() == 6
    assert {(int(i), int(j)) for i, j, g in zip(pairs.a, pairs.b, pairs.genuine) if not g} == {
        (k, 6) for k in range(6)
    }


def test_pairs_scale_without_listing_every_impostor_pair():
    identities = [f"id{k // 3}" for k in range(30_000)]  # 30k genuine pairs, ~450M impostor pairs
    pairs = metrics.verification_pairs(identities, seed=0)
    assert len(pairs) == 60_000
    ident = np.array(identities)
    assert np.all((ident[pairs.a] == ident[pairs.b]) == pairs.genuine)


# ---------------------------------------------------------------- LFW pairs.txt


LFW_PAIRS = """2\t2
Abel_Pacheco\t1\t4
Akhmed_Zakayev\t1\t3
Abdel_Madi_Shabneh\t1\tDean_Barker\t1
Abdel_Madi_Shabneh\t1\tGiancarlo_Fisichella\t1
"""


def test_lfw_pairs_file_maps_onto_item_ids():
    ids = [
        "Abel_Pacheco/Abel_Pacheco_0001.jpg",
        "Abel_Pacheco/Abel_Pacheco_0004.jpg",
        "lfw/Akhmed_Zakayev/Akhmed_Zakayev_0001.jpg",
        "Akhmed_Zakayev/Akhmed_Zakayev_0003",
        "Abdel_Madi_Shabneh/Abdel_Madi_Shabneh_0001.png",
        "Dean_Barker/Dean_Barker_0001.jpg",
    ]
    pairs = metrics.read_lfw_pairs(LFW_PAIRS, ids)
    assert pairs.a.tolist() == [0, 2, 4]
    assert pairs.b.tolist() == [1, 3, 5]
    assert pairs.genuine.tolist() == [True, True, False]
    assert pairs.skipped == 1  # Giancarlo_Fisichella is not among the faces
    from_lines = metrics.read_lfw_pairs(LFW_PAIRS.splitlines(), ids)
    assert from_lines.a.tolist() == pairs.a.tolist()


def test_lfw_pairs_rejects_malformed_lines():
    with pytest.raises(ValueError, match="line 2"):
        metrics.read_lfw_pairs("1 1\nAbel_Pacheco 1\n", ["Abel_Pacheco/Abel_Pacheco_0001.jpg"])


# ---------------------------------------------------------------- settings use the right images


# Each setting gets a different, exactly known AUC. With 4 genuine and 4 impostor pairs, impostor
# scores sit at 0.1..0.4 and genuine pair k at 0.05 + 0.1 * beats[k], so it outranks beats[k] of the
# impostors and the AUC is sum(beats) / 16. None of the values is 0.5, the AUC of the zero scores
# that any other pairing of kinds in the construction below would give.
# The paper's protocols, written out here rather than taken from metrics.SETTINGS, so that a wrong
# entry there cannot also shape the planted data: (probe kind for index a, gallery kind for index b).
PROTOCOL_KINDS = {"MM": ("M", "M"), "MT": ("M", "T"), "UU": ("U", "U"), "UT": ("U", "T"), "TT": ("T", "T")}

PLANTED_BEATS = {
    "MM": [0, 1, 2, 3],  # 6/16
    "MT": [1, 2, 3, 3],  # 9/16
    "UU": [2, 3, 3, 4],  # 12/16
    "UT": [3, 3, 4, 4],  # 14/16
    "TT": [4, 4, 4, 4],  # 16/16
}


def _planted_embeddings() -> tuple[dict[str, np.ndarray], VerificationPairs, dict[str, float]]:
    """Disjoint pairs (2k, 2k+1). Gallery item b has T, M, U on the orthonormal axes e0, e1, e2; probe
    item a's vectors hold the planted scores on those axes, and unit length comes from a private filler
    axis (e3, e4, e5), so cos(probe_kind[a], gallery_kind[b]) is exactly the planted score."""
    n_pairs = 8
    genuine = np.array([True] * 4 + [False] * 4)
    planted = {}
    for setting, beats in PLANTED_BEATS.items():
        planted[setting] = np.concatenate([0.05 + 0.1 * np.array(beats), [0.1, 0.2, 0.3, 0.4]])
    dim = 6
    emb = {kind: np.zeros((2 * n_pairs, dim)) for kind in "TMU"}
    axis = {"T": 0, "M": 1, "U": 2}
    filler = {"T": 3, "M": 4, "U": 5}
    for k in range(n_pairs):
        a, b = 2 * k, 2 * k + 1
        for kind in "TMU":
            emb[kind][b, axis[kind]] = 1.0
        for setting, (probe, gallery) in PROTOCOL_KINDS.items():
            emb[probe][a, axis[gallery]] = planted[setting][k]
        for kind in "TMU":
            emb[kind][a, filler[kind]] = math.sqrt(1.0 - np.sum(emb[kind][a] ** 2))
    pairs = VerificationPairs(a=np.arange(0, 2 * n_pairs, 2), b=np.arange(1, 2 * n_pairs, 2), genuine=genuine)
    expected = {setting: sum(beats) / 16 for setting, beats in PLANTED_BEATS.items()}
    return emb, pairs, expected


def test_each_setting_compares_its_own_probe_and_gallery_kinds():
    emb, pairs, expected = _planted_embeddings()
    assert len(set(expected.values())) == 5 and 0.5 not in expected.values()
    aucs, curves = metrics.protocol_aucs(emb, pairs)
    assert list(aucs) == ["MM", "MT", "UU", "UT", "TT"]
    for setting, auc in aucs.items():
        assert auc == pytest.approx(expected[setting], abs=1e-12), setting
        fpr, tpr, curve_auc = curves[setting]
        assert curve_auc == auc
        assert np.trapezoid(tpr, fpr) == pytest.approx(auc, abs=1e-12)


def test_settings_without_their_kinds_are_left_out():
    emb, pairs, expected = _planted_embeddings()
    aucs, _ = metrics.protocol_aucs({"T": emb["T"], "M": emb["M"]}, pairs)
    assert set(aucs) == {"MM", "MT", "TT"}
    assert aucs["MT"] == pytest.approx(expected["MT"])


# ---------------------------------------------------------------- image quality


def _images(seed=0, size=256):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    noise = rng.normal(0, 12, t.shape)
    u = np.clip(t.astype(np.float64) + noise, 0, 255).astype(np.uint8)
    return u, t


def test_psnr_and_ssim_match_scikit_image():
    u, t = _images()
    assert metrics.psnr(u, t) == pytest.approx(peak_signal_noise_ratio(t, u, data_range=255), abs=1e-9)
    assert metrics.ssim(u, t) == pytest.approx(
        structural_similarity(t, u, channel_axis=-1, data_range=255), abs=1e-9
    )
    assert 20 < metrics.psnr(u, t) < 40 and 0 < metrics.ssim(u, t) < 1


def test_identical_images_give_ssim_one_and_the_finite_psnr_cap():
    _, t = _images()
    assert metrics.ssim(t, t) == pytest.approx(1.0)
    assert metrics.psnr(t, t) == metrics.PSNR_IDENTICAL
    one_off = t.copy()
    one_off[0, 0, 0] ^= 1  # the smallest possible difference stays below the cap
    assert metrics.psnr(one_off, t) < metrics.PSNR_IDENTICAL


def test_region_psnr_over_the_whole_image_is_psnr():
    u, t = _images(seed=1)
    everything = np.ones(t.shape[:2], dtype=bool)
    assert metrics.region_psnr(u, t, everything) == pytest.approx(metrics.psnr(u, t), abs=1e-9)


def test_region_psnr_measures_only_the_region():
    u, t = _images(seed=2)
    region = np.zeros(t.shape[:2], dtype=bool)
    region[128:, :] = True  # the lower half, where a mask would be
    damaged = u.copy()
    damaged[:128] = 255 - damaged[:128]  # ruin the upper half: must not change the region's PSNR
    assert metrics.region_psnr(damaged, t, region) == pytest.approx(
        peak_signal_noise_ratio(t[128:], u[128:], data_range=255), abs=1e-9
    )
    assert metrics.region_psnr(u, u, region) == metrics.PSNR_IDENTICAL
    assert math.isnan(metrics.region_psnr(u, t, np.zeros(t.shape[:2], dtype=bool)))


def test_image_metrics_reject_mismatched_inputs():
    u, t = _images()
    with pytest.raises(ValueError):
        metrics.psnr(u[:128], t)
    with pytest.raises(ValueError):
        metrics.ssim(u.astype(np.float32), t)
    with pytest.raises(ValueError):
        metrics.region_psnr(u, t, np.ones((10, 10), dtype=bool))
