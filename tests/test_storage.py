"""Storage: one helper maps URIs (local or s3://) to filesystems; errors name the URI."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from unmask_core import faults, storage
from unmask_core.errors import TransientError, UserError

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_s3fs_put_get_round_trip(bucket: str) -> None:
    uri = f"{bucket}/dir/hello.bin"
    payload = os.urandom(100_000)
    storage.write_bytes_atomic(uri, payload)
    assert storage.read_bytes(uri) == payload
    assert storage.exists(uri)
    assert storage.list_files(f"{bucket}/dir") == [uri]


def test_pyarrow_filesystem_parquet_round_trip(bucket: str) -> None:
    table = pa.table({"id": list(range(50)), "value": [i * 0.5 for i in range(50)]})
    fs, path = storage.pyarrow_filesystem(f"{bucket}/t.parquet")
    pq.write_table(table, path, filesystem=fs)
    back = pq.read_table(path, filesystem=fs)
    assert back.equals(table)


def test_ray_data_write_parquet_to_s3_reads_back(bucket: str, ray_local: None) -> None:
    import ray

    uri = f"{bucket}/ray_parquet"
    ds = ray.data.range(1000, override_num_blocks=4).map(lambda r: {"id": r["id"], "square": r["id"] ** 2})
    fs, _ = storage.pyarrow_filesystem(uri)
    ds.write_parquet(uri, filesystem=fs)
    back = sorted(ray.data.read_parquet(uri, filesystem=fs).take_all(), key=lambda row: row["id"])
    assert [row["square"] for row in back] == [i**2 for i in range(1000)]


@pytest.mark.parametrize("where", ["s3", "local"])
def test_a_deleted_folder_is_gone_from_its_parent(tmp_path, bucket: str, where: str) -> None:
    root = f"{bucket}/run" if where == "s3" else str(tmp_path / "run")
    storage.write_bytes_atomic(storage.join(root, "kept", "a.bin"), b"a")
    storage.write_bytes_atomic(storage.join(root, "folder", "sub", "b.bin"), b"b")
    storage.delete(storage.join(root, "folder"))
    assert not storage.exists(storage.join(root, "folder"))
    fs, path = storage.fsspec_filesystem(root)
    assert [name.rstrip("/").rsplit("/", 1)[-1] for name in fs.ls(path)] == ["kept"]
    storage.delete(storage.join(root, "folder"))  # nothing there: no error


def test_local_paths_and_atomic_write(tmp_path) -> None:
    uri = str(tmp_path / "a" / "b.txt")
    storage.write_bytes_atomic(uri, b"x")
    assert storage.read_bytes(uri) == b"x"
    assert [p for p in (tmp_path / "a").iterdir()] == [tmp_path / "a" / "b.txt"]  # no temp file left


def test_missing_bucket_is_one_clear_error(s3_server) -> None:
    with pytest.raises(
        UserError, match=r"s3://no-such-bucket-xyz/k: bucket 'no-such-bucket-xyz' does not exist"
    ):
        storage.check_readable("s3://no-such-bucket-xyz/k")


def test_missing_local_path_is_one_clear_error(tmp_path) -> None:
    missing = str(tmp_path / "nope")
    with pytest.raises(UserError, match="nope: no such file or prefix"):
        storage.check_readable(missing)


@pytest.mark.parametrize(
    "key, expected",
    [
        ("../../etc/passwd", "etc/passwd"),
        ("/abs/path/x.jpg", "abs/path/x.jpg"),
        ("a b/ünï cödé.jpg", "a_b/_n_c_d_.jpg"),
        ("..", "_"),
        ("dir\\..\\..\\win.jpg", "dir/win.jpg"),
    ],
)
def test_safe_relative_path_never_escapes(key: str, expected: str) -> None:
    out = storage.safe_relative_path(key)
    assert out == expected
    assert not out.startswith("/") and ".." not in out.split("/")


def test_cli_s3_without_endpoint_gives_one_line(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "unmask_core.cli",
            "models",
            "init",
            "--size",
            "64",
            "--output",
            "s3://bucket/models",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "s3://bucket/models" in lines[0] and "no S3 endpoint" in lines[0]


def test_only_regular_files_are_read_and_never_block(tmp_path) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)  # opening it for reading would block forever without a writer
    with pytest.raises(UserError, match="not a regular file"):
        storage.read_bytes(str(fifo))
    with pytest.raises(UserError, match="/dev/zero: not a regular file"):
        storage.read_bytes("/dev/zero")  # would be read until memory runs out


def test_max_bytes_refuses_larger_objects_local_and_s3(tmp_path, bucket: str) -> None:
    for uri in (str(tmp_path / "big.bin"), f"{bucket}/big.bin"):
        storage.write_bytes_atomic(uri, b"x" * 1001)
        assert len(storage.read_bytes(uri, max_bytes=1001)) == 1001
        with pytest.raises(UserError, match="larger than the limit of 1,000 bytes"):
            storage.read_bytes(uri, max_bytes=1000)


def test_a_failed_atomic_write_is_one_line_and_leaves_no_temporary_file(tmp_path) -> None:
    target = tmp_path / "taken"
    target.mkdir()  # a folder where the file should go: the final rename fails
    (target / "inside").write_text("x")
    with pytest.raises(UserError) as error:
        storage.write_bytes_atomic(str(target), b"data")
    assert str(target) in str(error.value) and "\n" not in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_output_keys_are_capped_per_part_and_in_total() -> None:
    long_id = "/".join(["p" * 100] * 45) + "/" + "n" * 400 + ".jpg"  # 4,948 characters
    path = storage.safe_relative_path(long_id, max_total=700)
    assert len(path.encode()) <= 700
    assert all(len(part.encode()) <= storage.MAX_KEY_PART_BYTES for part in path.split("/"))
    assert path.endswith("n" * 120)  # the file name survives; leading folders go first


def test_bulk_image_keys_of_long_ids_stay_unique_and_under_s3s_limit() -> None:
    from unmask_core.bulk.stages import unmasked_image_key

    prefix = "/".join(["p" * 100] * 45)
    a, b = unmasked_image_key(f"{prefix}/a.jpg", 0), unmasked_image_key(f"{prefix}/b.jpg", 0)
    same_tail = unmasked_image_key(f"q/{prefix}/a.jpg", 0)
    assert len({a, b, same_tail}) == 3
    assert max(len(k.encode()) for k in (a, b, same_tail)) <= 1024 - 256


# ---------------------------------------------------------------- faults: final or transient


def test_an_unreachable_endpoint_is_transient_and_named(monkeypatch) -> None:
    from unmask_core.local_s3 import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "someone")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv(faults.PATIENCE_ENV, "0")
    for call in (
        lambda: storage.read_bytes("s3://gallery/a.jpg"),
        lambda: storage.check_readable("s3://gallery/photos"),  # not "bucket does not exist"
    ):
        with pytest.raises(TransientError, match=f"cannot reach the S3 endpoint '{endpoint}'"):
            call()


def test_an_outage_is_waited_out_in_place(tmp_path, monkeypatch) -> None:
    import threading

    from tests.support.faults import own_s3
    from unmask_core import local_s3

    with own_s3(tmp_path / "s3") as s3:
        for key, value in s3.env().items():
            monkeypatch.setenv(key, value)
        local_s3.create_bucket(s3.server, "gallery")
        storage.write_bytes_atomic("s3://gallery/a.jpg", b"pixels")
        s3.stop()
        result: dict = {}
        reader = threading.Thread(target=lambda: result.update(data=storage.read_bytes("s3://gallery/a.jpg")))
        reader.start()  # patience: the default minute
        time.sleep(1.0)
        assert reader.is_alive()  # still retrying, not failed
        s3.restart()
        reader.join(timeout=120)
        assert result["data"] == b"pixels"


def test_what_belongs_to_the_object_is_final(tmp_path, bucket: str) -> None:
    with pytest.raises(UserError, match="no such file or prefix"):
        storage.read_bytes(f"{bucket}/missing.jpg")
    with pytest.raises(UserError, match="no such file or prefix"):
        storage.read_bytes(str(tmp_path / "missing.jpg"))
    storage.write_bytes_atomic(f"{bucket}/a.jpg", b"12345")
    with pytest.raises(UserError, match="larger than the limit"):
        storage.read_bytes(f"{bucket}/a.jpg", max_bytes=4, size=5)  # the listing's size: no request
    with pytest.raises(UserError, match="changed since the job was planned"):
        storage.read_bytes(f"{bucket}/a.jpg", version="an-older-etag")


def test_a_full_disk_is_transient_and_leaves_no_temporary_file(tmp_path) -> None:
    from tests.support.faults import full_disk

    with full_disk(tmp_path / "disk", size="64k") as disk:
        code = (
            "from unmask_core import storage\n"
            "from unmask_core.errors import TransientError\n"
            "try:\n"
            f"    storage.write_bytes_atomic('{disk.path}/face.png', bytes(100_000))\n"
            "except TransientError as exc:\n"
            "    print(exc)\n"
        )
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), **{faults.PATIENCE_ENV: "1"})
        proc = subprocess.run(
            disk.command(sys.executable, "-c", code), capture_output=True, text=True, env=env, timeout=120
        )
        assert proc.stdout.strip().startswith(f"{disk.path}/face.png: no space left on device"), proc.stderr
        assert "still failing after 1 s of retries" in proc.stdout
        assert list(disk.seen(disk.path).iterdir()) == []
