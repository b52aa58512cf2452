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
    args = parser.parse_args(argv)

    storage.check_writable(args.out)
    from unmask_core.models.checkpoints import init_model_set  # heavy: torch and the model code

    manifest = init_model_set(args.size, args.out, seed=args.seed)
    print(json.dumps(manifest, indent=2))
    print(f"Model set written to {args.out} (randomly initialised: outputs are not meaningful faces).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
