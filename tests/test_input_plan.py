"""The streamed plan: an input listed once, page by page, into OUTPUT/_inputs/, cut into the same
shards however the run is interrupted, and never listed again once planned."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from unmask_core import input_plan, listing, storage


def _folder(root, count: int) -> list[str]:
    """`count` files in nested folders; their ids in listing order."""
    ids = []
    for k in range(count):
        record_id = f"d{k // 700:02d}/{k:05d}.jpg"
        path = root / record_id
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * (k % 7))
        ids.append(record_id)
    return sorted(ids, key=lambda i: tuple(i.split("/")))


def _all_shards(input_uri: str, out: str, shard_size: int, **kwargs) -> list[tuple[int, list[str]]]:
    planned = input_plan.PlannedInputs(out).listed()
    got = []
    for segment in range(input_plan.segments_for(planned.inputs, shard_size)):
        for shard, rows in input_plan.segment_shards(input_uri, out, shard_size, segment, **kwargs):
            got.append((shard, rows.column("id").to_pylist()))
    return got


def test_segments_are_whole_shards_growing_fourfold() -> None:
    assert input_plan.segment_rows(0, 64) == (0, 1024)
    assert input_plan.segment_rows(1, 64) == (1024, 5120)
    assert input_plan.segment_rows(2, 64) == (5120, 21504)
    assert input_plan.segments_for(1024, 64) == 1 and input_plan.segments_for(1025, 64) == 2
    assert input_plan.segment_rows(input_plan.MAX_SEGMENTS - 1, 1)[1] > 10**12


def test_a_folder_is_planned_once_into_shards_of_its_files_in_order(tmp_path) -> None:
    ids = _folder(tmp_path / "gallery", 2500)
    out = str(tmp_path / "out")
    got = _all_shards(str(tmp_path / "gallery"), out, 64)
    assert [shard for shard, _ in got] == list(range(40))  # 39 of 64 and one of 4
    assert [i for _, rows in got for i in rows] == ids
    planned = input_plan.PlannedInputs(out).listed()
    assert planned.complete and planned.inputs == 2500 and planned.parts[0].first_row == 0
    table = pa.concat_tables(pq.read_table(part.uri) for part in planned.parts)
    assert table.column("id").to_pylist() == ids
    assert table.column("size").to_pylist()[:8] == [0, 1, 2, 3, 4, 5, 6, 0]

    # Files that appear later are not inputs of this output: the plan is read, not listed again.
    (tmp_path / "gallery" / "d00" / "00000-new.jpg").write_bytes(b"late")
    again = _all_shards(str(tmp_path / "gallery"), out, 64, skip=lambda shard: shard < 38)
    assert again == got[38:]


def test_a_listing_cut_short_resumes_after_its_last_planned_row(tmp_path) -> None:
    ids = _folder(tmp_path / "gallery", 2500)
    out = str(tmp_path / "out")
    first = [  # rows 0-1023 planned: a run stopped there
        (shard, rows.column("id").to_pylist())
        for shard, rows in input_plan.segment_shards(str(tmp_path / "gallery"), out, 64, 0)
    ]
    assert not input_plan.PlannedInputs(out).listed().complete
    rest = _all_shards(str(tmp_path / "gallery"), out, 64, skip=lambda shard: shard < 16)
    assert [i for _, rows in first + rest for i in rows] == ids


def test_an_output_inside_the_input_is_not_listed(tmp_path) -> None:
    ids = _folder(tmp_path / "gallery", 10)
    out = str(tmp_path / "gallery" / "d00" / "out")
    storage.write_bytes_atomic(storage.join(out, "images", "a.png"), b"an output")
    got = _all_shards(str(tmp_path / "gallery"), out, 4, exclude=out)
    assert [i for _, rows in got for i in rows] == ids


@pytest.mark.parametrize("where", ["s3", "local"])
def test_an_s3_prefix_and_a_manifest_are_planned_alike(tmp_path, bucket: str, where: str) -> None:
    keys = [f"g/{k:04d}.jpg" for k in range(1200)]
    client, name, _ = storage.s3_client(bucket)
    for key in keys:
        client.put_object(Bucket=name, Key=key, Body=b"x")
    out = f"{bucket}/out" if where == "s3" else str(tmp_path / "out")
    got = _all_shards(f"{bucket}/g", out, 100)
    assert [i for _, rows in got for i in rows] == [key[2:] for key in keys]
    first = next(listing.pages(f"{bucket}/g")).table.to_pylist()[0]
    assert first["uri"] == f"{bucket}/g/0000.jpg" and first["size"] == 1 and len(first["version"]) == 32

    manifest = str(tmp_path / "m.csv")
    storage.write_bytes_atomic(manifest, ("uri\n" + "".join(f"{bucket}/{k}\n" for k in keys)).encode())
    got = _all_shards(manifest, str(tmp_path / "out_manifest"), 100)
    assert [i for _, rows in got for i in rows] == [f"{bucket[5:]}/{k}" for k in keys]
