"""`unmask models init --size {64,256,1024} --out URI`: a randomly initialised model set."""

from __future__ import annotations

import argparse
import json

from unmask_core import storage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="unmask models", description="Model sets (generator, f0, f, ArcFace, FaceNet)"
    )
    sub = parser.add_subparsers(dest="action", required=True)
    init = sub.add_parser(
        "init",
        help="write a randomly initialised model set (for smoke tests, the demo, trying the pipeline)",
        description="Write a randomly initialised model set in our checkpoint format. "
        "64 px is a tiny set that runs fast on CPU; 256 and 1024 are the reference architectures.",
    )
    init.add_argument(
        "--size", type=int, choices=[64, 256, 1024], default=64, help="image size (default: 64)"
    )
    init.add_argument("--out", required=True, help="output folder, local or s3://bucket/prefix")
    init.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    imported = sub.add_parser(
        "import",
        help="build a model set from public checkpoints (StyleGAN2, pSp, IR-SE50, FaceNet, ...)",
        description="Convert the public checkpoints into a model set in our format (one file per model "
        "with its config and sha256). Give --psp, or --generator (then f0 starts from pSp's IR-SE50 init).",
    )
    imported.add_argument("--out", required=True, help="output folder, local or s3://bucket/prefix")
    imported.add_argument(
        "--generator", default="", help="rosinality StyleGAN2 checkpoint {'g_ema', 'latent_avg'}"
    )
    imported.add_argument("--psp", default="", help="pSp checkpoint (encoder + decoder + latent_avg): f0")
    imported.add_argument("--unmask-psp", default="", help="pSp-format checkpoint of an unmasking encoder f")
    imported.add_argument(
        "--irse50", required=True, help="model_ir_se50.pth (ArcFace IR-SE50 for the ID loss)"
    )
    imported.add_argument("--facenet", required=True, help="facenet-pytorch InceptionResnetV1 state dict")
    imported.add_argument("--arcface-onnx", default="", help="insightface ArcFace ONNX (the arcface matcher)")
    imported.add_argument(
        "--lpips-alexnet", default="", help="torchvision AlexNet state dict (LPIPS backbone)"
    )
    args = parser.parse_args(argv)

    storage.check_writable(args.out)
    if args.action == "init":
        from unmask_core.models.model_set import init_model_set  # heavy: torch and the model code

        manifest = init_model_set(args.size, args.out, seed=args.seed)
        note = "randomly initialised: outputs are not meaningful faces"
    else:
        from unmask_core.models.importer import import_public_model_set

        sources = {
            k: getattr(args, k)
            for k in ("generator", "psp", "unmask_psp", "irse50", "facenet", "arcface_onnx", "lpips_alexnet")
        }
        for uri in filter(None, sources.values()):
            storage.check_readable(uri)
        manifest = import_public_model_set(args.out, **sources)
        note = "imported from public checkpoints"
    print(json.dumps(manifest, indent=2))
    print(f"Model set written to {args.out} ({note}).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
