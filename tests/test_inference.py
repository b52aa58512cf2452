"""The inference module: compiled networks see one batch shape, and padding changes no result."""

from __future__ import annotations

import numpy as np
import pytest

from unmask_core import inference


def test_padded_micro_batches_give_the_same_results(
    tiny_model_set: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 255, (5, 256, 256, 3), dtype=np.uint8)
    plain = inference.Unmasker(tiny_model_set, ["facenet"]).run(faces, batch_size=2)

    shapes: list[int] = []
    monkeypatch.setattr(inference, "compile_in_place", lambda module, enabled: module)  # eager, same path
    padded = inference.Unmasker(tiny_model_set, ["facenet"], compile_networks=True)
    unmask = padded.unmask
    padded.unmask = lambda x: (shapes.append(len(x)), unmask(x))[1]
    result = padded.run(faces, batch_size=2)

    assert shapes == [2, 2, 2]  # the last micro-batch of one face was padded to two
    assert len(result.unmasked) == 5  # batch shape changes float rounding: a grey level at most
    assert np.abs(result.unmasked.astype(int) - plain.unmasked).max() <= 1
    for kind in ("masked", "unmasked"):
        np.testing.assert_allclose(
            result.embeddings[kind]["facenet"], plain.embeddings[kind]["facenet"], atol=1e-5
        )
