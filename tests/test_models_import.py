"""`unmask models import`: public checkpoint files become a model set that computes what they compute."""

from __future__ import annotations

import pytest
import torch

from tests.support.public_formats import save_facenet, save_irse50, save_psp, save_rosinality_generator
from unmask_core import cli
from unmask_core.models.encoder import GradualStyleEncoder
from unmask_core.models.irse import Backbone
from unmask_core.models.model_set import ModelSet, model_set_configs
from unmask_core.models.psp import PSP
from unmask_core.models.public import new_facenet
from unmask_core.models.stylegan2 import Generator


@pytest.fixture(scope="module")
def public_files(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("public")
    torch.manual_seed(11)
    gen_cfg, enc_cfg, arc_cfg = model_set_configs(64)
    generator = Generator(gen_cfg).eval()
    latent_avg = generator.mean_latent(1000)
    psp = PSP(GradualStyleEncoder(enc_cfg), generator, latent_avg, output_size=64).eval()
    other = Generator(gen_cfg).eval()
    arcface = Backbone(arc_cfg).eval()
    facenet = new_facenet().eval()
    files = {
        k: str(folder / name)
        for k, name in [
            ("psp", "psp.pt"),
            ("generator", "g.pt"),
            ("irse50", "ir.pth"),
            ("facenet", "facenet.pt"),
        ]
    }
    save_psp(psp, files["psp"])
    save_rosinality_generator(other, files["generator"], latent_avg)
    save_irse50(arcface, files["irse50"])
    save_facenet(facenet, files["facenet"])
    return {"files": files, "psp": psp, "other": other, "arcface": arcface, "facenet": facenet}


def test_import_from_psp_reproduces_its_outputs(public_files, tmp_path) -> None:
    files, out = public_files["files"], str(tmp_path / "set")
    argv = [
        "models",
        "import",
        "--output",
        out,
        "--psp",
        files["psp"],
        "--irse50",
        files["irse50"],
        "--facenet",
        files["facenet"],
    ]
    assert cli.main(argv) == 0
    models = ModelSet(out)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        psp = public_files["psp"]
        assert torch.allclose(models.encoder("baseline")(x), psp.encode(x), atol=1e-5)
        assert torch.allclose(models.encoder("unmask")(x), psp.encode(x), atol=1e-5)  # f starts as f0
        assert torch.allclose(models.generator()(psp.encode(x)), psp(x), atol=1e-4)
        faces = torch.rand(2, 3, 112, 112) * 2 - 1
        assert torch.allclose(models.arcface()(faces), public_files["arcface"](faces), atol=1e-5)
        assert torch.allclose(models.facenet()(faces), public_files["facenet"](faces), atol=1e-5)
    assert models.manifest["imported_from"]["psp"] == files["psp"]


def test_a_rosinality_generator_overrides_the_psp_decoder(public_files, tmp_path) -> None:
    files, out = public_files["files"], str(tmp_path / "set")
    argv = [
        "models",
        "import",
        "--output",
        out,
        "--psp",
        files["psp"],
        "--generator",
        files["generator"],
        "--irse50",
        files["irse50"],
        "--facenet",
        files["facenet"],
    ]
    assert cli.main(argv) == 0
    codes = torch.randn(1, public_files["other"].n_latent, public_files["other"].style_dim)
    with torch.no_grad():
        assert torch.allclose(ModelSet(out).generator()(codes), public_files["other"](codes), atol=1e-5)


def test_a_wrong_file_is_one_clear_error(public_files, tmp_path, capsys) -> None:
    files = public_files["files"]
    argv = [
        "models",
        "import",
        "--output",
        str(tmp_path / "set"),
        "--psp",
        files["irse50"],
        "--irse50",
        files["irse50"],
        "--facenet",
        files["facenet"],
    ]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and files["irse50"] in err[0]
