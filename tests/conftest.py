"""Session-wide fixtures: a SeaweedFS S3 server on 127.0.0.1, one local Ray, and one tiny model set."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.model_sets import make_tiny_model_set
from tests.support.processes import orphaned_ray_processes
from unmask_core import local_s3

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The node cache of S3 weights (models/cache.py) in the session's temporary folder, not the
    machine's default, for every process the tests start (set before Ray starts)."""
    folder = tmp_path_factory.mktemp("model_cache")
    saved = os.environ.get("UNMASK_MODEL_CACHE")
    os.environ["UNMASK_MODEL_CACHE"] = str(folder)
    yield folder
    if saved is None:
        os.environ.pop("UNMASK_MODEL_CACHE", None)
    else:
        os.environ["UNMASK_MODEL_CACHE"] = saved


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[local_s3.S3Server]:
    """A real S3-compatible server; its endpoint and test credentials are exported to the environment
    (before Ray starts, so Ray workers inherit them)."""
    saved = {
        k: os.environ.get(k)
        for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")
    }
    os.environ["AWS_ACCESS_KEY_ID"] = "unmask-test"
    os.environ["AWS_SECRET_ACCESS_KEY"] = "unmask-test-secret"
    server = local_s3.start(tmp_path_factory.mktemp("seaweedfs"))
    os.environ.update(server.env())
    try:
        yield server
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def bucket(s3_server: local_s3.S3Server) -> str:
    """A fresh, empty bucket for one test, as an s3:// URI."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    local_s3.create_bucket(s3_server, name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def ray_local(s3_server: local_s3.S3Server) -> Iterator[None]:
    """One local Ray for the whole session, started after S3 so that workers see its endpoint."""
    import ray

    from unmask_core import ray_session

    os.environ.pop("RAY_ADDRESS", None)
    ray_session.connect()
    yield
    ray.shutdown()


TINY_SET_FILES: dict[Path, tuple[int, int]] = {}  # the shared tiny set's files as made: mtime, size


def _file_states(folder: Path) -> dict[Path, tuple[int, int]]:
    return {path: (path.stat().st_mtime_ns, path.stat().st_size) for path in sorted(folder.iterdir())}


@pytest.fixture(scope="session")
def tiny_model_set(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 64 px model set made once (seed TINY_MODEL_SET_SEED), as a local path. Read it only: a test
    that changes a model set copies this one or makes its own (checked after every test)."""
    folder = make_tiny_model_set(tmp_path_factory.mktemp("tiny_model_set"))
    TINY_SET_FILES.update(_file_states(Path(folder)))
    return folder


@pytest.fixture(autouse=True)
def the_shared_tiny_set_is_left_as_made(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that wrote into the shared set would change every later test's models: it fails here,
    named, instead of a later test failing for no reason of its own."""
    yield
    if TINY_SET_FILES:
        folder = next(iter(TINY_SET_FILES)).parent
        changed = _file_states(folder) != TINY_SET_FILES
        assert not changed, f"{request.node.nodeid} changed the shared tiny model set"


@pytest.fixture
def cuda_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process in the CUDA state (unmask_core/accelerator.py): the code takes every path a GPU
    would. The backend flags that state sets are put back afterwards."""
    import torch

    from unmask_core.accelerator import CUDA_STATE_ENV

    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    saved = matmul.fp32_precision, conv.fp32_precision, torch.backends.cudnn.benchmark
    monkeypatch.setenv(CUDA_STATE_ENV, "1")
    yield
    matmul.fp32_precision, conv.fp32_precision, torch.backends.cudnn.benchmark = saved


# A Ray agent whose raylet was killed spins on a core until it is killed: one left by the first module
# made the rest of the suite run on one core of two. A Ray that was shut down may take seconds to exit,
# so an orphaned Ray process is an error once it has been seen for ORPHAN_GRACE_S.
ORPHAN_GRACE_S = 15
_orphans_seen: dict[str, float] = {}  # orphan -> when first seen


def _fail_on_lasting_orphans(wait: bool) -> None:
    """Kill and fail on orphaned Ray processes seen for ORPHAN_GRACE_S; with `wait`, first wait (at
    most that long) for those still exiting."""
    deadline = time.monotonic() + (ORPHAN_GRACE_S + 1 if wait else 0)
    while True:
        orphans = orphaned_ray_processes()
        now = time.monotonic()
        for key in set(_orphans_seen) - set(orphans):
            del _orphans_seen[key]
        lasting = [
            title
            for key, title in orphans.items()
            if now - _orphans_seen.setdefault(key, now) >= ORPHAN_GRACE_S
        ]
        if lasting or not orphans or now >= deadline:
            break
        time.sleep(0.5)
    for title in lasting:
        try:
            os.kill(int(title.split()[0]), signal.SIGKILL)
        except ProcessLookupError:
            pass
    if lasting:
        pytest.fail(f"Ray processes outlived the test module that started them (killed now): {lasting}")


@pytest.fixture(scope="module", autouse=True)
def no_ray_process_outlives_its_module() -> Iterator[None]:
    """Checked at each module's end without waiting: what a module leaves fails a later one, naming it."""
    yield
    _fail_on_lasting_orphans(wait=False)


@pytest.fixture(scope="session", autouse=True)
def no_ray_process_outlives_the_session() -> Iterator[None]:
    """The last module's leftovers, after the session's own Ray has stopped."""
    yield
    _fail_on_lasting_orphans(wait=True)
