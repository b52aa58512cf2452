"""cluster.yaml: valid for Ray 2.60's autoscaler (its JSON schema and its own checks, offline), and true
to our operating rules: the head runs no tasks, GPUs scale from zero, credentials come from instance
profiles, and every node runs the Ray we pin."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from tests.conftest import REPO_ROOT

CLUSTER_YAML = REPO_ROOT / "cluster.yaml"
RAY_SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"

# Instance families with NVIDIA GPUs that a GPU worker type could use.
GPU_FAMILIES = ("g4dn", "g5", "g6", "g6e", "gr6", "p3", "p4d", "p4de", "p5", "p5e", "p5en", "p6")


def load_cluster() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def ray_validate(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` does to a config before it touches the cloud: merge defaults, then validate."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def schema_validator() -> jsonschema.Draft7Validator:
    schema = json.loads(RAY_SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def is_gpu_instance(instance_type: str) -> bool:
    return instance_type.split(".", 1)[0] in GPU_FAMILIES


def walk(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every (path, key-or-scalar) in a parsed YAML document."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield f"{path}/{key}", key
            yield from walk(item, f"{path}/{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from walk(item, f"{path}[{i}]")
    else:
        yield path, value


def test_cluster_yaml_matches_rays_json_schema():
    errors = [e.message for e in schema_validator().iter_errors(load_cluster())]
    assert errors == []


def test_cluster_yaml_passes_rays_own_validation():
    prepared = ray_validate(load_cluster())
    # prepare_config merges Ray's AWS defaults shallowly: our keys must have replaced theirs, or nodes
    # would run Ray's default setup commands (which install a nightly Ray wheel).
    assert not any("ray-wheels" in cmd for cmd in prepared["head_setup_commands"])
    assert prepared["available_node_types"]["head"]["max_workers"] == 0


def _wrong_type_for_max_workers(config: dict) -> None:
    config["max_workers"] = "twenty"


def _unknown_top_level_key(config: dict) -> None:
    config["max_worker"] = 3


def _node_type_without_node_config(config: dict) -> None:
    del config["available_node_types"]["gpu_worker"]["node_config"]


def _fractional_resource(config: dict) -> None:
    config["available_node_types"]["head"]["resources"] = {"CPU": 0.5}


def _unknown_node_type_key(config: dict) -> None:
    config["available_node_types"]["cpu_worker"]["min_worker"] = 1


@pytest.mark.parametrize(
    "breakage",
    [
        _wrong_type_for_max_workers,
        _unknown_top_level_key,
        _node_type_without_node_config,
        _fractional_resource,
        _unknown_node_type_key,
    ],
)
def test_validation_rejects_a_broken_config(breakage: Callable[[dict], None]):
    broken = load_cluster()
    breakage(broken)
    assert list(schema_validator().iter_errors(broken)), "the schema accepted a broken config"
    with pytest.raises(jsonschema.ValidationError):
        ray_validate(broken)


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda c: c.__setitem__("head_node_type", "missing"), "must be one of"),
        (
            lambda c: c["available_node_types"]["gpu_worker"].__setitem__("min_workers", 99),
            "smaller than the sum of `min_workers`",
        ),
    ],
)
def test_rays_semantic_checks_reject_what_the_schema_cannot(breakage, message: str):
    broken = load_cluster()
    breakage(broken)
    with pytest.raises(ValueError, match=re.escape(message)):
        ray_validate(broken)


def test_head_runs_no_tasks():
    config = load_cluster()
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    assert not is_gpu_instance(head["node_config"]["InstanceType"])


def test_gpu_pool_scales_from_zero():
    node_types = load_cluster()["available_node_types"]
    gpu_types = {n: t for n, t in node_types.items() if is_gpu_instance(t["node_config"]["InstanceType"])}
    assert gpu_types, "no GPU worker type"
    for name, node_type in gpu_types.items():
        assert node_type["min_workers"] == 0, name
        assert node_type["max_workers"] >= 1, name


def test_every_worker_pool_scales_to_zero_and_fits_the_global_cap():
    config = load_cluster()
    workers = {n: t for n, t in config["available_node_types"].items() if n != config["head_node_type"]}
    assert {n for n, t in workers.items() if t["min_workers"] != 0} == set()
    assert sum(t["max_workers"] for t in workers.values()) <= config["max_workers"]
    assert config["idle_timeout_minutes"] > 0


def test_no_aws_credentials_in_the_file():
    text = CLUSTER_YAML.read_text()
    # Access key IDs (long-term AKIA, temporary ASIA) and anything shaped like a 40-char secret.
    assert not re.search(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b", text)
    assert not re.search(r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])", text)
    forbidden = re.compile(
        r"aws_access_key_id|aws_secret_access_key|aws_session_token|aws_credentials|secret_key",
        re.IGNORECASE,
    )
    for path, item in walk(load_cluster()):
        assert not (isinstance(item, str) and forbidden.search(item)), path


def test_nodes_reach_s3_through_instance_profiles():
    config = load_cluster()
    for name, node_type in config["available_node_types"].items():
        profile = node_type["node_config"].get("IamInstanceProfile", {})
        assert profile.get("Name") or profile.get("Arn"), f"{name} has no IamInstanceProfile"
    assert "--env UNMASK_S3_INSTANCE_PROFILE=1" in config["docker"]["run_options"]


def test_every_node_runs_the_ray_version_we_pin():
    image = load_cluster()["docker"]["image"]
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py311-gpu", image)
    assert match, image
    assert match.group(1) == ray.__version__


def test_project_is_installed_at_a_pinned_ref():
    commands = load_cluster()["setup_commands"]
    installs = [c for c in commands if "pip install" in c and "unmask" in c]
    assert len(installs) == 1, commands
    ref = re.search(r"git\+\S+?\.git@([\w.\-]+)", installs[0])
    assert ref, installs[0]
    assert ref.group(1) not in ("main", "master", "HEAD")


def test_token_auth_is_on_for_every_node():
    config = load_cluster()
    run_options = config["docker"]["run_options"]
    assert "--env RAY_AUTH_MODE=token" in run_options
    token_path = next(o.split("=", 1)[1] for o in run_options if o.startswith("--env RAY_AUTH_TOKEN_PATH="))
    assert config["file_mounts"][token_path] == "~/.ray/auth_token"
