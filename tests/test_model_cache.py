"""The node cache: each weights file of an S3 model set is downloaded once per node, shared by the
node's actors and their restarts, and checked against the manifest's sha256 (real S3, counted)."""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from unmask_core import local_s3, storage
from unmask_core.errors import TransientError
from unmask_core.local_s3 import CountingProxy
from unmask_core.models import cache
from unmask_core.models.cache import ChecksumError, FileChecksum, cached_copy
from unmask_core.models.model_set import CHECKSUMS, ModelSet

UNMASKER_FILES = ("generator.pt", "unmask_encoder.pt", "facenet.pt")  # g, f and the facenet matcher


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "model-cache"
    monkeypatch.setenv(cache.CACHE_ENV, str(folder))
    return folder


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


def _weights_gets(proxy: CountingProxy) -> dict[str, int]:
    return {key.rsplit("/", 1)[1]: n for key, n in proxy.gets_by_key().items() if key.endswith(".pt")}


def _weights_bytes(proxy: CountingProxy) -> dict[str, int]:
    return {key.rsplit("/", 1)[1]: n for key, n in proxy.get_bytes_by_key().items() if key.endswith(".pt")}


def _processes_waiting_for(lock: Path) -> int:
    """How many processes wait for the flock on `lock` (Linux's /proc/locks marks waiters with '->')."""
    if not lock.exists():
        return 0
    inode = f":{lock.stat().st_ino} "
    return sum("->" in line and inode in line for line in Path("/proc/locks").read_text().splitlines())


def _wait_for(condition, what: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout_s:.0f} s for {what}"
        time.sleep(0.05)


class UnmaskerActor:
    """What a bulk job's unmask actor does at start: build an Unmasker from the model set."""

    def __init__(self, models_uri: str) -> None:
        from unmask_core.inference import Unmasker

        self.unmasker = Unmasker(models_uri, ["facenet"])

    def run(self, faces: np.ndarray) -> dict[str, np.ndarray]:
        result = self.unmasker.run(faces, batch_size=2)
        return {"unmasked": result.unmasked, "facenet": result.embeddings["unmasked"]["facenet"]}


def test_two_actors_on_one_node_download_each_weights_file_once(
    ray_local: None, s3_set: str, tiny_model_set: str, cache_dir: Path, proxy: CountingProxy
) -> None:
    import ray

    from unmask_core.inference import Unmasker

    sizes = ModelSet(tiny_model_set).manifest[CHECKSUMS]
    env = {"AWS_ENDPOINT_URL": proxy.endpoint, cache.CACHE_ENV: str(cache_dir)}
    actor = ray.remote(num_cpus=0.1)(UnmaskerActor).options(runtime_env={"env_vars": env})
    # The node's lock on g is taken, as by a process downloading it, until both actors wait for it (or,
    # sharing nothing, have downloaded g themselves): then they race for it.
    cache_dir.mkdir()
    lock = cache.lock_path(cache_dir / f"{sizes['generator.pt']['sha256']}.pt")
    with open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        first, second = actor.remote(s3_set), actor.remote(s3_set)
        _wait_for(
            lambda: _processes_waiting_for(lock) == 2 or "generator.pt" in _weights_gets(proxy),
            "both actors to wait for the lock on generator.pt",
        )
    faces = np.random.default_rng(0).integers(0, 255, (3, 256, 256, 3), dtype=np.uint8)
    outputs = ray.get([first.run.remote(faces), second.run.remote(faces)])

    assert _weights_gets(proxy) == dict.fromkeys(UNMASKER_FILES, 1)
    assert _weights_bytes(proxy) == {name: sizes[name]["size"] for name in UNMASKER_FILES}
    entries = sorted(p.name for p in cache_dir.iterdir() if not p.name.endswith(".lock"))
    assert entries == sorted(f"{sizes[name]['sha256']}.pt" for name in UNMASKER_FILES)

    # The actors computed with the right weights: what the local set computes. An actor's torch runs
    # one thread and this process two, so fp32 sums round differently at a few uint8 boundaries.
    local = Unmasker(tiny_model_set, ["facenet"]).run(faces, batch_size=2)
    for output in outputs:
        difference = np.abs(output["unmasked"].astype(np.int16) - local.unmasked.astype(np.int16))
        assert difference.max() <= 1 and (difference > 0).mean() < 1e-3
        np.testing.assert_allclose(output["facenet"], local.embeddings["unmasked"]["facenet"], atol=1e-6)

    # A restarted actor finds the node's copies: no weights downloaded again.
    ray.kill(first)
    proxy.reset()
    again = actor.remote(s3_set)
    ray.get(again.run.remote(faces[:1]))
    assert _weights_gets(proxy) == {}
    for handle in (second, again):
        ray.kill(handle)


def test_a_remote_file_unlike_its_checksum_is_refused_and_not_cached(
    s3_set: str, cache_dir: Path, proxy: CountingProxy
) -> None:
    encoder = storage.join(s3_set, "unmask_encoder.pt")
    data = bytearray(storage.read_bytes(encoder))
    data[len(data) // 2] ^= 0xFF  # one byte inside the weights: size and headers as before
    storage.write_bytes_atomic(encoder, bytes(data))
    with pytest.raises(ChecksumError, match=r"unmask_encoder.pt: .* sha256 .*manifest says") as err:
        ModelSet(s3_set).encoder("unmask")
    assert "\n" not in str(err.value)
    assert [p.name for p in cache_dir.iterdir() if not p.name.endswith(".lock")] == []


def test_a_damaged_cache_entry_is_not_used_but_downloaded_again(
    s3_set: str, tiny_model_set: str, cache_dir: Path, proxy: CountingProxy
) -> None:
    uri = storage.join(s3_set, "generator.pt")
    checksum = ModelSet(s3_set).checksum(uri)
    entry = Path(cached_copy(uri, checksum))
    assert FileChecksum.of_file(entry) == checksum
    entry.chmod(0o644)
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 0xFF
    entry.write_bytes(bytes(data))

    assert Path(cached_copy(uri, checksum)) == entry
    assert FileChecksum.of_file(entry) == checksum
    assert _weights_gets(proxy) == {"generator.pt": 2}
    assert cached_copy(uri, checksum) == str(entry)  # a sound entry: no download
    assert _weights_gets(proxy) == {"generator.pt": 2}


def test_a_full_disk_during_download_is_transient_and_leaves_no_partial_file(
    s3_set: str, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = storage.join(s3_set, "facenet.pt")
    checksum = ModelSet(s3_set).checksum(uri)
    real_filesystem = storage.fsspec_filesystem

    class FillsTheDisk:
        """The S3 filesystem, but its downloads stop half way with ENOSPC, as a full disk stops them."""

        def __init__(self, fs) -> None:
            self.fs = fs

        def get_file(self, rpath: str, lpath: str, **kwargs) -> None:
            self.fs.get_file(rpath, lpath, **kwargs)
            os.truncate(lpath, checksum.size // 2)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), lpath)

    def filesystem(target: str):
        fs, path = real_filesystem(target)
        return FillsTheDisk(fs), path

    monkeypatch.setattr(storage, "fsspec_filesystem", filesystem)
    with pytest.raises(TransientError, match="disk full while copying .*facenet.pt"):
        cached_copy(uri, checksum)
    assert [p.name for p in cache_dir.iterdir() if not p.name.endswith(".lock")] == []


def test_a_local_set_is_read_in_place_not_cached(tiny_model_set: str, cache_dir: Path) -> None:
    ModelSet(tiny_model_set).generator()
    assert not cache_dir.exists()


def test_an_optional_file_is_listed_by_checksum_then_read_through_the_cache(
    s3_set: str, cache_dir: Path, proxy: CountingProxy
) -> None:
    import hashlib

    import onnx
    from onnx import TensorProto, helper

    from jobs import models as models_job
    from unmask_core.inference import describe_model_set

    graph = helper.make_graph(  # a tiny ONNX shaped like a recognition net: 1x3x112x112 -> 1x3
        [
            helper.make_node("GlobalAveragePool", ["input.1"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["embedding"]),
        ],
        "recognition_like",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 112, 112])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()
    onnx.checker.check_model(onnx.load_from_string(model))
    storage.write_bytes_atomic(storage.join(s3_set, "arcface.onnx"), model)
    onnx_key = f"{s3_set.removeprefix('s3://')}/arcface.onnx"
    sha = hashlib.sha256(model).hexdigest()

    def describe_twice() -> None:  # the driver's check, then (say) an actor on the same node
        for _ in range(2):
            info = describe_model_set(s3_set, ["arcface"])
            assert info.provenance["matchers"] == f"arcface:{sha}"
            assert info.embedding_dims == {"arcface": 3}

    describe_twice()  # added by hand: used, read by each process, not cached
    assert proxy.gets_by_key()[onnx_key] == 2 and not cache_dir.exists()

    assert models_job.main(["checksum", "--models", s3_set]) == 0
    assert ModelSet(s3_set).checksum(storage.join(s3_set, "arcface.onnx")) == FileChecksum.of_bytes(model)
    proxy.reset()
    describe_twice()  # recorded: through the node cache, once
    assert proxy.gets_by_key()[onnx_key] == 1
    assert (cache_dir / f"{sha}.onnx").read_bytes() == model
