"""A broken model set fails the job in one line naming the file, before any shard is planned: in the
driver's check (the set on the meta device: headers only) as in a full load."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO_ROOT
from unmask_core.errors import UserError
from unmask_core.models.cache import FileChecksum
from unmask_core.models.kinds import save_module
from unmask_core.models.model_set import CHECKSUMS, MANIFEST, ModelSet, model_set_configs
from unmask_core.models.stylegan2 import Generator


def _copy(tiny_model_set: str, tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    shutil.copytree(tiny_model_set, folder)
    return folder


def test_a_generator_of_another_size_than_the_manifest_is_one_line(tiny_model_set: str, tmp_path) -> None:
    folder = _copy(tiny_model_set, tmp_path)
    config, _, _ = model_set_configs(64)
    torch.manual_seed(0)
    other = Generator(type(config)(size=32, style_dim=config.style_dim, max_channels=config.max_channels))
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["sha256"]["generator"] = save_module(other, str(folder / "generator.pt"))
    checksum = FileChecksum.of_file(folder / "generator.pt")
    manifest[CHECKSUMS]["generator.pt"] = {"size": checksum.size, "sha256": checksum.sha256}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    for device in ("cpu", "meta"):
        with pytest.raises(
            UserError, match=r"generator.pt: a 32 px generator with 8 styles; .* says 64 px and 10"
        ):
            ModelSet(str(folder), device=device).validate()


def test_a_truncated_encoder_fails_the_bulk_job_in_one_line_before_planning(
    tiny_model_set: str, tmp_path
) -> None:
    folder = _copy(tiny_model_set, tmp_path)
    encoder = folder / "unmask_encoder.pt"
    encoder.write_bytes(encoder.read_bytes()[:1000])
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    (gallery / "a.jpg").write_bytes(b"not needed")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "unmask_core.cli", "unmask", "--input", str(gallery)]
    command += ["--output", str(out), "--models", str(folder), "--matchers", "facenet"]
    proc = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "unmask_encoder.pt" in lines[0], proc.stderr
    assert not (out / "config.yaml").exists() and not (out / "_plan.json").exists()
