"""cluster.yaml's node types on Ray's own autoscaler, on one machine: a head with the fake multi-node
provider (`RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=...`) launches each "node" as a
real raylet here, with the resources its type declares. The jobs are submitted as on AWS, to a cluster
that starts with no workers, and the tests check what the autoscaler did with them: which node types
came up, where each stage's actors ran, and that the workers went away once idle.

Not `ray.cluster_utils.AutoscalingCluster`: its start() runs `ray stop --force`, which would kill every
Ray on the machine. The head is started like the `ray job submit` tests' (own temp dir, free ports,
token auth) and stopped by PID.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ray.autoscaler._private.util import validate_config
from ray.job_submission import JobStatus
from ray.util.state import StateApiClient
from ray.util.state.common import ActorState, ListApiOptions, NodeState, StateResource

from tests.support.ray_head import RayHead, free_port, hanks_upscaled, put, start_head, submit_and_wait
from tests.test_cluster import load_cluster
from unmask_core import local_s3, shards, storage
from unmask_core.faces.samples import sample_photo
from unmask_core.models.model_set import init_model_set

# What a Ray node on each of cluster.yaml's instance types offers (vCPUs, GPUs). On AWS Ray reads this
# from the instance type; the fake provider cannot, so the derived config declares it.
INSTANCE_RESOURCES: dict[str, dict[str, int]] = {
    "m6i.2xlarge": {"CPU": 8},
    "c6i.8xlarge": {"CPU": 32},
    "g6e.xlarge": {"CPU": 4, "GPU": 1},
    "p4d.24xlarge": {"CPU": 96, "GPU": 8},
}
# Every fake node is a real raylet (plus its workers) on this 2-core machine: at most one node per type,
# at most 4 CPUs declared per node (Ray Data sizes its task concurrency from declared CPUs), and a
# small object store each instead of 30% of the machine's memory.
MAX_NODES_PER_TYPE = 1
MAX_CPUS_PER_NODE = 4
NODE_OBJECT_STORE_BYTES = 300 * 1024**2
# Ray's autoscaler takes fractional minutes; cluster.yaml's 10 would make the drain check take 10.
IDLE_TIMEOUT_MINUTES = 0.25
# The fake provider tags its head node with this type name, whatever the config calls it.
FAKE_HEAD_TYPE = "ray.head.default"
# On AWS every node carries its type in Ray's `ray.io/node-group` label; the fake provider's nodes do
# not (and `ray.io/` is reserved), so the derived config labels each type itself.
NODE_TYPE_LABEL = "node-type"
# Starting a node, its workers and torch on two shared cores takes minutes, not seconds.
JOB_TIMEOUT_S = 600
DRAIN_TIMEOUT_S = IDLE_TIMEOUT_MINUTES * 60 + 90


def fake_cluster_config(cluster: dict[str, Any], gcs_port: int) -> dict[str, Any]:
    """cluster.yaml for the fake provider: its worker node types by name, scaling from cluster.yaml's
    min_workers up to at most MAX_NODES_PER_TYPE, each with its instance type's resources (CPUs capped),
    and the head offering what cluster.yaml's head offers (nothing)."""
    head_type = cluster["head_node_type"]
    node_types: dict[str, Any] = {
        FAKE_HEAD_TYPE: {
            "resources": cluster["available_node_types"][head_type]["resources"],
            "node_config": {},
            "max_workers": 0,
        }
    }
    for name, node_type in cluster["available_node_types"].items():
        if name == head_type:
            continue
        # The instance's own resources, plus the custom ones cluster.yaml declares (e.g. nvlink_gpu).
        resources = {**INSTANCE_RESOURCES[node_type["node_config"]["InstanceType"]], **node_type["resources"]}
        resources["CPU"] = min(resources["CPU"], MAX_CPUS_PER_NODE)
        node_types[name] = {
            "resources": {**resources, "object_store_memory": NODE_OBJECT_STORE_BYTES},
            "labels": {NODE_TYPE_LABEL: name},
            "node_config": {},
            "min_workers": node_type["min_workers"],
            "max_workers": min(node_type["max_workers"], MAX_NODES_PER_TYPE),
        }
    return {
        "cluster_name": f"{cluster['cluster_name']}-fake",
        "max_workers": sum(t["max_workers"] for t in node_types.values()),
        "upscaling_speed": cluster["upscaling_speed"],
        "idle_timeout_minutes": IDLE_TIMEOUT_MINUTES,
        "provider": {
            "type": "fake_multinode",
            "gcs_address": f"127.0.0.1:{gcs_port}",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "head_node_type": FAKE_HEAD_TYPE,
        "available_node_types": node_types,
        "auth": {},
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def test_the_fake_cluster_has_cluster_yamls_worker_types_with_their_instances_resources():
    cluster = load_cluster()
    config = fake_cluster_config(cluster, gcs_port=6379)
    # Complete as written: the autoscaler reads it as is (Ray's wheel lacks the fake provider's
    # defaults file that `prepare_config` would merge in).
    validate_config(config)
    workers = {n: t for n, t in config["available_node_types"].items() if n != FAKE_HEAD_TYPE}
    assert set(workers) == set(cluster["available_node_types"]) - {cluster["head_node_type"]}
    assert workers["gpu_worker"]["resources"]["GPU"] == 1
    assert workers["gpu_worker"]["resources"]["CPU"] == 4
    assert "GPU" not in workers["cpu_worker"]["resources"]
    assert all(t["min_workers"] == 0 for t in workers.values())
    assert config["available_node_types"][FAKE_HEAD_TYPE]["resources"] == {"CPU": 0}


@dataclass
class FakeCluster:
    head: RayHead

    def state(self) -> StateApiClient:
        return StateApiClient(self.head.dashboard_url, headers={"Authorization": f"Bearer {self.head.token}"})

    def nodes(self) -> list[NodeState]:
        options = ListApiOptions(limit=1000, detail=True)
        return self.state().list(StateResource.NODES, options=options, raise_on_missing_output=False)

    def actors(self) -> list[ActorState]:
        options = ListApiOptions(limit=10000, detail=True)
        return self.state().list(StateResource.ACTORS, options=options, raise_on_missing_output=False)

    def alive_workers(self) -> list[NodeState]:
        return [n for n in self.nodes() if not n.is_head_node and n.state == "ALIVE"]

    def wait_for_no_workers(self, timeout_s: float) -> float:
        """Seconds until no worker node is alive."""
        started = time.monotonic()
        while alive := self.alive_workers():
            assert time.monotonic() - started < timeout_s, f"still alive: {[node_type(n) for n in alive]}"
            time.sleep(2)
        return time.monotonic() - started


def node_type(node: NodeState) -> str:
    return node.labels.get(NODE_TYPE_LABEL, FAKE_HEAD_TYPE if node.is_head_node else "")


def describe_timeline(nodes: list[NodeState], since_ms: int) -> str:
    """One line per worker node: its type and when it joined and left, in seconds since `since_ms`."""
    lines = []
    for node in sorted(nodes, key=lambda n: n.start_time_ms or 0):
        if node.is_head_node:
            continue
        left = f"{(node.end_time_ms - since_ms) / 1000:.0f}s" if node.end_time_ms else "-"
        lines.append(
            f"{node_type(node)} {node.resources_total}: up {(node.start_time_ms - since_ms) / 1000:.0f}s,"
            f" gone {left}"
        )
    return "\n".join(lines)


@pytest.fixture(scope="module")
def fake_cluster(s3_server: local_s3.S3Server) -> Iterator[FakeCluster]:
    # Short and under /tmp: Ray's Unix socket paths under the temp dir must fit in 107 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="rayfake-", dir="/tmp"))
    gcs_port = free_port()
    config_path = temp_dir / "autoscaling.json"
    config_path.write_text(json.dumps(fake_cluster_config(load_cluster(), gcs_port)))
    head = None
    try:
        head = start_head(
            temp_dir,
            # The fake provider refuses to run without RAY_FAKE_CLUSTER; a 1 s autoscaler loop (default
            # 5 s) keeps launches and terminations prompt. Worker nodes are started by the head's
            # autoscaler process and inherit this environment, S3 endpoint and auth token included.
            {**s3_server.env(), "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"},
            node_args=["--num-cpus=0", "--num-gpus=0", f"--autoscaling-config={config_path}"],
            gcs_port=gcs_port,
        )
        yield FakeCluster(head)
    finally:
        if head is not None:
            head.stop()  # the worker nodes' processes too: they carry the head's environment
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def tiny_model_set(s3_server: local_s3.S3Server) -> str:
    local_s3.create_bucket(s3_server, "autoscaling-models")
    uri = "s3://autoscaling-models/set"
    init_model_set(64, uri)
    return uri


def submit(cluster: FakeCluster, entrypoint: str) -> int:
    """Submit a job and wait for it to succeed; return when it started (ms since the epoch)."""
    submit_and_wait(cluster.head, entrypoint, timeout_s=JOB_TIMEOUT_S)
    return max(j.start_time for j in cluster.head.client().list_jobs() if j.entrypoint == entrypoint)


def actors_of(cluster: FakeCluster, stage: str) -> list[ActorState]:
    """The Ray Data actors created for `stage`, placed or not: their class name names the stage's
    class from the moment Ray registers them (a repr name only once one has run, and an actor still
    waiting for a node when a short job ends never runs)."""
    return [a for a in cluster.actors() if stage in a.class_name]


@pytest.mark.slow
def test_bulk_unmask_starts_a_gpu_node_for_the_unmask_stage_and_drains(
    fake_cluster: FakeCluster, tiny_model_set: str, bucket: str
):
    assert fake_cluster.alive_workers() == []
    gallery = {
        "t1.jpg": sample_photo("t1.jpg").read_bytes(),
        "hanks_upscaled.png": hanks_upscaled(),
        "hanks_mirrored.png": hanks_upscaled(mirrored=True),
        "truncated.jpg": sample_photo("t1.jpg").read_bytes()[:5000],
    }
    for key, payload in gallery.items():
        put(bucket, f"gallery/{key}", payload)
    out = f"{bucket}/out"

    started_ms = submit(
        fake_cluster,
        f"python -m jobs.unmask --input {bucket}/gallery --output {out} --models {tiny_model_set} "
        "--gpus-per-actor 1 --actors 1,1 --cpu-actors 4,4 --shard-size 1 --batch-size 4",
    )

    nodes = fake_cluster.nodes()
    type_of = {n.node_id: node_type(n) for n in nodes}
    print(f"\nbulk unmask, seconds since the job started:\n{describe_timeline(nodes, started_ms)}")
    # One GPU node of the one-GPU type, whichever node came up first and took the CPU-stage actors:
    # never the 8-GPU training node.
    assert sorted(type_of[n.node_id] for n in nodes if not n.is_head_node) == ["cpu_worker", "gpu_worker"]
    unmaskers = actors_of(fake_cluster, "UnmaskingStage")
    assert unmaskers, [a.class_name for a in fake_cluster.actors()]
    assert {type_of.get(a.node_id) for a in unmaskers} == {"gpu_worker"}
    # The pool asked for: the fourth of them may still be waiting for a node when four photos are done.
    face_finders = actors_of(fake_cluster, "FaceFindingStage")
    print(f"face stage actors on {sorted(type_of.get(a.node_id) or 'no node yet' for a in face_finders)}")
    assert len(face_finders) == 4

    summary = json.loads(storage.read_bytes(storage.join(out, "summary.json")))
    assert summary["reconciled"] and summary["inputs"] == len(gallery)
    rows = shards.read_rows(storage.join(out, "rows"), columns=["id", "status"]).to_pylist()
    assert {row["id"]: row["status"] for row in rows} == {
        "t1.jpg": "ok",
        "hanks_upscaled.png": "ok",
        "hanks_mirrored.png": "ok",
        "truncated.jpg": "decode_error",
    }

    drained_s = fake_cluster.wait_for_no_workers(DRAIN_TIMEOUT_S)
    print(f"no workers {drained_s:.0f}s after the job ended")


@pytest.mark.slow
def test_prepare_starts_only_cpu_nodes_and_drains(fake_cluster: FakeCluster, bucket: str):
    fake_cluster.wait_for_no_workers(DRAIN_TIMEOUT_S)
    earlier = {n.node_id for n in fake_cluster.nodes()}
    corpus = {
        "crowd/t1.jpg": sample_photo("t1.jpg").read_bytes(),
        "hanks/upscaled.png": hanks_upscaled(),
    }
    for key, payload in corpus.items():
        put(bucket, f"corpus/{key}", payload)
    pairs = f"{bucket}/pairs"

    started_ms = submit(
        fake_cluster,
        f"python -m jobs.prepare --corpus folders --input {bucket}/corpus --output {pairs} "
        "--test-fraction 0 --image-size 64 --workers 1",
    )

    nodes = fake_cluster.nodes()
    print(f"\nprepare, seconds since the job started:\n{describe_timeline(nodes, started_ms)}")
    launched = {n.node_id: node_type(n) for n in nodes if n.node_id not in earlier}
    assert set(launched.values()) == {"cpu_worker"}
    workers = [a for a in actors_of(fake_cluster, "ShardWorker") if a.node_id in launched]
    assert workers
    rows = shards.read_rows(storage.join(pairs, "pairs"), columns=["id", "status"]).to_pylist()
    assert {row["id"]: row["status"] for row in rows} == {"crowd/t1.jpg": "ok", "hanks/upscaled.png": "ok"}

    drained_s = fake_cluster.wait_for_no_workers(DRAIN_TIMEOUT_S)
    print(f"no workers {drained_s:.0f}s after the job ended")


@pytest.mark.slow
def test_a_gpu_no_node_type_holds_is_waited_for_with_a_line_every_30_s_then_given_up(
    fake_cluster: FakeCluster, tiny_model_set: str, bucket: str
):
    """Ray's v1 autoscaler (this fake cluster's) keeps to its own log which requests no node type can
    hold, so the job waits as for a node that may come, saying so, until --resource-timeout."""
    put(bucket, "gallery/t1.jpg", sample_photo("t1.jpg").read_bytes())
    out = f"{bucket}/out"
    logs = submit_and_wait(
        fake_cluster.head,
        f"python -m jobs.unmask --input {bucket}/gallery --output {out} --models {tiny_model_set} "
        "--gpus-per-actor 16 --resource-timeout 35",
        expected=JobStatus.FAILED,
    )
    printed = logs.split("Running entrypoint for job", 1)[1].strip().splitlines()[1:]  # past Ray's own lines
    assert printed == [
        "waiting for a GPU node (30 s)",
        "unmask unmask: failed: --gpus-per-actor: a GPU node did not come up in 35 s (--resource-timeout); "
        "the cluster's autoscaler may be out of capacity or quota; finished work is kept: rerun once fixed",
    ]
    assert not storage.exists(storage.join(out, "_plan.json"))
    assert fake_cluster.alive_workers() == []  # nothing was started for a request no node type holds
