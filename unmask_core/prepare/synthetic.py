"""Synthetic pairs in the pairs schema, for benchmarks and tests of the training mechanics, where image
content does not matter but shape, schema and volume do: smooth random 'faces' T and M = T with the
lower half covered, as a mask would."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from unmask_core import data, shards, storage


def smooth_image(rng: np.random.Generator, size: int) -> np.ndarray:
    import cv2

    coarse = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def write_synthetic_pairs(
    out_uri: str,
    n_identities: int,
    per_identity: int,
    size: int = 256,
    seed: int = 0,
    test_fraction: float = 0.25,
) -> str:
    """Write a pairs folder (`out_uri/pairs/shard-*.parquet`) and return `out_uri`."""
    rng = np.random.default_rng(seed)
    identities = [f"id{i:04d}" for i in range(n_identities)]
    split = data.identity_split(identities, test_fraction, seed)
    rows = []
    for identity in identities:
        for k in range(per_identity):
            T = smooth_image(rng, size)
            M = T.copy()
            M[size // 2 :] = 0
            region = np.zeros((size, size), np.uint8)
            region[size // 2 :] = 255
            rows.append(
                {
                    "id": f"{identity}/{k}",
                    "identity": identity,
                    "split": split[identity],
                    "source_uri": "synthetic",
                    "status": "ok",
                    "error": "",
                    "T": data.encode_png(T),
                    "M": data.encode_png(M),
                    "mask_kind": "black",
                    "mask_region": data.encode_png(region),
                }
            )
    table = pa.Table.from_pylist(
        [{n: r.get(n) for n in data.PAIRS_SCHEMA.names} for r in rows], data.PAIRS_SCHEMA
    )
    shards.write_table_atomic(shards.shard_file(storage.join(out_uri, "pairs"), 0), table)
    return out_uri
