"""The bulk image writer: an image that cannot be written stops the job (its shard stays uncommitted
for the rerun); it never becomes a row."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from unmask_core.bulk.rows import FACE_SIZE
from unmask_core.bulk.stages import ImageWriter
from unmask_core.errors import TransientError


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


def test_a_failed_image_write_is_never_a_row(tmp_path) -> None:
    (tmp_path / "images").write_text("a file where the images folder should be")
    with pytest.raises(TransientError, match=str(tmp_path / "images")):
        ImageWriter(str(tmp_path))(_batch(2))


def test_jpeg_output_is_a_full_colour_jpeg_close_to_the_face(tmp_path) -> None:
    from PIL import Image, JpegImagePlugin

    from unmask_core.faces.samples import load_rgb, sample_photo

    face = np.ascontiguousarray(load_rgb(sample_photo("t1.jpg"))[100 : 100 + FACE_SIZE, 80 : 80 + FACE_SIZE])
    batch = _batch(1).set_column(4, "unmasked", pa.array([face.tobytes()], pa.binary()))
    out = ImageWriter(str(tmp_path), image_format="jpeg", jpeg_quality=95)(batch)
    uri = out["unmasked_uri"][0].as_py()
    assert uri.endswith("-face0.jpg")
    with Image.open(uri) as image:
        assert image.format == "JPEG" and image.mode == "RGB"
        assert JpegImagePlugin.get_sampling(image) == 0  # 4:4:4, no chroma subsampling
        decoded = np.asarray(image)
    assert np.abs(decoded.astype(int) - face).mean() < 2.0  # grey levels
