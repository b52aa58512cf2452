"""The driver's check of a model set (`describe_model_set`): the manifest, one listing and each model's
headers, never the weights; a broken set is refused in one line. Requests counted on the real S3 server."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs import models as models_job
from tests.support.model_sets import TINY_MODEL_SET_SEED
from unmask_core import local_s3, storage
from unmask_core.inference import describe_model_set
from unmask_core.local_s3 import CountingProxy
from unmask_core.matchers import build_matcher
from unmask_core.models.cache import FileChecksum
from unmask_core.models.format import CheckpointError
from unmask_core.models.model_set import CHECKSUMS, MANIFEST, ModelSet, init_model_set

MATCHERS = ["arcface", "facenet"]
HEADER_BYTES = 1 << 18  # what the check may read of a weights file: its two ends (2 blocks of 128 KiB)


@pytest.fixture
def proxy(s3_server: local_s3.S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[CountingProxy]:
    with CountingProxy(s3_server.endpoint) as running:
        monkeypatch.setenv("AWS_ENDPOINT_URL", running.endpoint)
        yield running


@pytest.fixture
def s3_set(tiny_model_set: str, bucket: str) -> str:
    """The tiny model set, copied file by file to S3."""
    uri = f"{bucket}/models/set64"
    for path in Path(tiny_model_set).iterdir():
        storage.write_bytes_atomic(storage.join(uri, path.name), path.read_bytes())
    return uri


def _weights_read(proxy: CountingProxy) -> dict[str, int]:
    return {key: n for key, n in proxy.get_bytes_by_key().items() if key.endswith(".pt")}


def test_manifest_records_each_files_size_and_sha256(tiny_model_set: str) -> None:
    manifest = ModelSet(tiny_model_set).manifest
    files = sorted(p.name for p in Path(tiny_model_set).iterdir() if p.name != MANIFEST)
    assert sorted(manifest[CHECKSUMS]) == files
    for name in files:
        checksum = FileChecksum.of_file(Path(tiny_model_set, name))
        assert manifest[CHECKSUMS][name] == {"size": checksum.size, "sha256": checksum.sha256}


def test_the_check_on_s3_reads_headers_only_and_describes_what_a_full_load_does(
    s3_set: str, tiny_model_set: str, proxy: CountingProxy
) -> None:
    info = describe_model_set(s3_set, MATCHERS)

    read = _weights_read(proxy)
    assert all(n <= HEADER_BYTES for n in read.values()), read
    sizes = ModelSet(tiny_model_set).manifest[CHECKSUMS]
    total = sum(entry["size"] for entry in sizes.values())
    assert sum(read.values()) < total / 50  # 1/300th for this tiny set; far less at 256 px
    # The manifest (one GET), the files' sizes (one LIST), and the two ends of each model the bulk
    # job runs (g, f and the matchers': f0 is not read).
    prefix = s3_set.removeprefix("s3://")
    assert proxy.counts() == {"LIST": 1, "GET": 1 + 2 * 4}
    assert proxy.gets_by_key() == {
        f"{prefix}/{name}": 2
        for name in ("generator.pt", "unmask_encoder.pt", "arcface_irse.pt", "facenet.pt")
    } | {f"{prefix}/{MANIFEST}": 1}

    loaded = ModelSet(tiny_model_set)  # weights read and hashed
    matchers = {name: build_matcher(name, loaded, "cpu") for name in MATCHERS}
    assert info.provenance == {
        "matchers": ",".join(f"{name}:{m.model_sha256}" for name, m in matchers.items()),
        "encoder_sha256": loaded.sha256("unmask"),
        "generator_sha256": loaded.sha256("generator"),
    }
    assert info.embedding_dims == {name: m.dim for name, m in matchers.items()}
    assert info.normalized == {name: m.normalized for name, m in matchers.items()}


def test_a_truncated_file_is_refused_in_one_line_without_reading_weights(
    s3_set: str, proxy: CountingProxy
) -> None:
    encoder = storage.join(s3_set, "unmask_encoder.pt")
    storage.write_bytes_atomic(encoder, storage.read_bytes(encoder)[:100_000])
    proxy.reset()
    with pytest.raises(CheckpointError) as err:
        describe_model_set(s3_set, MATCHERS)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{encoder}: 100,000 bytes, model_set.json says")
    assert _weights_read(proxy) == {}


def test_a_file_of_the_wrong_kind_is_refused_from_its_header(s3_set: str, proxy: CountingProxy) -> None:
    # generator.pt's bytes as unmask_encoder.pt, with a manifest that vouches for them: only the header tells.
    manifest = json.loads(storage.read_bytes(storage.join(s3_set, MANIFEST)))
    manifest[CHECKSUMS]["unmask_encoder.pt"] = manifest[CHECKSUMS]["generator.pt"]
    storage.write_bytes_atomic(storage.join(s3_set, MANIFEST), json.dumps(manifest).encode())
    generator = storage.read_bytes(storage.join(s3_set, "generator.pt"))
    storage.write_bytes_atomic(storage.join(s3_set, "unmask_encoder.pt"), generator)
    proxy.reset()
    with pytest.raises(
        CheckpointError, match=r"unmask_encoder.pt: holds a 'generator' model, expected 'encoder'"
    ):
        describe_model_set(s3_set, MATCHERS)
    assert all(n <= HEADER_BYTES for n in _weights_read(proxy).values())


def test_an_older_set_is_refused_until_models_checksum_completes_it(
    tiny_model_set: str, bucket: str, tmp_path: Path, proxy: CountingProxy
) -> None:
    uri = f"{bucket}/models/old"
    written = init_model_set(64, uri, seed=TINY_MODEL_SET_SEED)
    older = {k: v for k, v in written.items() if k != CHECKSUMS}  # as sets were written before
    storage.write_bytes_atomic(storage.join(uri, MANIFEST), json.dumps(older).encode())
    with pytest.raises(CheckpointError, match=r"records no size and sha256 for generator.pt, .*") as err:
        describe_model_set(uri, MATCHERS)
    assert f"`unmask models checksum --models {uri}`" in str(err.value)

    assert models_job.main(["checksum", "--models", uri]) == 0
    assert ModelSet(uri).manifest[CHECKSUMS] == written[CHECKSUMS]
    describe_model_set(uri, MATCHERS)

    # It vouches only for files whose weights are the manifest's.
    local = tmp_path / "old"
    shutil.copytree(tiny_model_set, local)
    manifest = json.loads((local / MANIFEST).read_text())
    del manifest[CHECKSUMS]
    manifest["sha256"]["facenet"] = "0" * 64
    (local / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"facenet.pt: .*model_set.json"):
        models_job.main(["checksum", "--models", str(local)])


def test_a_trained_encoder_saved_into_a_set_keeps_its_checksums_true(
    tiny_model_set: str, tmp_path: Path
) -> None:
    import torch

    models = ModelSet(tiny_model_set)
    f = models.encoder("unmask")
    with torch.no_grad():
        f.encoder.latlayer1.bias.add_(1.0)
    out = tmp_path / "trained"

    def assert_checksums_true(saved: ModelSet) -> None:
        checksums = saved.manifest[CHECKSUMS]
        assert sorted(checksums) == sorted(p.name for p in out.iterdir() if p.name != MANIFEST)
        for name, entry in checksums.items():
            checksum = FileChecksum.of_file(out / name)
            assert entry == {"size": checksum.size, "sha256": checksum.sha256}, name
        ModelSet(str(out), device="meta").validate()

    first = models.save_encoder("unmask", f, str(out))  # a new folder: the other files copied
    assert_checksums_true(first)
    assert_checksums_true(models.save_encoder("unmask", f, str(out)))  # the copies kept
    assert_checksums_true(first.save_encoder("baseline", f, str(out)))  # in place


def test_a_file_of_the_right_size_but_not_weights_is_refused_from_its_first_bytes(
    s3_set: str, proxy: CountingProxy
) -> None:
    encoder = storage.join(s3_set, "unmask_encoder.pt")
    storage.write_bytes_atomic(encoder, os.urandom(len(storage.read_bytes(encoder))))
    proxy.reset()
    with pytest.raises(
        CheckpointError, match=r"unmask_encoder.pt: not a readable PyTorch file .*not a zip archive"
    ):
        describe_model_set(s3_set, MATCHERS)
    assert all(n <= HEADER_BYTES for n in _weights_read(proxy).values())
