"""docs/extending.md's recipes are true: a throwaway training stage, model kind and matcher with weights
of its own, each added to a copy of the package by editing only the files the recipe names, work end to
end (models init, models import with the new flag, evaluate with the new matcher, a training step of
the new stage) in a process that imports that copy."""

from __future__ import annotations

import filecmp
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.support.public_formats import save_facenet, save_irse50, save_psp
from unmask_core.models.encoder import GradualStyleEncoder
from unmask_core.models.irse import Backbone
from unmask_core.models.model_set import model_set_configs
from unmask_core.models.psp import PSP
from unmask_core.models.public import new_facenet
from unmask_core.models.stylegan2 import Generator
from unmask_core.prepare.synthetic import write_synthetic_pairs

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("unmask_core", "jobs")

# ---------------------------------------------------------------- the throwaway additions

TINYNET_MODULE = '''"""A throwaway face embedding network (tests/test_extending.py)."""

from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn


@dataclass
class TinyNetConfig:
    width: int = 8
    dim: int = 16


class TinyNet(nn.Module):
    def __init__(self, config: TinyNetConfig) -> None:
        super().__init__()
        self.config = config
        self.conv = nn.Conv2d(3, config.width, 3, stride=2, padding=1)
        self.head = nn.Linear(config.width, config.dim)

    def forward(self, x):
        return F.normalize(self.head(F.relu(self.conv(x)).mean(dim=(2, 3))), dim=1)
'''

TINYNET_LOADER = """

def load_tinynet(uri: str) -> nn.Module:
    from unmask_core.models.tinynet import TinyNet, TinyNetConfig

    state_dict = _bare_state_dict(torch_load(uri), uri, "TinyNet")
    width, dim = state_dict["conv.weight"].shape[0], state_dict["head.weight"].shape[0]
    model = TinyNet(TinyNetConfig(width=width, dim=dim))
    load_strict(model, state_dict, uri, "TinyNet")
    return model.eval()
"""

TINYNET_KIND = """    "tinynet": ModelKind(
        files={"tinynet": "tinynet.pt"},
        python_type="unmask_core.models.tinynet.TinyNet",
        config_class=TinyNetConfig,
        build=TinyNet,
        network="TinyNet",
        public_formats=("a TinyNet state dict",),
        init_config=lambda size: TinyNetConfig(),
        public=PublicWeights("tinynet", "TinyNet state dict", load_tinynet),
    ),
"""

TINYNET_MATCHER_BUILDER = """def _build_tinynet(model_set, device):
    from unmask_core.matchers.networks import TorchMatcher

    model = model_set.frozen("tinynet")
    return TorchMatcher(
        "tinynet", "tinynet", model, 1.0, model.config.dim, True,
        model_set.sha256("tinynet"), _pretrained(model_set, "tinynet"), device,
    )


"""

TINYNET_MATCHER = """    "tinynet": MatcherSpec("TinyNet", "a throwaway matcher", _build_tinynet),
"""

# f0 learns to reproduce the masked face itself: nothing but the table says how.
THROWAWAY_STAGE = """    "masked_baseline": Stage(
        summary="f0 on M (a throwaway stage)",
        trains="baseline",
        starts_from="baseline",
        source="M",
        target="M",
        identity="M",
        latent_target=NO_LATENT_TARGET,
        periorbital=False,
        mask_kind=None,
        dataset=_pairs_dataset,
    ),
"""


def _insert(path: Path, anchor: str, text: str, after: bool = False) -> None:
    """`text` just before (or after) the one occurrence of `anchor` in `path`."""
    source = path.read_text()
    assert source.count(anchor) == 1, (path, anchor)
    where = source.index(anchor) + (len(anchor) if after else 0)
    path.write_text(source[:where] + text + source[where:])


def _add_table_entry(path: Path, table: str, entry: str) -> None:
    """`entry` as the last entry of the dict literal `table` in `path`."""
    source = path.read_text()
    end = source.index("\n}\n", source.index(f"{table}: dict[")) + 1
    path.write_text(source[:end] + entry + source[end:])


def _add_stage(root: Path) -> None:
    _add_table_entry(root / "unmask_core/training/stages.py", "STAGES", THROWAWAY_STAGE)


def _add_model_kind(root: Path) -> None:
    models = root / "unmask_core/models"
    (models / "tinynet.py").write_text(TINYNET_MODULE)
    (models / "public.py").write_text((models / "public.py").read_text() + TINYNET_LOADER)
    kinds = models / "kinds.py"
    _insert(
        kinds,
        "from unmask_core.models.stylegan2 import",
        "from unmask_core.models.public import load_tinynet\n"
        "from unmask_core.models.tinynet import TinyNet, TinyNetConfig\n",
    )
    _add_table_entry(kinds, "MODEL_KINDS", TINYNET_KIND)


def _add_matcher(root: Path) -> None:
    registry = root / "unmask_core/matchers/registry.py"
    _insert(registry, "MATCHERS: dict[", TINYNET_MATCHER_BUILDER)
    _add_table_entry(registry, "MATCHERS", TINYNET_MATCHER)


def _touched(root: Path) -> set[str]:
    """Files of the copy that differ from, or are not in, the repository."""
    touched = set()
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            relative = path.relative_to(root)
            original = REPO_ROOT / relative
            if not original.exists() or not filecmp.cmp(path, original, shallow=False):
                touched.add(relative.as_posix())
    return touched


def _named_files(section: str) -> list[str]:
    """The source files docs/extending.md names in a section (`<name>`: a new module of any name)."""
    text = (REPO_ROOT / "docs/extending.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    paths = re.findall(r"`([\w/<>.]+\.py)`", body)
    assert paths, section
    return paths


def _not_named(touched: set[str], *sections: str) -> list[str]:
    """The touched files that the sections do not name: an existing file must be named as it is, a new
    one may match a `<name>` path."""
    named = [path for section in sections for path in _named_files(section)]
    new_modules = [
        re.compile(re.escape(p).replace(re.escape("<name>"), r"\w+") + "$") for p in named if "<" in p
    ]
    return sorted(
        path
        for path in touched
        if path not in named
        and not (not (REPO_ROOT / path).exists() and any(p.match(path) for p in new_modules))
    )


# ---------------------------------------------------------------- the run, in the copy's own process

SCRIPT = """
import json, sys

import numpy as np
import torch

from unmask_core import cli, shards, storage
from unmask_core.models.format import torch_save
from unmask_core.models.model_set import ModelSet
from unmask_core.models.tinynet import TinyNet, TinyNetConfig
from unmask_core.training.batches import decode_batch
from unmask_core.training.checks import check_training_inputs
from unmask_core.training.config import TrainConfig
from unmask_core.training.loop import build_training_models, training_step

args = json.loads(sys.argv[1])
out = {"init": cli.main(["models", "init", "--size", "64", "--output", args["init_set"]])}

torch.manual_seed(5)
public = TinyNet(TinyNetConfig(width=8, dim=16)).eval()
torch_save(public.state_dict(), args["tinynet"])
out["import"] = cli.main(
    ["models", "import", "--output", args["imported_set"], "--psp", args["psp"], "--irse50", args["irse50"],
     "--facenet", args["facenet"], "--tinynet", args["tinynet"]]
)
faces = torch.rand(2, 3, 112, 112) * 2 - 1
with torch.no_grad():
    imported = ModelSet(args["imported_set"]).frozen("tinynet")
    out["imported_computes_the_public_weights"] = bool(torch.equal(imported(faces), public(faces)))

out["evaluate"] = cli.main(
    ["evaluate", "--pairs", args["pairs"], "--models", args["init_set"], "--output", args["report"],
     "--matchers", "tinynet,facenet"]
)

cfg = TrainConfig(
    stage="masked_baseline", pairs=args["pairs"], models=args["init_set"], output=args["run"],
    lpips_backbone="random", batch_size=2,
)
check_training_inputs(cfg)
stage_help = TrainConfig.__dataclass_fields__["stage"].metadata["help"]
out["stage_in_help"] = "masked_baseline: f0 on M" in stage_help
out["stage_latent_weight"] = cfg.latent_weight
rows = shards.read_rows(storage.join(args["pairs"], "pairs"), columns=list(cfg.spec.images)).slice(0, 2)
batch = decode_batch({k: np.array(v, dtype=object) for k, v in rows.to_pydict().items()}, 64, cfg.stage)
out["stage_batch"] = sorted(batch)
parts = build_training_models(cfg, "cpu")
loss, terms = training_step(
    cfg.stage, {k: torch.from_numpy(v) for k, v in batch.items()}, parts.encoder, parts.generator,
    parts.teacher, parts.criterion,
)
loss.backward()
out["stage_terms"] = sorted(terms)
out["stage_teacher"] = parts.teacher is not None
out["stage_trains_f0"] = all(p.grad is not None for p in parts.encoder.parameters())
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def extended(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("extended")
    for package in PACKAGES:
        shutil.copytree(REPO_ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    touched = {}
    for recipe, add in (("stage", _add_stage), ("model kind", _add_model_kind), ("matcher", _add_matcher)):
        before = _touched(root)
        add(root)
        touched[recipe] = _touched(root) - before

    work = tmp_path_factory.mktemp("extended_work")
    torch.manual_seed(11)
    gen_cfg, enc_cfg, arc_cfg = model_set_configs(64)
    generator = Generator(gen_cfg).eval()
    psp = PSP(GradualStyleEncoder(enc_cfg), generator, generator.mean_latent(100), output_size=64).eval()
    files = {name: str(work / f"{name}.pt") for name in ("psp", "irse50", "facenet", "tinynet")}
    save_psp(psp, files["psp"])
    save_irse50(Backbone(arc_cfg).eval(), files["irse50"])
    save_facenet(new_facenet().eval(), files["facenet"])
    pairs = write_synthetic_pairs(str(work / "pairs"), n_identities=6, per_identity=2, size=64, seed=1)
    args = {
        **files,
        "pairs": pairs,
        **{name: str(work / name) for name in ("init_set", "imported_set", "report", "run")},
    }
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(args)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    return {"touched": touched, "result": result, "args": args}


def test_a_new_stage_touches_only_the_stage_table_and_trains(extended) -> None:
    assert extended["touched"]["stage"] == {"unmask_core/training/stages.py"}
    assert not _not_named(extended["touched"]["stage"], "Training stages")
    result = extended["result"]
    assert result["stage_in_help"] and result["stage_latent_weight"] == 0.0  # no latent target: no L_LR
    assert result["stage_batch"] == ["M"]  # only the images its entry reads are decoded
    assert result["stage_terms"] == ["id", "l2", "lpips"] and not result["stage_teacher"]
    assert result["stage_trains_f0"]


def test_a_new_model_kind_touches_only_the_files_its_recipe_names_and_is_initialised_and_imported(
    extended,
) -> None:
    touched = extended["touched"]["model kind"]
    assert touched == {
        "unmask_core/models/kinds.py",
        "unmask_core/models/public.py",
        "unmask_core/models/tinynet.py",
    }
    assert not _not_named(touched, "Model kinds")
    result, args = extended["result"], extended["args"]
    assert result["init"] == result["import"] == 0
    initialised = json.loads(Path(args["init_set"], "model_set.json").read_text())
    assert initialised["files"]["tinynet"] == "tinynet.pt" and "tinynet" in initialised["random_init"]
    assert "tinynet.pt" in initialised["file_checksums"]
    imported = json.loads(Path(args["imported_set"], "model_set.json").read_text())
    assert imported["imported_from"]["tinynet"] == args["tinynet"]
    assert result["imported_computes_the_public_weights"]


def test_a_matcher_with_weights_of_its_own_touches_only_the_files_its_recipes_name_and_evaluates(
    extended,
) -> None:
    touched = extended["touched"]["matcher"]
    assert touched == {"unmask_core/matchers/registry.py"}
    assert not _not_named(touched | extended["touched"]["model kind"], "Matchers", "Model kinds")
    result, args = extended["result"], extended["args"]
    assert result["evaluate"] == 0
    metrics = json.loads(Path(args["report"], "metrics.json").read_text())
    manifest = json.loads(Path(args["init_set"], "model_set.json").read_text())
    assert metrics["checkpoints"]["tinynet"] == manifest["sha256"]["tinynet"]
    aucs = metrics["matchers"]["tinynet"]
    assert aucs and all(0.0 <= value <= 1.0 for value in aucs.values())
    assert metrics["weights"]["tinynet"]["pretrained"] is False  # `models init` wrote it at random
