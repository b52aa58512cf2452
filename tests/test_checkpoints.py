"""Checkpoints: public layouts round-trip strictly, our format is verified, bad files fail clearly,
and model sets (local and S3) load, save trained encoders and keep their hashes honest."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torchvision

from tests.support.model_sets import TINY_MODEL_SET_SEED
from tests.support.public_formats import save_facenet, save_irse50, save_psp, save_rosinality_generator
from unmask_core.errors import UserError
from unmask_core.models.encoder import EncoderConfig, GradualStyleEncoder
from unmask_core.models.format import (
    FORMAT,
    CheckpointError,
    read_checkpoint,
    save_checkpoint,
    state_dict_sha256,
)
from unmask_core.models.irse import Backbone, BackboneConfig
from unmask_core.models.kinds import load_module, model_files, save_module
from unmask_core.models.model_set import ModelSet, init_model_set, model_set_configs
from unmask_core.models.psp import PSP, LatentEncoder
from unmask_core.models.public import (
    infer_generator_config,
    init_encoder_from_irse50,
    load_facenet,
    load_irse50,
    load_lpips,
    load_psp,
    load_rosinality_generator,
)
from unmask_core.models.stylegan2 import Generator, GeneratorConfig


def tiny_generator(seed: int = 0, **config) -> Generator:
    torch.manual_seed(seed)
    defaults = dict(size=32, style_dim=16, n_mlp=2, max_channels=16)
    return Generator(GeneratorConfig(**{**defaults, **config})).eval()


def tiny_encoder(n_styles: int = 8, style_dim: int = 16, seed: int = 0) -> GradualStyleEncoder:
    torch.manual_seed(seed)
    config = EncoderConfig(
        input_size=32, n_styles=n_styles, style_dim=style_dim, units=(1, 1, 2, 1), widths=(8, 12, 16, 24)
    )
    return GradualStyleEncoder(config).eval()


def tiny_backbone(seed: int = 0) -> Backbone:
    torch.manual_seed(seed)
    return Backbone(
        BackboneConfig(input_size=32, units=(1, 2, 1, 1), widths=(8, 12, 16, 24), embedding_dim=32)
    ).eval()


def randomize_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    # Fresh BatchNorm statistics are 0/1; random ones make a lost buffer visible in the outputs.
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return module


def images(n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, size, size) * 2 - 1


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


# ---------------------------------------------------------------- public layouts round-trip


def test_rosinality_generator_round_trip(tmp_path: Path) -> None:
    g = tiny_generator()
    latent_avg = g.mean_latent(100)
    path = str(tmp_path / "stylegan2.pt")
    save_rosinality_generator(g, path, latent_avg)
    assert set(torch.load(path, weights_only=True)) == {"g_ema", "latent_avg"}
    loaded, loaded_avg = load_rosinality_generator(path)
    assert loaded.config == g.config  # inferred from the weights' shapes
    assert_same_weights(g, loaded)
    assert torch.equal(loaded_avg, latent_avg)
    w = torch.randn(2, g.n_latent, 16)
    with torch.no_grad():
        assert torch.equal(loaded(w), g(w))


def test_generator_config_inference_recovers_tapered_widths(tmp_path: Path) -> None:
    # channels min(32, 512 / res): 32 up to 16 px, 16 at 32 px, 8 at 64 px, as rosinality's table tapers.
    g = tiny_generator(size=64, max_channels=32, channel_multiplier=1 / 32)
    assert [g.config.channels(r) for r in (4, 16, 32, 64)] == [32, 32, 16, 8]
    assert infer_generator_config(g.state_dict()) == g.config


def test_psp_round_trip(tmp_path: Path) -> None:
    g = tiny_generator()
    psp = PSP(randomize_batchnorm(tiny_encoder()), g, g.mean_latent(100), output_size=32).eval()
    path = str(tmp_path / "psp.pt")
    save_psp(psp, path, opts={"dataset_type": "ffhq_encode"})
    saved = torch.load(path, weights_only=True)
    assert set(saved) == {"state_dict", "opts", "latent_avg"}
    assert {k.split(".", 1)[0] for k in saved["state_dict"]} == {"encoder", "decoder"}
    loaded = load_psp(path)
    assert loaded.encoder.config == psp.encoder.config
    assert loaded.decoder.config == psp.decoder.config
    assert_same_weights(psp, loaded)
    x = images()
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), psp.encode(x))
        assert torch.equal(loaded(x), psp(x))


def test_irse50_round_trip_and_encoder_body_init(tmp_path: Path) -> None:
    backbone = randomize_batchnorm(tiny_backbone())
    path = str(tmp_path / "model_ir_se50.pth")
    save_irse50(backbone, path)
    loaded = load_irse50(path)
    assert loaded.config == backbone.config
    x = images()
    with torch.no_grad():
        assert torch.equal(loaded(x), backbone(x))

    # pSp initialises its encoder's IR-SE body from the same file; the backbone's head is not used.
    encoder = GradualStyleEncoder(
        EncoderConfig(input_size=32, n_styles=8, style_dim=16, units=(1, 2, 1, 1), widths=(8, 12, 16, 24))
    )
    init_encoder_from_irse50(encoder, path)
    body = {k: v for k, v in backbone.state_dict().items() if k.startswith(("input_layer.", "body."))}
    for key, value in body.items():
        assert torch.equal(encoder.state_dict()[key], value), key
    with pytest.raises(CheckpointError) as err:
        init_encoder_from_irse50(tiny_encoder(), path)  # units (1, 1, 2, 1): body.2 is one stage later
    assert path in str(err.value) and "wrong shapes: body.2.res_layer" in str(err.value)


def test_a_file_in_torchs_legacy_format_loads_too(tmp_path: Path) -> None:
    # Local files are memory-mapped, which only the zip format allows; older public weights (IR-SE50
    # files from torch < 1.6) are in the legacy format and are read whole instead.
    backbone = randomize_batchnorm(tiny_backbone())
    path = str(tmp_path / "model_ir_se50.pth")
    torch.save(backbone.state_dict(), path, _use_new_zipfile_serialization=False)
    loaded, x = load_irse50(path), images()
    with torch.no_grad():
        assert torch.equal(loaded(x), backbone(x))


def facenet_model(seed: int = 0) -> torch.nn.Module:
    from facenet_pytorch import InceptionResnetV1

    torch.manual_seed(seed)
    return randomize_batchnorm(InceptionResnetV1(pretrained=None, classify=False)).eval()


def test_facenet_state_dict_loads_with_or_without_classifier(tmp_path: Path) -> None:
    model = facenet_model()
    x = images(2, 112)
    with torch.no_grad():
        expected = model(x)
    path = str(tmp_path / "facenet.pt")
    save_facenet(model, path)
    with torch.no_grad():
        assert torch.equal(load_facenet(path)(x), expected)
    # facenet-pytorch's released vggface2 weights carry an 8631-way classifier: it is dropped.
    released = dict(
        model.state_dict(), **{"logits.weight": torch.zeros(8631, 512), "logits.bias": torch.zeros(8631)}
    )
    torch.save(released, path)
    with torch.no_grad():
        assert torch.equal(load_facenet(path)(x), expected)


# ---------------------------------------------------------------- our format


def test_our_format_round_trips_every_kind_with_sha256(tmp_path: Path) -> None:
    g = tiny_generator()
    f = LatentEncoder(randomize_batchnorm(tiny_encoder()), g.mean_latent(100)).eval()
    modules = {
        "generator": g,
        "encoder": f,
        "arcface": randomize_batchnorm(tiny_backbone()),
        "facenet": facenet_model(),
    }
    inputs = {
        "generator": torch.randn(2, 8, 16),
        "encoder": images(),
        "arcface": images(),
        "facenet": images(2, 112),
    }
    for kind, module in modules.items():
        uri = str(tmp_path / f"{kind}.pt")
        sha = save_module(module, uri)
        ckpt = read_checkpoint(uri, kind)
        assert (ckpt.kind, ckpt.sha256) == (kind, sha)
        raw = torch.load(uri, weights_only=True)
        assert raw["format"] == FORMAT and raw["sha256"] == sha
        loaded = load_module(uri, kind)
        assert type(loaded) is type(module)
        with torch.no_grad():
            assert torch.equal(loaded(inputs[kind]), module(inputs[kind])), kind
    assert torch.equal(load_module(str(tmp_path / "encoder.pt")).latent_avg, f.latent_avg)
    with pytest.raises(TypeError, match="wrap the encoder as LatentEncoder"):
        save_module(f.encoder, str(tmp_path / "bare.pt"))


def test_sha256_is_deterministic_and_sensitive() -> None:
    g = tiny_generator()
    sd = g.state_dict()
    sha = state_dict_sha256(sd)
    assert sha == state_dict_sha256(dict(reversed(list(sd.items()))))  # key order does not matter
    assert sha == state_dict_sha256(tiny_generator().state_dict())
    changed = dict(sd)
    changed["conv1.noise.weight"] = sd["conv1.noise.weight"] + 1e-6
    assert state_dict_sha256(changed) != sha
    retyped = dict(sd, **{"conv1.noise.weight": sd["conv1.noise.weight"].double()})
    assert state_dict_sha256(retyped) != sha


def test_encoder_sha256_covers_latent_avg(tmp_path: Path) -> None:
    encoder = tiny_encoder()
    a = save_module(LatentEncoder(encoder, torch.zeros(16)), str(tmp_path / "a.pt"))
    b = save_module(LatentEncoder(encoder, torch.ones(16)), str(tmp_path / "b.pt"))
    assert a != b


# ---------------------------------------------------------------- bad files fail with one clear line


@pytest.fixture
def generator_file(tmp_path: Path) -> str:
    uri = str(tmp_path / "generator.pt")
    save_module(tiny_generator(), uri)
    return uri


def _touch(path: str) -> None:
    Path(path).touch()


class CodeNotWeights:
    def __init__(self, flag: str) -> None:
        self.flag = flag

    def __reduce__(self):
        return (_touch, (self.flag,))


def test_truncated_file_is_a_checkpoint_error(generator_file: str) -> None:
    data = Path(generator_file).read_bytes()
    Path(generator_file).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        load_module(generator_file)
    assert generator_file in str(err.value)
    Path(generator_file).write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_rosinality_generator(generator_file)


def test_pickle_that_is_not_weights_is_refused_without_running_it(tmp_path: Path) -> None:
    flag = tmp_path / "code-ran"
    path = str(tmp_path / "evil.pt")
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": CodeNotWeights(str(flag))}, path)
    for load in (load_module, load_irse50, load_facenet, load_psp):
        with pytest.raises(CheckpointError, match="not weights") as err:
            load(path)
        assert path in str(err.value) and "_touch" in str(err.value)
    assert not flag.exists()


def test_missing_and_unexpected_keys_are_named(tmp_path: Path) -> None:
    g = tiny_generator()
    sd = g.state_dict()
    sd["style.1.weight_renamed"] = sd.pop("style.1.weight")
    uri = str(tmp_path / "renamed.pt")
    save_checkpoint(uri, "generator", asdict(g.config), sd)
    with pytest.raises(CheckpointError) as err:
        load_module(uri)
    message = str(err.value)
    assert uri in message and "missing keys: style.1.weight" in message
    assert "unexpected keys: style.1.weight_renamed" in message
    assert "\n" not in message

    rosinality = str(tmp_path / "rosinality.pt")
    sd = g.state_dict()
    del sd["to_rgbs.1.bias"]
    torch.save({"g_ema": sd}, rosinality)
    with pytest.raises(CheckpointError, match="missing keys: to_rgbs.1.bias") as err:
        load_rosinality_generator(rosinality)
    assert rosinality in str(err.value)


def test_wrong_shapes_are_named(tmp_path: Path) -> None:
    g = tiny_generator()
    uri = str(tmp_path / "generator.pt")
    save_checkpoint(
        uri,
        "generator",
        asdict(GeneratorConfig(size=32, style_dim=16, n_mlp=2, max_channels=8)),
        g.state_dict(),
    )
    with pytest.raises(CheckpointError, match="wrong shapes: ") as err:
        load_module(uri)
    assert uri in str(err.value) and "input.input [1, 16, 4, 4] (model [1, 8, 4, 4])" in str(err.value)

    backbone = tiny_backbone()
    sd = backbone.state_dict()
    sd["output_layer.3.bias"] = torch.zeros(5)
    path = str(tmp_path / "model_ir_se50.pth")
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"output_layer.3.bias \[5\] \(model \[32\]\)"):
        load_irse50(path)


def test_sha256_mismatch_is_detected(generator_file: str) -> None:
    payload = torch.load(generator_file, weights_only=True)
    payload["state_dict"]["input.input"].add_(1e-3)
    torch.save(payload, generator_file)
    with pytest.raises(CheckpointError, match="sha256 mismatch") as err:
        read_checkpoint(generator_file)
    assert generator_file in str(err.value)


def test_wrong_format_kind_and_missing_file(generator_file: str, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="holds a 'generator' model, expected 'encoder'"):
        read_checkpoint(generator_file, "encoder")
    raw = str(tmp_path / "raw.pt")
    torch.save(tiny_generator().state_dict(), raw)
    with pytest.raises(CheckpointError, match="not an unmask checkpoint") as err:
        load_module(raw)
    assert raw in str(err.value)
    with pytest.raises(CheckpointError, match="needs keys \\['g_ema'\\]"):
        load_rosinality_generator(raw)
    with pytest.raises(CheckpointError, match="no such file"):
        load_module(str(tmp_path / "absent.pt"))
    assert issubclass(CheckpointError, UserError)


# ---------------------------------------------------------------- LPIPS


@pytest.fixture(scope="module")
def alexnet_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("lpips") / "alexnet.pth"
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)
    return str(path)


def test_lpips_uses_alexnet_weights_from_the_file(alexnet_file: str) -> None:
    features = torch.load(alexnet_file, weights_only=True)
    model = load_lpips(alexnet_file)
    for index, slice_index in ((0, 1), (3, 2), (6, 3), (8, 4), (10, 5)):
        layer = getattr(getattr(model.net, f"slice{slice_index}"), str(index))
        assert torch.equal(layer.weight, features[f"features.{index}.weight"])
        assert torch.equal(layer.bias, features[f"features.{index}.bias"])
    x, y = images(2, 64), images(2, 64)
    with torch.no_grad():
        assert model(x, x).abs().max() == 0
        assert (model(x, y) > 0).all()
        assert load_lpips(alexnet_file, spatial=True)(x, y).shape == (2, 1, 64, 64)
    assert not any(p.requires_grad for p in model.parameters())


def test_lpips_random_backbone_only_when_asked_and_bad_file_named(alexnet_file: str, tmp_path: Path) -> None:
    random_model = load_lpips(None)
    file_model = load_lpips(alexnet_file)
    assert not torch.equal(random_model.net.slice1[0].weight, file_model.net.slice1[0].weight)
    features = torch.load(alexnet_file, weights_only=True)
    del features["features.10.weight"]
    broken = str(tmp_path / "broken.pth")
    torch.save(features, broken)
    with pytest.raises(CheckpointError, match="missing keys: features.10.weight") as err:
        load_lpips(broken)
    assert broken in str(err.value)


# ---------------------------------------------------------------- model sets


def test_init_model_set_writes_the_documented_layout(tiny_model_set: str) -> None:
    uri = tiny_model_set
    manifest = json.loads((Path(uri) / "model_set.json").read_text())
    files = {p.name for p in Path(uri).iterdir()}
    assert files == {
        "generator.pt",
        "baseline_encoder.pt",
        "unmask_encoder.pt",
        "arcface_irse.pt",
        "facenet.pt",
        "model_set.json",
    }
    assert (manifest["size"], manifest["image_size"], manifest["n_latent"]) == (64, 64, 10)
    for name, filename in manifest["files"].items():
        assert read_checkpoint(str(Path(uri) / filename)).sha256 == manifest["sha256"][name]
    assert manifest["sha256"]["unmask"] == manifest["sha256"]["baseline"]  # f starts as f0
    with pytest.raises(UserError, match="already holds a model set"):
        init_model_set(64, uri)


def test_model_set_accessors(tiny_model_set: str) -> None:
    uri = tiny_model_set
    models = ModelSet(uri)
    manifest = models.manifest
    assert (models.size, models.image_size, models.n_latent) == (64, 64, 10)
    g = models.generator()
    assert g is models.generator() and not any(p.requires_grad for p in g.parameters())
    f = models.encoder("unmask")
    assert f is not models.encoder("unmask") and all(p.requires_grad for p in f.parameters())
    f0 = models.encoder("baseline")
    x = images(2, 64)
    with torch.no_grad():
        codes = f(x)
        assert codes.shape == (2, 10, 128)
        torch.testing.assert_close(codes, f.encoder(x) + f0.latent_avg)
        torch.testing.assert_close(models.psp("unmask")(x), g(codes))
        assert models.arcface()(torch.rand(2, 3, 112, 112)).shape == (2, 512)
        assert models.facenet()(torch.rand(2, 3, 112, 112)).shape == (2, 512)
    assert models.sha256("generator") == manifest["sha256"]["generator"]
    assert models.sha256("unmask") == manifest["sha256"]["unmask"]
    assert models.sha256("baseline") == manifest["sha256"]["baseline"]
    assert models.frozen("facenet") is models.facenet()
    assert models.optional_file("arcface_onnx") is None
    assert models.has("facenet") and models.has("unmask") and not models.has("arcface_onnx")
    with pytest.raises(KeyError):  # f has one name
        models.sha256("encoder")
    with pytest.raises(KeyError):
        models.encoder("generator")
    with pytest.raises(CheckpointError, match="not a model set"):
        ModelSet(str(Path(uri).parent / "nowhere"))


def test_tiny_set_is_cheap_enough_for_cpu_tests(tiny_model_set: str) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    models = ModelSet(tiny_model_set)
    g, f = models.generator(), models.encoder()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        assert g(f(images(8, 64))).shape == (8, 3, 64, 64)
    # A FLOP budget, not a stopwatch (the test machines are shared): 8 GFLOP per batch of 8 is
    # about 0.2 s on an idle 2-core CPU (bench/flops.py), against ~1700 GFLOP at the reference size.
    assert counter.get_total_flops() < 8e9


def test_save_encoder_to_a_new_folder_then_in_place(tiny_model_set: str, tmp_path: Path) -> None:
    source_uri = tiny_model_set
    models = ModelSet(source_uri)
    manifest = models.manifest
    f0 = models.encoder("baseline")
    with torch.no_grad():
        for p in f0.parameters():
            p.add_(0.01)
    out = str(tmp_path / "trained")
    trained = models.save_encoder("baseline", f0, out)
    assert trained.sha256("baseline") != manifest["sha256"]["baseline"]
    for name in ("generator", "unmask", "arcface", "facenet"):
        assert trained.sha256(name) == manifest["sha256"][name]
        assert (Path(out) / model_files()[name]).read_bytes() == (
            Path(source_uri) / model_files()[name]
        ).read_bytes()
    assert "baseline" not in trained.manifest["random_init"]
    assert ModelSet(source_uri).sha256("baseline") == manifest["sha256"]["baseline"]  # source untouched
    x = images(2, 64)
    with torch.no_grad():
        assert torch.equal(trained.encoder("baseline")(x), f0(x))

    # A bare GradualStyleEncoder keeps the set's latent_avg; saving in place rewrites only that file.
    f = trained.encoder("unmask")
    with torch.no_grad():
        f.encoder.styles.coarse_linear_bias.add_(1.0)  # style 0 is a coarse head
    again = trained.save_encoder("unmask", f.encoder, out)
    assert again.sha256("unmask") != manifest["sha256"]["unmask"]
    assert again.sha256("baseline") == trained.sha256("baseline")
    assert torch.equal(again.encoder("unmask").latent_avg, f.latent_avg)
    with pytest.raises(UserError, match="codes"):
        again.save_encoder("unmask", LatentEncoder(tiny_encoder(n_styles=8), torch.zeros(16)), out)


def _as_written_before(uri: str, change) -> None:
    """Rewrite the manifest of the set at `uri` with `change(manifest)`, as an older writer left it."""
    manifest = json.loads((Path(uri) / "model_set.json").read_text())
    change(manifest)
    (Path(uri) / "model_set.json").write_text(json.dumps(manifest))


def test_a_set_that_keeps_f_in_encoder_pt_loads_checks_and_trains_under_its_own_names(
    tiny_model_set: str, tmp_path: Path
) -> None:
    """Sets written before f had one name hold it in encoder.pt (manifest files and file_checksums)."""
    uri = str(tmp_path / "old")
    shutil.copytree(tiny_model_set, uri)
    (Path(uri) / "unmask_encoder.pt").rename(Path(uri) / "encoder.pt")

    def old_names(manifest: dict) -> None:
        manifest["files"]["unmask"] = "encoder.pt"
        manifest["file_checksums"]["encoder.pt"] = manifest["file_checksums"].pop("unmask_encoder.pt")

    _as_written_before(uri, old_names)
    ModelSet(uri, device="meta").validate()  # sizes against the checksums, headers only
    models = ModelSet(uri)
    f = models.encoder("unmask")
    assert models.sha256("unmask") == ModelSet(tiny_model_set).sha256("unmask")
    with torch.no_grad():
        f.encoder.latlayer1.bias.add_(1.0)
    trained = models.save_encoder("unmask", f, str(tmp_path / "trained"))
    assert trained.file_uri("unmask").endswith("/encoder.pt")
    assert not (tmp_path / "trained" / "unmask_encoder.pt").exists()
    again = models.save_encoder("unmask", f, uri)  # in place: the same file, its checksum updated
    assert {p.name for p in Path(uri).iterdir()} == {p.name for p in (tmp_path / "trained").iterdir()}
    assert "unmask_encoder.pt" not in {p.name for p in Path(uri).iterdir()}
    assert again.manifest["files"]["unmask"] == "encoder.pt"
    ModelSet(uri, device="meta").validate()
    with torch.no_grad():
        x = images(2, 64)
        assert torch.equal(ModelSet(uri).encoder("unmask")(x), f(x))


def test_a_set_written_before_a_model_kind_existed_opens_and_names_what_it_lacks(
    tiny_model_set: str, tmp_path: Path
) -> None:
    uri = str(tmp_path / "older")
    shutil.copytree(tiny_model_set, uri)
    (Path(uri) / "facenet.pt").unlink()

    def without_facenet(manifest: dict) -> None:
        for key in ("files", "sha256"):
            del manifest[key]["facenet"]
        del manifest["file_checksums"]["facenet.pt"]

    _as_written_before(uri, without_facenet)
    models = ModelSet(uri)
    models.validate()
    assert models.has("arcface") and not models.has("facenet")
    with pytest.raises(CheckpointError, match=r"model_set.json: the set holds no 'facenet' model") as err:
        models.facenet()
    assert "\n" not in str(err.value)
    with pytest.raises(KeyError):
        models.sha256("vggface")  # not a model kind at all


def test_model_set_rejects_a_file_replaced_behind_its_back(tiny_model_set: str, tmp_path: Path) -> None:
    uri = str(tmp_path / "copy")
    shutil.copytree(tiny_model_set, uri)
    models = ModelSet(uri)
    other = models.encoder("baseline")
    with torch.no_grad():
        other.encoder.latlayer1.bias.add_(1.0)
    save_module(other, str(Path(uri) / "unmask_encoder.pt"))  # a valid checkpoint, not the recorded one
    with pytest.raises(CheckpointError, match="model_set.json") as err:
        models.encoder("unmask")
    assert "unmask_encoder.pt" in str(err.value)


def test_model_set_on_s3_is_deterministic_per_seed(tiny_model_set: str, bucket: str) -> None:
    local_uri, local_manifest = tiny_model_set, ModelSet(tiny_model_set).manifest
    uri = f"{bucket}/models/set64"
    manifest = init_model_set(64, uri, seed=TINY_MODEL_SET_SEED)
    assert json.loads(json.dumps(manifest)) == ModelSet(uri).manifest  # init returns what it wrote
    assert manifest["sha256"] == local_manifest["sha256"]
    remote, local = ModelSet(uri), ModelSet(local_uri)
    w = torch.randn(2, 10, 128)
    with torch.no_grad():
        assert torch.equal(remote.generator()(w), local.generator()(w))
    f = remote.encoder("unmask")
    with torch.no_grad():
        f.encoder.latlayer2.bias.add_(0.5)
    saved = remote.save_encoder("unmask", f, uri)  # in place, on S3
    assert ModelSet(uri).sha256("unmask") == saved.sha256("unmask") != local_manifest["sha256"]["unmask"]
    x = images(2, 64)
    with torch.no_grad():
        assert torch.equal(ModelSet(uri).encoder("unmask")(x), f(x))


def test_reference_size_configs() -> None:
    for size, n_latent in ((256, 14), (1024, 18)):
        generator, encoder, arcface = model_set_configs(size)
        assert (generator.size, generator.n_latent, generator.style_dim) == (size, n_latent, 512)
        assert (encoder.input_size, encoder.n_styles, encoder.widths) == (256, n_latent, (64, 128, 256, 512))
        assert arcface == BackboneConfig()
    with pytest.raises(UserError):
        model_set_configs(128)
