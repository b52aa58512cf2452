"""`unmask models init|import|checksum`: a randomly initialised model set, one converted from public
checkpoints, or an older set's manifest completed with its files' sizes and sha256s."""

from __future__ import annotations

from dataclasses import asdict, dataclass, make_dataclass

from unmask_core import storage
from unmask_core.cli import job_process
from unmask_core.config import (
    EXIT_CODES,
    JobArgumentParser,
    JobConfig,
    add_config_arguments,
    build_config,
    option,
)
from unmask_core.models.kinds import MODEL_KINDS, model_files, public_weights


@dataclass
class ModelsInitConfig(JobConfig):
    output: str = option("", "output folder, local or s3://bucket/prefix", required=True)
    size: int = option(64, "image size: 64 is a tiny set that runs fast on CPU", choices=[64, 256, 1024])
    seed: int = option(0, "random seed")


@dataclass
class _ModelsImportBase(JobConfig):
    output: str = option("", "output folder, local or s3://bucket/prefix", required=True)
    generator: str = option("", "rosinality StyleGAN2 checkpoint {'g_ema', 'latent_avg'}")
    psp: str = option("", "pSp checkpoint (encoder + decoder + latent_avg): f0")
    unmask_psp: str = option("", "pSp-format checkpoint of an unmasking encoder f")
    arcface_onnx: str = option("", "insightface ArcFace ONNX (the arcface matcher)")
    lpips_alexnet: str = option("", "torchvision AlexNet state dict (LPIPS backbone)")


# Every other model comes from one public file, by its kind's import option (models/kinds.py).
ModelsImportConfig = make_dataclass(
    "ModelsImportConfig",
    [(p.option, str, option("", p.help, required=True)) for p in public_weights().values()],
    bases=(_ModelsImportBase,),
)


@dataclass
class ModelsChecksumConfig(JobConfig):
    models: str = option("", "model set folder, local or s3://bucket/prefix", required=True)


ACTIONS = {
    "init": (
        ModelsInitConfig,
        "write a randomly initialised model set (for smoke tests, the demo, trying the pipeline)",
        "Write a randomly initialised model set in our checkpoint format. 64 px is a tiny set that runs "
        "fast on CPU; 256 and 1024 are the reference architectures.",
    ),
    "import": (
        ModelsImportConfig,
        "build a model set from public checkpoints ("
        + "; ".join(f for kind in MODEL_KINDS.values() for f in kind.public_formats)
        + ")",
        "Convert the public checkpoints into a model set in our format (one file per model with its "
        "config and sha256). Give --psp, or --generator (then f0 starts from pSp's IR-SE50 init).",
    ),
    "checksum": (
        ModelsChecksumConfig,
        "add file sizes and sha256s to the manifest of a set written before manifests had them",
        "Record each file's size and sha256 in model_set.json, as `init` and `import` do: the bulk job "
        "checks a set against them without reading its weights, and each node downloads each file once. "
        "Reads each file once and checks its weights against the manifest first.",
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = JobArgumentParser(
        prog="unmask models", description=f"Model sets ({', '.join(model_files())})", epilog=EXIT_CODES
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="{" + ",".join(ACTIONS) + "}")
    for action, (cls, short, long) in ACTIONS.items():
        add_config_arguments(sub.add_parser(action, help=short, description=long, epilog=EXIT_CODES), cls)
    namespace = parser.parse_args(argv)
    cfg = build_config(ACTIONS[namespace.action][0], namespace)

    if isinstance(cfg, ModelsChecksumConfig):
        from unmask_core.models.importer import add_checksums

        manifest = add_checksums(cfg.models)
        print(f"{describe(manifest)}\nChecksums recorded in {storage.join(cfg.models, 'model_set.json')}.")
        return 0
    if isinstance(cfg, ModelsImportConfig):  # every checkpoint readable before anything loads or is written
        sources = {k: v for k, v in asdict(cfg).items() if k != "output"}
        for uri in filter(None, sources.values()):
            storage.check_readable(uri)
    storage.check_writable(cfg.output)
    if isinstance(cfg, ModelsInitConfig):
        from unmask_core.models.model_set import init_model_set

        manifest = init_model_set(cfg.size, cfg.output, seed=cfg.seed)
        note = "randomly initialised: outputs are not meaningful faces"
    else:
        from unmask_core.models.importer import import_public_model_set

        manifest = import_public_model_set(cfg.output, **sources)
        note = "imported from public checkpoints"
    print(describe(manifest))
    print(f"Model set written to {cfg.output} ({note}).")
    return 0


def describe(manifest: dict) -> str:
    """A model set's manifest in two lines for people (model_set.json holds the rest)."""
    random = set(manifest.get("random_init", []))
    models = [
        f"{name} ({'random' if name in random else 'pretrained'})" for name in sorted(manifest["sha256"])
    ]
    checksums = len(manifest.get("file_checksums", {}))
    return (
        f"{manifest['image_size']} px, {manifest['n_latent']} styles; models: {', '.join(models)}\n"
        f"file sizes and sha256 recorded for {checksums} files"
    )


if __name__ == "__main__":
    job_process("models", main)
