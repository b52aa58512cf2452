"""Decoding with limits, corpus layouts (local and S3), identity splits, manifests."""

from __future__ import annotations

import io
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from tests.support.images import bogus_sampling_jpeg, encode, odd_files
from unmask_core import corpora, data, storage
from unmask_core.errors import UserError


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    import skimage.data

    return skimage.data.astronaut()[:200, 100:300]


def test_decode_rgb_jpeg(photo: np.ndarray) -> None:
    out = data.decode_image(encode(Image.fromarray(photo), "PNG"))
    assert out.dtype == np.uint8 and out.shape == photo.shape
    assert np.array_equal(out, photo)


@pytest.mark.parametrize(
    "name, status",
    [
        ("zero_byte.jpg", "decode_error"),
        ("truncated.jpg", "decode_error"),
        ("text_named.jpg", "decode_error"),
        ("bomb_header.png", "too_large"),
    ],
)
def test_bad_files_raise_with_a_status(photo: np.ndarray, name: str, status: str) -> None:
    with pytest.raises(data.ImageDecodeError) as info:
        data.decode_image(odd_files(photo)[name])
    assert info.value.status == status and info.value.reason


def test_encode_png_is_lossless_for_rgb_and_grey_and_reads_back_with_pillow(photo: np.ndarray) -> None:
    for image in (photo, np.ascontiguousarray(photo[..., 1])):
        png = data.encode_png(image)
        with Image.open(io.BytesIO(png)) as read:
            assert read.format == "PNG" and read.mode == ("RGB" if image.ndim == 3 else "L")
            assert np.array_equal(np.asarray(read), image)


@pytest.mark.parametrize("name", ["cmyk.jpg", "sixteen_bit.png", "grayscale.png", "rgba.png", "animated.gif"])
def test_odd_but_valid_files_become_rgb8(photo: np.ndarray, name: str) -> None:
    out = data.decode_image(odd_files(photo)[name])
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert out.shape[:2] == photo.shape[:2]
    assert out.std() > 10  # real content, not a blank frame


def test_sixteen_bit_png_keeps_its_range(photo: np.ndarray) -> None:
    out = data.decode_image(odd_files(photo)["sixteen_bit.png"])
    gray = np.asarray(Image.fromarray(photo).convert("L"), np.float64)
    assert abs(out[..., 0].astype(np.float64).mean() - gray.mean()) < 2


def test_exif_orientation_is_applied(photo: np.ndarray) -> None:
    image = Image.fromarray(photo)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    out = data.decode_image(encode(image, "JPEG", exif=exif.tobytes()))
    assert out.shape[:2] == (photo.shape[1], photo.shape[0])


def test_plain_jpegs_are_left_for_the_device_decoder_and_all_else_to_the_host(photo: np.ndarray) -> None:
    jpeg = encode(Image.fromarray(photo), "JPEG", quality=90)
    assert data.jpeg_for_device(jpeg) == photo.shape[:2]
    assert data.jpeg_for_device(encode(Image.fromarray(photo).convert("L"), "JPEG")) == photo.shape[:2]
    # Its bytes decode on the device as they do on the host (libjpeg-turbo both, here on CPU).
    from torchvision.io import ImageReadMode, decode_jpeg

    on_device = decode_jpeg(torch.frombuffer(bytearray(jpeg), dtype=torch.uint8), mode=ImageReadMode.RGB)
    assert np.abs(on_device.permute(1, 2, 0).numpy().astype(int) - data.decode_image(jpeg)).mean() < 1
    image = Image.fromarray(photo)
    exif = image.getexif()
    exif[0x0112] = 6
    host = {
        "rotated by EXIF": encode(image, "JPEG", exif=exif.tobytes()),
        "png": encode(image, "PNG"),
        "cmyk": odd_files(photo)["cmyk.jpg"],
        "cut short": jpeg[: len(jpeg) * 2 // 3],
    }
    for what, blob in host.items():
        assert data.jpeg_for_device(blob) is None, what
    # A header that decodes is not a picture that does: the device decoder names that one.
    assert data.jpeg_for_device(bogus_sampling_jpeg(jpeg)) == photo.shape[:2]
    for name, status in [("text_named.jpg", "decode_error"), ("bomb_header.png", "too_large")]:
        with pytest.raises(data.ImageDecodeError) as info:
            data.jpeg_for_device(odd_files(photo)[name])
        assert info.value.status == status


def test_pixel_limit_is_configurable(photo: np.ndarray) -> None:
    with pytest.raises(data.ImageDecodeError, match="over the limit"):
        data.decode_image(encode(Image.fromarray(photo), "PNG"), max_pixels=100)


def test_identity_split_is_disjoint_deterministic_and_order_free() -> None:
    names = [f"person{i}" for i in range(50)]
    split = data.identity_split(names, 0.2, seed=3)
    assert split == data.identity_split(list(reversed(names)) * 2, 0.2, seed=3)
    assert sum(v == "test" for v in split.values()) == 10
    assert split != data.identity_split(names, 0.2, seed=4)
    tiny = data.identity_split(["a", "b"], 0.2, seed=0)
    assert sorted(tiny.values()) == ["test", "train"]  # never an empty split when it can be avoided


def _write(uri: str, content: bytes = b"x") -> None:
    storage.write_bytes_atomic(uri, content)


def _build_layouts(root: str) -> None:
    for person in ("alice", "bob", "carol"):
        for k in range(2):
            _write(storage.join(root, "lfw", person, f"{person}_{k:04d}.jpg"))
            _write(storage.join(root, "rmfrd", "AFDB_face_dataset", person, f"{k}.jpg"))
            _write(storage.join(root, "rmfrd", "AFDB_masked_face_dataset", person, f"m{k}.jpg"))
    for k in range(4):
        _write(storage.join(root, "ffhq", f"{k:05d}.png"))
        _write(storage.join(root, "celeba", "img_align_celeba", f"{k + 1:06d}.jpg"))
    identities = "\n".join(f"{k + 1:06d}.jpg {k % 2 + 10}" for k in range(4)) + "\n"
    _write(storage.join(root, "celeba", "identity_CelebA.txt"), identities.encode())
    _write(
        storage.join(root, "manifest.csv"),
        b"uri,identity\n"
        + b"".join(f"{storage.join(root, 'ffhq', f'{k:05d}.png')},p{k % 2}\n".encode() for k in range(4)),
    )


@pytest.fixture(params=["local", "s3"])
def corpus_root(request, tmp_path) -> str:
    root = (
        request.getfixturevalue("bucket") + "/corpora" if request.param == "s3" else str(tmp_path / "corpora")
    )
    _build_layouts(root)
    return root


def test_corpus_layouts(corpus_root: str) -> None:
    lfw = corpora.list_corpus("lfw", storage.join(corpus_root, "lfw"))
    assert [r.identity for r in lfw] == ["alice", "alice", "bob", "bob", "carol", "carol"]
    assert lfw[0].id == "alice/alice_0000.jpg"
    ffhq = corpora.list_corpus("ffhq", storage.join(corpus_root, "ffhq"))
    assert len(ffhq) == 4 and len({r.identity for r in ffhq}) == 4  # each image its own identity
    celeba = corpora.list_corpus("celeba", storage.join(corpus_root, "celeba"))
    assert [r.identity for r in celeba] == ["10", "11", "10", "11"]
    rmfrd = corpora.list_corpus("rmfrd", storage.join(corpus_root, "rmfrd"))
    assert sum(r.masked for r in rmfrd) == 6 and sum(not r.masked for r in rmfrd) == 6
    manifest = corpora.list_corpus("manifest", storage.join(corpus_root, "manifest.csv"))
    assert [r.identity for r in manifest] == ["p0", "p1", "p0", "p1"]
    folders = corpora.list_corpus("folders", storage.join(corpus_root, "lfw"))
    assert folders == lfw
    # Identity-disjoint split over a layout, reproducible across runs.
    split = data.identity_split([r.identity for r in lfw], 0.34, seed=0)
    again = data.identity_split(
        [r.identity for r in corpora.list_corpus("lfw", storage.join(corpus_root, "lfw"))], 0.34, seed=0
    )
    assert split == again and set(split.values()) == {"train", "test"}


def test_rmfrd_layout_needs_both_folders(tmp_path) -> None:
    _write(str(tmp_path / "AFDB_face_dataset" / "a" / "1.jpg"))
    with pytest.raises(UserError, match="RMFRD layout"):
        corpora.list_corpus("rmfrd", str(tmp_path))


def test_manifest_parquet_with_ids(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"uri": ["/x/a.jpg", "/x/b.jpg"], "id": ["one", "two"]}), path)
    records = corpora.read_manifest(str(path))
    assert [(r.id, r.identity) for r in records] == [("one", "one"), ("two", "two")]
    pq.write_table(pa.table({"uri": ["/x/a.jpg", "/x/b.jpg"], "id": ["same", "same"]}), path)
    with pytest.raises(UserError, match="duplicate id"):
        corpora.read_manifest(str(path))


def _progressive_jpeg_with_repeated_scans(repeats: int, size: int = 128) -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
        buffer, "JPEG", progressive=True, quality=90
    )
    raw = buffer.getvalue()
    last_scan, end = raw.rfind(b"\xff\xda"), raw.rfind(b"\xff\xd9")
    return raw[:end] + raw[last_scan:end] * repeats + raw[end:]


def test_a_jpeg_with_thousands_of_scans_is_refused_before_decoding() -> None:
    started = time.perf_counter()
    with pytest.raises(data.ImageDecodeError, match="scans") as error:
        data.decode_image(_progressive_jpeg_with_repeated_scans(2000))
    assert error.value.status == "decode_error"
    assert time.perf_counter() - started < 2  # decoding it takes about 17 s on this machine
    assert data.decode_image(_progressive_jpeg_with_repeated_scans(2)).shape == (128, 128, 3)


def test_a_decode_over_its_time_limit_is_a_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "MAX_JPEG_SCANS", 10**9)  # let the slow file through to the decoder
    started = time.perf_counter()
    with pytest.raises(data.ImageDecodeError) as error:
        # 512 px and 1,000 scans: over a second of decoding even on a fast core
        data.decode_image(_progressive_jpeg_with_repeated_scans(1000, size=512), seconds=0.2)
    assert error.value.status == "timeout"
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("latin1.csv", b"uri,id\na.jpg,1\nb\xe9.jpg,2\n", r"latin1.csv: line 3: not UTF-8 text"),
        ("ragged.csv", b"uri,id\na.jpg,1\nb.jpg,2,3\n", r"ragged.csv: line 3: 3 values, the header names 2"),
        ("blank.csv", b"uri,id\na.jpg,1\n ,2\n", r"blank.csv: line 3 has no uri"),
        ("twice.csv", b"uri,id\na.jpg,1\nb.jpg,1\n", r"twice.csv: duplicate id '1'"),
        (
            "no_uri.csv",
            b"path,id\na.jpg,1\n",
            r"no_uri.csv: a manifest needs a `uri` column \(found: path, id\)",
        ),
        ("empty.csv", b"uri,id\n", r"empty.csv: the manifest has no rows"),
        ("null.parquet", {"uri": ["a.jpg", None], "id": ["1", "2"]}, r"null.parquet: row 2 has no uri"),
        ("nested.parquet", {"uri": [["a.jpg"]]}, r"nested.parquet: column `uri` is not text"),
        ("junk.parquet", b"not parquet at all", r"junk.parquet: not a readable Parquet file"),
    ],
)
def test_a_bad_manifest_is_one_line_naming_the_file_and_row(
    tmp_path, name: str, content, message: str
) -> None:
    path = tmp_path / name
    if isinstance(content, dict):
        pq.write_table(pa.table(content), path)
    else:
        path.write_bytes(content)
    with pytest.raises(UserError, match=message) as error:
        corpora.check_manifest(str(path))
    assert "\n" not in str(error.value)


def test_manifest_rows_stream_with_their_defaults(tmp_path, bucket: str) -> None:
    rows = "\ufeffuri,identity\nsub/a.jpg,ann\n/abs/b.jpg,\ns3://other/c.jpg,cy\n"
    for manifest in (str(tmp_path / "m.csv"), f"{bucket}/lists/m.csv"):
        storage.write_bytes_atomic(manifest, rows.encode())
        folder = manifest.rsplit("/", 1)[0]
        assert corpora.check_manifest(manifest) == 3
        got = [row for batch in corpora.manifest_batches(manifest) for row in batch.to_pylist()]
        relative = f"{folder}/sub/a.jpg"  # relative to the manifest's folder
        assert got == [
            {"id": relative.split("://", 1)[-1], "uri": relative, "identity": "ann"},
            {"id": "/abs/b.jpg", "uri": "/abs/b.jpg", "identity": "/abs/b.jpg"},
            {"id": "other/c.jpg", "uri": "s3://other/c.jpg", "identity": "cy"},
        ]
