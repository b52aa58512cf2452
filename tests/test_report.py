"""unmask_core.report: the paper's table, ROC figure, T/M/U selection and the self-contained HTML report,
which is opened in a real headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO_ROOT
from unmask_core import metrics, report

# ---------------------------------------------------------------- inputs


def _face(seed: int, size: int = 256) -> np.ndarray:
    """A cartoon face (skin ellipse, eyes, mouth) on a coloured background: enough structure for SSIM."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    image = np.empty((size, size, 3))
    image[...] = rng.uniform(40, 200, 3) * (0.6 + 0.4 * yy[..., None])
    skin = ((xx - 0.5) / 0.33) ** 2 + ((yy - 0.52) / 0.42) ** 2 < 1
    image[skin] = rng.uniform([170, 120, 90], [240, 190, 160])
    for cx in (0.37, 0.63):
        image[((xx - cx) / 0.06) ** 2 + ((yy - 0.42) / 0.03) ** 2 < 1] = (40, 30, 30)
    image[(np.abs(xx - 0.5) < 0.12) & (np.abs(yy - 0.72) < 0.015)] = (150, 50, 60)
    return image.clip(0, 255).astype(np.uint8)


def _masked(face: np.ndarray) -> np.ndarray:
    masked = face.copy()
    size = face.shape[0]
    masked[int(size * 0.55) : int(size * 0.9), int(size * 0.2) : int(size * 0.8)] = (90, 140, 200)
    return masked


def _unmasked(face: np.ndarray, seed: int, noise: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(face + rng.normal(0, noise, face.shape), 0, 255).astype(np.uint8)


def _sample_inputs(n_faces: int = 9) -> dict:
    faces = [_face(k) for k in range(n_faces)]
    unmasked = [_unmasked(f, k, noise=4 + 5 * k) for k, f in enumerate(faces)]
    psnrs = np.array([metrics.psnr(u, t) for u, t in zip(unmasked, faces)])
    chosen = report.select_triplets(psnrs, k_each=2)
    triplets = [
        report.Triplet(
            id=f"person_{i:02d}/person_{i:02d}_0001.jpg",
            T=faces[i],
            M=_masked(faces[i]),
            U=unmasked[i],
            psnr=float(psnrs[i]),
            ssim=metrics.ssim(unmasked[i], faces[i]),
            label=label,
        )
        for label, indices in chosen.items()
        for i in indices
    ]
    rng = np.random.default_rng(0)
    genuine = np.arange(400) < 200
    curves, aucs = {}, {}
    for matcher, strength in (("arcface", 1.0), ("facenet", 0.6)):
        curves[matcher], aucs[matcher] = {}, {}
        for k, setting in enumerate(metrics.SETTINGS):
            scores = rng.normal(size=400) + genuine * strength * (1 + 0.5 * k)
            fpr, tpr = metrics.roc_curve_points(scores, genuine)
            auc = metrics.roc_auc(scores, genuine)
            curves[matcher][setting] = (fpr, tpr, auc)
            aucs[matcher][setting] = auc
    checkpoints = {"encoder": "a" * 64, "generator": "0123456789abcdef" * 4}
    summary = {
        "matchers": aucs,
        "psnr": float(np.mean(psnrs)),
        "ssim": 0.71234,
        "masked_region_psnr": float("nan"),
        "n_images": n_faces,
        "n_identities": n_faces,
        "n_pairs": 400,
        "n_genuine": 200,
        "checkpoints": checkpoints,
    }
    config = {"pairs": "/data/pairs", "models": "/data/models", "matchers": ["arcface", "facenet"], "seed": 0}
    return {
        "metrics": summary,
        "curves": curves,
        "triplets": triplets,
        "config": config,
        "checkpoints": checkpoints,
        "note": "Demo models are untrained <for illustration>",
    }


@pytest.fixture(scope="module")
def sample():
    return _sample_inputs()


@pytest.fixture(scope="module")
def written(sample, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    files = report.write_report(str(out), **sample)
    return out, files


# ---------------------------------------------------------------- table and selection


def test_table_has_the_papers_columns_and_a_row_per_matcher():
    summary = {
        "matchers": {"arcface": {"MM": 0.931, "MT": 0.94, "UU": 0.959, "UT": 0.971, "TT": 0.984}},
        "ssim": 0.759,
        "psnr": 19.0,
    }
    summary["matchers"]["facenet"] = {"MM": 0.832, "UU": 0.868}
    lines = report.table_markdown(summary).strip().splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert cells[0] == ["Matcher", "MM", "MT", "UU", "UT", "TT", "SSIM", "PSNR"]
    assert cells[2] == ["ArcFace", "0.9310", "0.9400", "0.9590", "0.9710", "0.9840", "0.7590", "19.0000"]
    assert cells[3] == ["FaceNet", "0.8320", "—", "0.8680", "—", "—", "0.7590", "19.0000"]
    assert len(lines) == 4


def test_select_triplets_takes_best_median_and_worst_by_psnr():
    psnrs = np.array([17.0, 25.0, 12.0, 19.0, np.nan, 21.0, 15.0, 30.0, 18.0])
    chosen = report.select_triplets(psnrs, k_each=2)
    assert chosen["best"] == [7, 1]
    assert chosen["worst"] == [6, 2]
    # Ranked: 30 25 21 19 18 17 15 12 -> the middle two are 19 and 18.
    assert sorted(chosen["median"]) == [3, 8]
    assert 4 not in sum(chosen.values(), [])


def test_select_triplets_never_repeats_a_face_when_there_are_few():
    for n in range(0, 8):
        chosen = report.select_triplets(np.arange(n, dtype=float), k_each=2)
        picked = sum(chosen.values(), [])
        assert len(picked) == len(set(picked)) == min(n, 6)
        if n:
            assert chosen["best"][0] == n - 1


# ---------------------------------------------------------------- files


def test_roc_png_has_a_panel_per_matcher(sample):
    one, two = io.BytesIO(), io.BytesIO()
    report.plot_roc({"arcface": sample["curves"]["arcface"]}, one)
    report.plot_roc(sample["curves"], two)
    width_one, _ = Image.open(one).size
    width_two, _ = Image.open(two).size
    assert width_two == pytest.approx(2 * width_one, rel=0.02)


def test_write_report_writes_the_four_files(sample, written):
    out, files = written
    assert sorted(files) == sorted(report.FILES)
    for name, uri in files.items():
        assert Path(uri) == out / name and Path(uri).stat().st_size > 0
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["matchers"]["arcface"]["UU"] == pytest.approx(sample["metrics"]["matchers"]["arcface"]["UU"])
    assert saved["masked_region_psnr"] is None  # NaN is not JSON
    assert (out / "table.md").read_text() == report.table_markdown(sample["metrics"])
    assert Image.open(out / "roc.png").format == "PNG"
    rendered = report.render_report(**sample)
    assert rendered["report.html"] == (out / "report.html").read_bytes()  # the same bytes, no I/O inside


def _external_references(page: str) -> list[str]:
    refs = re.findall(r"""\b(?:src|href|srcset|action|poster|data)\s*=\s*["']?([^"'\s>]+)""", page, re.I)
    refs += re.findall(r"""url\(\s*["']?([^"')]+)""", page, re.I)
    refs += re.findall(r"@import\s+([^;]+)", page, re.I)
    external = [r for r in refs if not r.startswith(("data:", "#"))]
    external += re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", page, re.I)
    external += re.findall(r"<(?:link|iframe|object|embed)\b", page, re.I)
    external += re.findall(r"<script[^>]*\bsrc\b", page, re.I)
    return external


def test_report_html_is_self_contained(sample, written):
    out, _ = written
    page = (out / "report.html").read_text()
    assert _external_references(page) == []
    assert _external_references('<img src="https://cdn.example.com/x.png">')  # the check can fail
    images = re.findall(r'<img[^>]*src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 1 + 3 * len(sample["triplets"])
    decoded = [np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")) for data in images]
    # PNG is lossless: the grid must show exactly the arrays it was given, T, M, U per face, best first.
    order = sorted(sample["triplets"], key=lambda t: (report.LABEL_ORDER.index(t.label), -t.psnr))
    for k, t in enumerate(order):
        for j, image in enumerate((t.T, t.M, t.U)):
            np.testing.assert_array_equal(decoded[1 + 3 * k + j], image)
    assert "Demo models are untrained &lt;for illustration&gt;" in page  # the note, escaped
    for digest in sample["checkpoints"].values():
        assert digest in page
    assert "&quot;models&quot;: &quot;/data/models&quot;" in page  # the config as JSON
    for t in sample["triplets"]:
        assert t.id in page and f"{t.psnr:.2f}" in page


# ---------------------------------------------------------------- in a real browser

CHROMIUM = "/usr/bin/chromium"


def _chromium() -> str:
    """The Chromium binary. Under CI=true a missing browser is a failure, never a skip; elsewhere we try
    scripts/install_chromium.sh once and skip only if that cannot install it."""

    def find() -> str | None:
        if os.access(CHROMIUM, os.X_OK):
            return CHROMIUM
        return shutil.which("chromium")

    found = find()
    if found:
        return found
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{CHROMIUM} is missing: CI must run `bash scripts/install_chromium.sh` before the tests")
    subprocess.run(["bash", str(REPO_ROOT / "scripts" / "install_chromium.sh")], check=False, timeout=900)
    found = find()
    if not found:
        pytest.skip(f"{CHROMIUM} is missing and scripts/install_chromium.sh could not install it")
    return found


def _run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        binary,
        "--headless",
        "--no-sandbox",  # we run as root in containers
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        # Any attempt to reach the network fails, so a stray external reference breaks an image.
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
        *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"chromium failed ({result.returncode}): {result.stderr[-2000:]}"
    return result


def _image_counts(dom: str) -> tuple[int, int]:
    body = re.search(r"<body\b[^>]*>", dom)
    assert body, f"no <body> in the DOM chromium dumped: {dom[:300]!r}"
    ok = re.search(r'data-images-ok="(\d+)"', body.group(0))
    total = re.search(r'data-images-total="(\d+)"', body.group(0))
    assert ok and total, f"the page's image check did not run: {body.group(0)!r}"
    return int(ok.group(1)), int(total.group(1))


def test_report_opens_in_headless_chromium(sample, written, tmp_path):
    binary = _chromium()
    out, _ = written
    url = (out / "report.html").resolve().as_uri()
    # A broken image in the same template must show up in the count, or the check proves nothing.
    broken = tmp_path / "broken.html"
    broken.write_text(
        (out / "report.html")
        .read_text()
        .replace("data:image/png;base64,iVBOR", "data:image/png;base64,AAAA", 1)
    )
    shot = tmp_path / "report.png"
    runs = {
        "dom": ("--dump-dom", url),
        "broken": ("--dump-dom", broken.as_uri()),
        "shot": (f"--screenshot={shot}", "--window-size=1280,2000", "--hide-scrollbars", url),
    }
    # Three independent browsers at once: each spends most of its time starting up.
    with ThreadPoolExecutor(len(runs)) as pool:
        futures = {
            name: pool.submit(_run_chromium, binary, tmp_path / f"profile-{name}", *args)
            for name, args in runs.items()
        }
        results = {name: future.result() for name, future in futures.items()}

    expected_images = 1 + 3 * len(sample["triplets"])
    assert _image_counts(results["dom"].stdout) == (expected_images, expected_images)
    assert _image_counts(results["broken"].stdout) == (expected_images - 1, expected_images)

    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(np.int16)
    assert pixels.shape == (2000, 1280, 3)
    assert pixels.std() > 20, "the screenshot is blank"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 2000, "the screenshot has no images in it"
    # The header band is dark and the page below it light: the inline CSS was applied.
    assert pixels[:40].mean() < 110 and pixels[-200:].mean() > 180
    if os.environ.get("UNMASK_REPORT_SCREENSHOT"):  # to refresh docs/report.png by hand
        shutil.copy(shot, os.environ["UNMASK_REPORT_SCREENSHOT"])


def test_table_and_page_name_each_matchers_weights_as_pretrained_or_random():
    summary = {
        "matchers": {
            "facenet": {"MM": 0.5, "TT": 0.52},
            "dlib": {"MM": 0.971, "MT": 0.99, "TT": 1.0},
        },
        "weights": {
            "facenet": {"pretrained": False, "sha256": "f" * 64},
            "dlib": {"pretrained": True, "sha256": "d" * 64},
        },
    }
    lines = report.table_markdown(summary).strip().splitlines()
    assert lines[-3:] == [
        "Matcher weights:",
        f"- FaceNet: random, sha256 {'f' * 64}",
        f"- dlib ResNet: pretrained, sha256 {'d' * 64}",
    ]
    page = report.render_report(summary, {}, [], {}, {})["report.html"].decode()
    random_note = "random weights: these AUCs say nothing about faces"
    assert f'<span class="weights random">{random_note} <span class="hash">sha256 {"f" * 64}' in page
    assert f'<span class="weights pretrained">pretrained weights <span class="hash">sha256 {"d" * 64}' in page
    assert report.weights_label(None) == "unknown"
