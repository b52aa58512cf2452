"""How the bulk job's driver-side costs grow with the number of inputs: the time from the command to the
first model call, the driver's peak RSS, and the S3 requests by kind, at N = 10k, 100k and 1M inputs,
for an S3 prefix, a local folder and a CSV manifest; and what a resume costs (it should list nothing).

The face-finding and unmask stages are replaced by probes: the first passes each input on as a
`no_face` row (with --read, after reading it through storage like the real stage does), the second
notes when it is first called. Everything else is the real job: the streamed plan, Ray Data, the
writer, the commits and the summary. S3 inputs come from bench/virtual_s3.py, an endpoint that serves
virtual keys (a million cannot be uploaded here); `--check N` runs the same job against SeaweedFS
with N uploaded keys beside it, and also counts the GETs that an S3 output's summary makes. Requests
are counted by local_s3.CountingProxy. Each job runs as its own process with its own local Ray.

    python -m bench.scale                                   # the table (10k, 100k, 1M; s3, folder, manifest)
    python -m bench.scale --sizes 10000,100000 --kinds s3   # a part of it
    python -m bench.scale --sizes 10000 --read              # with one real read per input (GETs per input)
    python -m bench.scale --check 100000                    # the virtual endpoint against SeaweedFS

Goals (issue 29): the first model call at 1M at most 1.5x that at 10k, and under 30 s; driver peak RSS
at 1M at most 1.2x that at 10k; ceil(N/1000) + a constant LIST requests on a fresh run, none on a
resume; one GET per input (--read); no GET per shard in the end-of-run summary (--check).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa

from bench.virtual_s3 import PAYLOAD, VirtualBucket, VirtualS3
from unmask_core import local_s3
from unmask_core.bulk import rows
from unmask_core.bulk.stages import FaceFindingStage, UnmaskingStage

REPO = Path(__file__).resolve().parent.parent
BUCKET, PREFIX = "gallery", "photos/"
FIRST_CALL_ENV, READ_ENV = "BENCH_SCALE_FIRST_CALL", "BENCH_SCALE_READ"
JOB_FLAGS = ["--actors", "1,1", "--cpu-actors", "1,2", "--batch-size", "1024", "--matchers", "arcface"]


# ---------------------------------------------------------------- the probes (in the job's actors)


class ProbeFaceFinding(FaceFindingStage):
    """Stands in for FaceFindingStage (with its resources): a `no_face` row per input, after one read
    with BENCH_SCALE_READ."""

    def __init__(self, cfg, detect: bool = True) -> None:
        self.cfg, self.read = cfg, os.environ.get(READ_ENV) == "1"

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        from unmask_core import storage

        out = []
        for shard, payload in zip(batch["shard"], batch["records"]):
            records = json.loads(payload)
            for record in records:
                if self.read:
                    storage.read_bytes(record["uri"], self.cfg.max_bytes, record["size"], record["version"])
                base = {"id": record["id"], "source_uri": record["uri"]}
                row = rows.error_row(base, "no_face", "probe")
                out += rows.of_input([row], shard=int(shard), shard_inputs=len(records))
        return rows.stage_table(out)


class ProbeUnmasking(UnmaskingStage):
    """Stands in for UnmaskingStage (with its resources): notes the time of its first call (the first
    model call)."""

    def __init__(self, cfg, find_faces: bool = False) -> None:
        self.first = True

    def __call__(self, table: pa.Table) -> pa.Table:
        if self.first:
            self.first = False
            try:  # the first call of any actor wins
                fd = os.open(os.environ[FIRST_CALL_ENV], os.O_WRONLY | os.O_CREAT | os.O_EXCL)
                os.write(fd, repr(time.time()).encode())
                os.close(fd)
            except FileExistsError:
                pass
        table = table.drop_columns(["face", *rows.IMAGE_COLUMNS])
        return table.append_column("unmasked", pa.nulls(table.num_rows, pa.binary()))


def run_job(argv: list[str], result_file: str) -> None:
    """One job with the probes (the child process): its summary and the driver's peak RSS."""
    from unmask_core.bulk import run
    from unmask_core.bulk.config import BulkConfig
    from unmask_core.config import build_config

    run.FaceFindingStage, run.UnmaskingStage = ProbeFaceFinding, ProbeUnmasking
    # When the driver got to its plan (checks, Ray and the model set done) and had it (first page).
    times = {"job_began": time.time()}
    plan = run.start

    def timed_start(*args, **kwargs):
        times["plan_began"] = time.time()
        began = plan(*args, **kwargs)
        times["plan_ready"] = time.time()
        return began

    run.start = timed_start
    parser = argparse.ArgumentParser()
    from unmask_core.config import add_config_arguments

    add_config_arguments(parser, BulkConfig)
    summary = run.run_bulk(build_config(BulkConfig, parser.parse_args(argv)))
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = {"summary": summary, "driver_peak_rss_mb": rss_mb, "times": times}
    Path(result_file).write_text(json.dumps(report))


# ---------------------------------------------------------------- inputs


def folder_input(root: Path, n: int) -> str:
    """n small files in folders of 1,000 (made once, kept between runs)."""
    folder, made = root / f"folder_{n}", root / f"folder_{n}.complete"  # the mark is no input
    if not made.exists():
        shutil.rmtree(folder, ignore_errors=True)
        for k in range(n):
            if k % 1000 == 0:
                (folder / f"{k // 1000:05d}").mkdir(parents=True)
            (folder / f"{k // 1000:05d}" / f"{k:08d}.jpg").write_bytes(PAYLOAD)
        made.write_text("")
    return str(folder)


def manifest_input(root: Path, n: int) -> str:
    """A CSV manifest of n rows naming virtual S3 keys."""
    path = root / f"manifest_{n}.csv"
    if not path.exists():
        virtual = VirtualBucket(BUCKET, PREFIX, n)
        with open(path, "w") as f:
            f.write("uri\n")
            f.writelines(f"s3://{BUCKET}/{virtual.key(k)}\n" for k in range(n))
    return str(path)


def upload(server: local_s3.S3Server, n: int) -> None:
    """n keys named as the virtual endpoint names them, into SeaweedFS (16 PUTs at a time)."""
    import boto3

    local_s3.create_bucket(server, BUCKET)
    client = boto3.client("s3", **{k.lower(): v for k, v in _boto_args(server).items()})
    virtual = VirtualBucket(BUCKET, PREFIX, n)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=BUCKET, Key=virtual.key(k), Body=PAYLOAD), range(n)))


def _boto_args(server: local_s3.S3Server) -> dict[str, str]:
    env = server.env()
    return {
        "endpoint_url": env["AWS_ENDPOINT_URL"],
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        "region_name": env["AWS_REGION"],
    }


# ---------------------------------------------------------------- one measurement


def measure(
    input_uri: str, output: str, models: str, endpoint: str, workdir: Path, read: bool, env: dict[str, str]
) -> dict:
    """A fresh run and its resume, through a counting proxy in front of `endpoint`."""
    first_call = workdir / "first_call"
    result = workdir / "result.json"
    argv = ["--input", input_uri, "--output", output, "--models", models, *JOB_FLAGS]
    command = [sys.executable, "-m", "bench.scale", "--job", str(result), "--", *argv]
    with local_s3.CountingProxy(endpoint) as proxy:
        job_env = {**env, "AWS_ENDPOINT_URL": proxy.endpoint, FIRST_CALL_ENV: str(first_call)}
        job_env.update({READ_ENV: "1"} if read else {})
        job_env.pop("RAY_ADDRESS", None)
        out = {}
        for attempt in ("fresh", "resume"):
            first_call.unlink(missing_ok=True)
            proxy.reset()
            began = time.time()
            with open(workdir / "job.log", "w") as log:
                job = subprocess.Popen(command, env=job_env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
                samples = _rss_samples(job)
            if job.wait() != 0:
                raise RuntimeError(f"{attempt} run failed:\n{(workdir / 'job.log').read_text()[-3000:]}")
            finished = time.time()
            report = json.loads(result.read_text())
            called = float(first_call.read_text()) if first_call.exists() else None
            counts, gets = proxy.counts(), proxy.gets_by_key()
            output_key = output.split("://", 1)[-1] + "/"
            out[attempt] = {
                "first_model_call_s": called - began if called else None,
                "driver_phases_s": {k: round(t - began, 2) for k, t in report["times"].items()},
                "total_s": finished - began,
                "driver_peak_rss_mb": report["driver_peak_rss_mb"],
                # The driver's RSS, sampled: when the first model call came, and every ~10% of the run.
                "driver_rss_at_first_call_mb": next((mb for t, mb, _ in samples if t >= called), None)
                if called
                else None,
                "driver_rss_mb_over_the_run": [mb for _, mb, _ in samples[:: max(1, len(samples) // 10)]],
                "driver_anon_peak_mb": max((anon for _, _, anon in samples), default=None),
                "driver_anon_mb_over_the_run": [a for _, _, a in samples[:: max(1, len(samples) // 10)]],
                "requests": dict(counts),
                "most_gets_of_an_input": max(
                    (v for k, v in gets.items() if not k.startswith(output_key)), default=0
                ),
                "output_gets": {k: v for k, v in gets.items() if k.startswith(output_key)},
                "summary": report["summary"],
            }
    return out


def _rss_samples(job: subprocess.Popen, every_s: float = 0.5) -> list[tuple[float, float, float]]:
    """(time, resident MB, of which the process's own (anonymous) MB) of the job's driver, every
    `every_s`, until it ends. The rest is mostly pages of Ray's object store that the driver read."""
    samples: list[tuple[float, float, float]] = []
    while job.poll() is None:
        try:
            status = Path(f"/proc/{job.pid}/status").read_text()
        except OSError:
            break
        kb = {
            line.split(":")[0]: int(line.split()[1]) for line in status.splitlines() if line.startswith("Rss")
        }
        kb["VmRSS"] = next(
            (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0
        )
        samples.append((time.time(), kb["VmRSS"] / 1024, kb.get("RssAnon", 0) / 1024))
        time.sleep(every_s)
    return samples


def measure_kind(kind: str, n: int, root: Path, models: str, read: bool, env: dict[str, str]) -> dict:
    output = root / "out"
    shutil.rmtree(output, ignore_errors=True)
    with VirtualS3(BUCKET, PREFIX, n) as virtual:
        if kind == "s3":
            input_uri = f"s3://{BUCKET}/{PREFIX}"
        elif kind == "folder":
            input_uri = folder_input(root, n)
        else:
            input_uri = manifest_input(root, n)
        return measure(input_uri, str(output), models, virtual.endpoint, root, read, env)


def check(n: int, root: Path, models: str, env: dict[str, str]) -> dict:
    """The virtual endpoint against SeaweedFS at n keys; and an S3 output's summary GETs."""
    server = local_s3.start(root / "seaweedfs")
    try:
        upload(server, n)
        real_env = {**env, **server.env()}
        real = measure(
            f"s3://{BUCKET}/{PREFIX}", str(root / "out_real"), models, server.endpoint, root, False, real_env
        )
        with VirtualS3(BUCKET, PREFIX, n) as virtual:
            fake = measure(
                f"s3://{BUCKET}/{PREFIX}",
                str(root / "out_virtual"),
                models,
                virtual.endpoint,
                root,
                False,
                env,
            )
        local_s3.create_bucket(server, "outputs")
        s3_out = measure(
            f"s3://{BUCKET}/{PREFIX}", "s3://outputs/run", models, server.endpoint, root, False, real_env
        )
        return {"seaweedfs": real, "virtual": fake, "s3_output": s3_out}
    finally:
        server.stop()


# ---------------------------------------------------------------- the table


COLUMNS = ["input", "N", "first model call", "driver peak RSS", "LIST", "GET", "HEAD", "other"]
COLUMNS += ["whole run", "resume: LIST, GET"]


def row(kind: str, n: int, runs: dict) -> str:
    fresh, resume = runs["fresh"], runs["resume"]
    requests = fresh["requests"]
    cells = [
        kind,
        f"{n:,}",
        f"{fresh['first_model_call_s']:.1f} s",
        f"{fresh['driver_peak_rss_mb']:.0f} MB",
        *(str(requests.get(kind, 0)) for kind in ("LIST", "GET", "HEAD")),
        str(sum(v for k, v in requests.items() if k not in ("LIST", "GET", "HEAD"))),
        f"{fresh['total_s']:.0f} s",
        f"{resume['requests'].get('LIST', 0)}, {resume['requests'].get('GET', 0)}",
    ]
    return "| " + " | ".join(cells) + " |"


def table(results: dict[str, dict[int, dict]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += [row(kind, n, runs) for kind, by_n in results.items() for n, runs in sorted(by_n.items())]
    lines.append("")
    for kind, by_n in results.items():
        sizes = sorted(by_n)
        if len(sizes) > 1:
            small, large = by_n[sizes[0]]["fresh"], by_n[sizes[-1]]["fresh"]
            call = large["first_model_call_s"] / small["first_model_call_s"]
            rss = large["driver_peak_rss_mb"] / small["driver_peak_rss_mb"]
            lines.append(
                f"- {kind}, {sizes[-1]:,} against {sizes[0]:,}: first model call {call:.2f}x, "
                f"driver peak RSS {rss:.2f}x"
            )
    return "\n".join(lines)


def section(results: dict[str, dict[int, dict]], args: argparse.Namespace) -> str:
    from bench.benchmarks_md import machine_description

    return (
        "## The bulk job's driver at scale (`bench/scale.py`)\n\n"
        f"Machine: {machine_description()}. `python -m bench.scale` (shard size {args.shard_size}): the "
        "real job with its face-finding and unmask stages replaced by probes, each job a process of its "
        "own with its own local Ray; S3 inputs from bench/virtual_s3.py's virtual keys, requests counted "
        "by local_s3.CountingProxy. First model call: seconds from the command to the unmask stage's "
        "first call. Goals (issue 29): first call at 1M at most 1.5x that at 10k and under 30 s; driver "
        "peak RSS at 1M at most 1.2x that at 10k; LIST = ceil(N/1000) + c on a fresh run, 0 on a resume.\n\n"
        + table(results)
        + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sizes", default="10000,100000,1000000", help="N, comma-separated")
    parser.add_argument("--kinds", default="s3,folder,manifest", help="input kinds: s3, folder, manifest")
    parser.add_argument("--read", action="store_true", help="read every input once (counts GETs per input)")
    parser.add_argument("--shard-size", type=int, default=64, help="the job's --shard-size (default 64)")
    parser.add_argument("--check", type=int, metavar="N", help="the virtual endpoint against SeaweedFS at N")
    parser.add_argument("--workdir", help="where inputs are made and kept (default: a temporary folder)")
    parser.add_argument("--json", help="also write every figure to this file")
    parser.add_argument("--job", help=argparse.SUPPRESS)  # the child process: one job, its result here
    args, rest = parser.parse_known_args()
    if args.job:
        run_job([a for a in rest if a != "--"], args.job)
        return
    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_REGION": "us-east-1",
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    JOB_FLAGS.extend(["--shard-size", str(args.shard_size)])
    models = str(root / "models")
    if not Path(models).exists():
        from unmask_core.models.model_set import init_model_set

        init_model_set(64, models, seed=0)
    from bench.benchmarks_md import LoadWatch, machine_description, update_section

    print(f"machine: {machine_description()}", flush=True)
    if args.check:
        found = check(args.check, root, models, env)
        print(json.dumps(found, indent=1, default=str))
        return
    results: dict[str, dict[int, dict]] = {}
    with LoadWatch() as load:
        for kind in args.kinds.split(","):
            for n in (int(x) for x in args.sizes.split(",")):
                print(f"{kind} {n:,} ...", flush=True)
                results.setdefault(kind, {})[n] = measure_kind(kind, n, root, models, args.read, env)
                print(table({kind: {n: results[kind][n]}}).splitlines()[2], flush=True)
    print(table(results))
    whole_table = (args.kinds, args.sizes) == (parser.get_default("kinds"), parser.get_default("sizes"))
    if whole_table and not args.read:  # BENCHMARKS.md's section
        update_section("scale", section(results, args), load)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
