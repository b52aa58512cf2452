"""The `dlib` matcher: dlib's pretrained ResNet on dlib's own chips, cut from our aligned faces; it
tells people apart on real photos, and masks cost it verification accuracy (the paper's premise)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import dlib
import numpy as np
import pytest
import torch

from unmask_core import metrics
from unmask_core.demo import build_sample_corpus
from unmask_core.faces.align import align_face, template
from unmask_core.faces.dlib_models import FACE_DESCRIPTOR, model_path
from unmask_core.faces.samples import load_rgb
from unmask_core.matchers import build_matcher
from unmask_core.matchers.dlib_resnet import dlib_points_on_template
from unmask_core.models.model_set import ModelSet, init_model_set
from unmask_core.prepare.config import PrepareConfig
from unmask_core.prepare.pairs import SyntheticPairMaker, masked_pair_columns


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri = str(tmp_path_factory.mktemp("dlib_matcher") / "set64")
    init_model_set(64, uri, seed=3)
    return uri


@pytest.fixture(scope="module")
def matcher(tiny_set: str):
    return build_matcher("dlib", ModelSet(tiny_set))


@pytest.fixture(scope="module")
def demo_corpus(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """The demo's corpus (8 real people: t1.jpg's six, Tom Hanks, the astronaut; 4 views each by
    flips, turns, scale and light), each face aligned as prepare aligns it, with a synthetic mask."""
    folder = tmp_path_factory.mktemp("demo_corpus")
    build_sample_corpus(folder, variants=4, seed=0)
    cfg = PrepareConfig(input=str(folder), output=str(folder / "unused"))
    maker = SyntheticPairMaker(cfg)
    faces = []
    for path in sorted(folder.glob("*/*.jpg")):
        aligned, landmarks, box = maker.aligned_face(load_rgb(path))
        columns = masked_pair_columns(aligned, landmarks, box, cfg, path.stem)
        faces.append({"identity": path.parent.name, "T": aligned, "M": decode(columns["M"])})
    return faces


def decode(png: bytes) -> np.ndarray:
    from unmask_core import data

    return data.decode_png(png)


def test_our_landmarks_map_onto_dlibs_five_point_layout(demo_corpus) -> None:
    points = dlib_points_on_template(256)
    eyes = template(256)[:2]
    # dlib's order: viewer's right eye outer then inner corner, viewer's left eye outer then inner,
    # base of the nose; each eye's corners either side of our eye centre.
    assert points[0, 0] > eyes[1, 0] > points[1, 0] > 128 > points[3, 0] > eyes[0, 0] > points[2, 0]
    assert template(256)[2, 1] < points[4, 1] < template(256)[3, 1]
    # dlib's own 5-point predictor, run on the aligned faces, finds its points where we put them
    # (measured: 5 px off on average at 256 px, from the faces' own shapes and poses; a wrong
    # point order would put them 25 px and more away).
    predictor = dlib.shape_predictor(str(model_path("shape_predictor_5_face_landmarks.dat")))
    rectangle = dlib.rectangle(40, 60, 216, 236)
    found = [
        [[p.x, p.y] for p in predictor(np.ascontiguousarray(face["T"]), rectangle).parts()]
        for face in demo_corpus
    ]
    assert np.linalg.norm(np.array(found) - points, axis=-1).mean() < 10


def test_dlib_matcher_is_pretrained_with_the_files_sha256(matcher, tiny_set: str) -> None:
    digest = hashlib.sha256(model_path(FACE_DESCRIPTOR).read_bytes()).hexdigest()
    assert (matcher.name, matcher.dim, matcher.normalized, matcher.pretrained) == ("dlib", 128, False, True)
    assert matcher.model_sha256 == digest
    models = ModelSet(tiny_set)
    for name in ("arcface", "facenet"):  # `models init` made them: random
        built = build_matcher(name, models)
        assert not built.pretrained and built.model_sha256 == models.sha256(name)


def test_a_set_without_random_init_has_pretrained_matchers(tiny_set: str, tmp_path: Path) -> None:
    imported = tmp_path / "imported"
    shutil.copytree(tiny_set, imported)
    manifest = json.loads((imported / "model_set.json").read_text())
    del manifest["random_init"]  # what `models import` writes: no random_init
    (imported / "model_set.json").write_text(json.dumps(manifest))
    assert all(build_matcher(name, ModelSet(str(imported))).pretrained for name in ("arcface", "facenet"))


FACE_RECOGNITION_TOLERANCE = 0.6  # face_recognition.compare_faces' default: Euclidean distance


def distances(embeddings: np.ndarray) -> np.ndarray:
    return np.linalg.norm(embeddings[:, None] - embeddings[None], axis=-1)


def test_every_same_person_pair_is_nearer_than_every_different_person_pair(matcher, demo_corpus) -> None:
    identities = np.array([face["identity"] for face in demo_corpus])
    assert len(set(identities)) >= 2
    faces = to_tensor([face["T"] for face in demo_corpus])
    same = identities[:, None] == identities[None]
    off_diagonal = ~np.eye(len(identities), dtype=bool)
    # At 256 px (T, M) and at the demo generator's 64 px (U), which the matcher cuts chips from alike.
    for size in (256, 64):
        embeddings = matcher.embed(torch.nn.functional.interpolate(faces, size=size, mode="area"))
        assert embeddings.shape == (len(faces), 128) and embeddings.dtype == np.float32
        apart = distances(embeddings)
        assert apart[same & off_diagonal].max() < apart[~same].min(), size
        assert apart[same & off_diagonal].max() < FACE_RECOGNITION_TOLERANCE
    assert matcher.embed(faces[:0]).shape == (0, 128)


def test_embeddings_have_face_recognitions_scale_and_decisions(matcher, tmp_path_factory) -> None:
    """What face_recognition computes (dlib's HOG detector, its 5-point predictor, the descriptor on the
    whole photo) and what we store for the same photos: norms in the same range, and at its 0.6
    tolerance the same same-person / different-person decisions, so vectors mix with its galleries."""
    folder = tmp_path_factory.mktemp("photos")
    build_sample_corpus(folder, variants=2, seed=1)
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(model_path("shape_predictor_5_face_landmarks.dat")))
    maker = SyntheticPairMaker(PrepareConfig(input=str(folder), output=str(folder / "unused")))
    theirs, ours, identities = [], [], []
    for path in sorted(folder.glob("*/*.jpg")):
        photo = load_rgb(path)
        found = detector(photo, 1)
        if not found:
            continue
        box = max(found, key=lambda r: r.area())
        shape = predictor(photo, box)
        theirs.append(np.asarray(matcher.model.compute_face_descriptor(photo, shape), np.float32))
        ours.append(matcher.embed(to_tensor([maker.aligned_face(photo)[0]]))[0])
        identities.append(path.parent.name)
    theirs, ours, identities = np.array(theirs), np.array(ours), np.array(identities)
    assert len(set(identities)) >= 6, identities
    their_norms, our_norms = np.linalg.norm(theirs, axis=1), np.linalg.norm(ours, axis=1)
    assert their_norms.min() - 0.05 <= our_norms.min() and our_norms.max() <= their_norms.max() + 0.05
    assert 1.2 < our_norms.mean() < 1.7  # not unit length
    upper = np.triu(np.ones((len(ours), len(ours)), dtype=bool), k=1)
    same = (identities[:, None] == identities[None])[upper]
    our_accept = distances(ours)[upper] < FACE_RECOGNITION_TOLERANCE
    their_accept = distances(theirs)[upper] < FACE_RECOGNITION_TOLERANCE
    assert (our_accept == same).mean() >= (their_accept == same).mean() - 0.02
    assert (our_accept == their_accept).mean() >= 0.95
    # A vector of ours against face_recognition's of the same photo: within its tolerance.
    assert np.linalg.norm(ours - theirs, axis=1).max() < FACE_RECOGNITION_TOLERANCE


def test_masks_cost_a_real_matcher_verification_auc(matcher, demo_corpus) -> None:
    identities = [face["identity"] for face in demo_corpus]
    embeddings = {kind: matcher.embed(to_tensor([face[kind] for face in demo_corpus])) for kind in ("T", "M")}
    pairs = metrics.verification_pairs(identities, seed=0)
    aucs, _ = metrics.protocol_aucs(embeddings, pairs)
    # Measured on this corpus: TT 1.000, MT ~0.99, MM ~0.97 (see README).
    assert aucs["MM"] < aucs["TT"] and aucs["MT"] < aucs["TT"]
    assert aucs["TT"] > 0.99


def test_faces_are_embedded_from_their_alignment_not_their_pixels_position(matcher, demo_corpus) -> None:
    """A face shifted in its frame is no longer where the template says: its chip, and so its
    embedding, moves away from the aligned face's (the matcher relies on prepare's alignment)."""
    face = demo_corpus[0]["T"]
    shifted, _ = align_face(face, template(256) + [12.0, 0.0])
    first, again, moved = matcher.embed(to_tensor([face, face, shifted]))
    cosine = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
    assert cosine(first, again) == pytest.approx(1.0, abs=1e-6)
    assert cosine(first, moved) < 0.99
