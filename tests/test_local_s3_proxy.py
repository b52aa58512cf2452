"""CountingProxy: forwards S3 requests unchanged (signatures still verify) and counts them by kind."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import boto3
import botocore.exceptions
import pytest
from boto3.s3.transfer import TransferConfig

from unmask_core import local_s3, storage
from unmask_core.local_s3 import CountingProxy, request_kind


@pytest.fixture
def proxy(s3_server: local_s3.S3Server) -> Iterator[CountingProxy]:
    with CountingProxy(s3_server.endpoint) as running:
        yield running


def _client(endpoint: str, secret: str | None = None):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=secret or os.environ["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )


def test_request_kinds_from_path_style_requests() -> None:
    assert request_kind("GET", "/b?list-type=2&prefix=in%2F") == ("LIST", "b")
    assert request_kind("GET", "/b/") == ("LIST", "b")
    assert request_kind("GET", "/b?list-type=2&encoding-type=url") == ("LIST", "b")
    assert request_kind("GET", "/b?location") == ("OTHER", "b")
    assert request_kind("GET", "/b/in/a%20b.jpg") == ("GET", "b/in/a b.jpg")
    assert request_kind("GET", "/b/k?tagging") == ("OTHER", "b/k")
    assert request_kind("HEAD", "/b/k") == ("HEAD", "b/k")
    assert request_kind("PUT", "/b/k?partNumber=1&uploadId=x") == ("PUT", "b/k")
    assert request_kind("POST", "/b/k?uploads") == ("OTHER", "b/k")
    assert request_kind("GET", "/") == ("OTHER", "")


def test_boto3_through_the_proxy_is_counted_by_kind_and_key(proxy: CountingProxy, bucket: str) -> None:
    name = bucket.removeprefix("s3://")
    s3 = _client(proxy.endpoint)
    big = os.urandom(300_000)
    s3.put_object(Bucket=name, Key="in/a.bin", Body=b"a" * 10)
    s3.put_object(Bucket=name, Key="in/b.bin", Body=big)
    listed = s3.list_objects_v2(Bucket=name, Prefix="in/")
    assert [o["Key"] for o in listed["Contents"]] == ["in/a.bin", "in/b.bin"]
    assert s3.get_object(Bucket=name, Key="in/b.bin")["Body"].read() == big
    assert s3.get_object(Bucket=name, Key="in/a.bin")["Body"].read() == b"a" * 10
    assert s3.get_object(Bucket=name, Key="in/a.bin", Range="bytes=2-5")["Body"].read() == b"aaaa"
    assert s3.head_object(Bucket=name, Key="in/a.bin")["ContentLength"] == 10
    s3.delete_object(Bucket=name, Key="in/a.bin")
    with pytest.raises(botocore.exceptions.ClientError, match="404"):
        s3.head_object(Bucket=name, Key="in/a.bin")

    counts = proxy.counts()
    assert counts == {"PUT": 2, "LIST": 1, "GET": 3, "HEAD": 2, "DELETE": 1}
    assert proxy.gets_by_key() == {f"{name}/in/a.bin": 2, f"{name}/in/b.bin": 1}
    assert proxy.get_bytes_by_key() == {f"{name}/in/a.bin": 14, f"{name}/in/b.bin": len(big)}
    proxy.reset()
    assert proxy.counts() == {} and proxy.gets_by_key() == {} and proxy.get_bytes_by_key() == {}


def test_held_gets_wait_for_the_release_and_others_pass(proxy: CountingProxy, bucket: str) -> None:
    name = bucket.removeprefix("s3://")
    s3 = _client(proxy.endpoint)
    for key in ("held.bin", "free.bin"):
        s3.put_object(Bucket=name, Key=key, Body=key.encode())
    proxy.hold([f"{name}/held.bin"])
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(lambda: s3.get_object(Bucket=name, Key="held.bin")["Body"].read())
        assert s3.get_object(Bucket=name, Key="free.bin")["Body"].read() == b"free.bin"
        time.sleep(1)
        assert not held.done()
        proxy.release()
        assert held.result(timeout=30) == b"held.bin"


def test_signatures_are_still_checked_upstream(proxy: CountingProxy, bucket: str) -> None:
    name = bucket.removeprefix("s3://")
    with pytest.raises(botocore.exceptions.ClientError, match="SignatureDoesNotMatch|AccessDenied|403"):
        _client(proxy.endpoint, secret="not-the-secret").put_object(Bucket=name, Key="k", Body=b"x")
    assert proxy.counts()["PUT"] == 1


def test_multipart_upload_streams_through(proxy: CountingProxy, bucket: str, tmp_path) -> None:
    name = bucket.removeprefix("s3://")
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(12 * 1024 * 1024))
    config = TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024)
    _client(proxy.endpoint).upload_file(str(source), name, "big.bin", Config=config)
    assert storage.read_bytes(f"{bucket}/big.bin") == source.read_bytes()  # straight to the server
    counts = proxy.counts()
    assert counts["PUT"] == 3  # the parts
    assert counts["OTHER"] == 2  # create and complete the multipart upload


def test_s3fs_clients_through_the_proxy(
    proxy: CountingProxy, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    storage.write_bytes_atomic(f"{bucket}/dir/x.bin", b"hello")
    assert storage.read_bytes(f"{bucket}/dir/x.bin") == b"hello"
    assert storage.list_files(f"{bucket}/dir") == [f"{bucket}/dir/x.bin"]
    name = bucket.removeprefix("s3://")
    assert proxy.gets_by_key() == {f"{name}/dir/x.bin": 1}
    assert proxy.counts()["PUT"] == 1
    assert proxy.counts()["LIST"] >= 1


def test_pyarrow_parquet_through_the_proxy(
    proxy: CountingProxy, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    table = pa.table({"id": list(range(1000))})
    fs, path = storage.pyarrow_filesystem(f"{bucket}/t.parquet")
    pq.write_table(table, path, filesystem=fs)
    assert pq.read_table(path, filesystem=fs).equals(table)
    assert proxy.counts()["PUT"] >= 1
    assert proxy.gets_by_key()[f"{path}"] >= 1
