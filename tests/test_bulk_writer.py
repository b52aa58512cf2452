"""The bulk image writer: an image that cannot be written becomes an error row, and nothing is lost."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from unmask_core.bulk.stages import FACE_SIZE, ImageWriter


def _batch(n: int) -> pa.Table:
    face = np.full((FACE_SIZE, FACE_SIZE, 3), 128, np.uint8).tobytes()
    return pa.table(
        {
            "id": [f"img{i}.jpg" for i in range(n)],
            "face_index": pa.array([0] * n, pa.int32()),
            "status": ["ok"] * n,
            "error": [""] * n,
            "unmasked": pa.array([face] * n, pa.binary()),
        }
    )


def test_images_are_written_and_rows_name_them(tmp_path) -> None:
    out = ImageWriter(str(tmp_path))(_batch(3))
    assert out.column("status").to_pylist() == ["ok"] * 3 and "unmasked" not in out.column_names
    assert all(
        (tmp_path / "images").joinpath(uri.rsplit("/", 1)[1]).is_file()
        for uri in out["unmasked_uri"].to_pylist()
    )


def test_a_failed_image_write_becomes_a_write_error_row(tmp_path) -> None:
    (tmp_path / "images").write_text("a file where the images folder should be")
    out = ImageWriter(str(tmp_path))(_batch(2))
    assert out.num_rows == 2
    assert out.column("status").to_pylist() == ["write_error"] * 2
    assert all(str(tmp_path / "images") in error for error in out.column("error").to_pylist())
    assert out.column("unmasked_uri").to_pylist() == [None, None]
