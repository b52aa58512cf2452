"""The evaluation report: the paper's table, ROC curves and T / M / U examples, in files a person opens.

`render_report` builds the four files as bytes (pure: no I/O), so a caller may store them anywhere;
`write_report` writes them under a folder, local or `s3://` (through `unmask_core.storage`):

- `metrics.json`: the metrics dict as given (NumPy values made plain, NaN/inf as null);
- `table.md`: the paper's Table 3/4 layout, one row per matcher;
- `roc.png`: ROC curves, one panel per matcher, one line per setting;
- `report.html`: one self-contained page: images are inline `data:` PNGs, the CSS is inline, and it
  refers to nothing outside itself (no links, fonts or scripts from elsewhere), so it can be mailed
  or opened from any bucket. Its one inline script records how many images decoded
  (`<body data-images-ok=.. data-images-total=..>`), which the browser test reads.

The metrics dict it expects (the one `unmask_core.evaluation` builds; every key but `matchers` is
optional):
    {"matchers": {"arcface": {"MM": auc, "MT": .., "UU": .., "UT": .., "TT": ..}, "facenet": {..}},
     "psnr": mean dB, "ssim": mean, "masked_region_psnr": mean dB, "n_images": .., "n_identities": ..,
     "n_pairs": .., "n_genuine": .., "checkpoints": {name: sha256},
     "weights": {"arcface": {"pretrained": bool, "sha256": ..}, ..}}

`weights` says per matcher whether its network was trained or randomly initialised (as `models init`
makes them): the table names each as pretrained or random, with the weights' sha256, because a
random network's AUCs say nothing about faces.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from unmask_core.matchers.registry import MATCHERS

SETTING_ORDER = ("MM", "MT", "UU", "UT", "TT")

# Why each setting is in the table, in the paper's words: M is the masked input, U our unmasked face,
# T the true face. Probe first, gallery second.
SETTING_HELP = {
    "MM": "masked probe vs masked gallery",
    "MT": "masked probe vs true gallery",
    "UU": "unmasked probe vs unmasked gallery",
    "UT": "unmasked probe vs true gallery",
    "TT": "true vs true: the upper bound",
}

# One colour per setting, the same in every panel: warm for the masked baseline, blue for ours,
# green for the upper bound.
SETTING_STYLE = {
    "MM": {"color": "#e8590c", "linestyle": "--"},
    "MT": {"color": "#f59f00", "linestyle": "-"},
    "UU": {"color": "#1c7ed6", "linestyle": "--"},
    "UT": {"color": "#364fc7", "linestyle": "-"},
    "TT": {"color": "#2b8a3e", "linestyle": ":"},
}

# Names and notes come from the matcher registry (METHOD.md: ArcFace drives the identity loss, so its
# numbers flatter us; FaceNet is the fair check).
MATCHER_NAMES = {name: spec.display_name for name, spec in MATCHERS.items()}
MATCHER_NOTES = {name: spec.note for name, spec in MATCHERS.items()}

LABEL_ORDER = ("best", "median", "worst")

FILES = ("metrics.json", "table.md", "roc.png", "report.html")


@dataclass
class Triplet:
    """One test face for the grid: true T, masked M and unmasked U (uint8 HxWx3, same size)."""

    id: str
    T: np.ndarray
    M: np.ndarray
    U: np.ndarray
    psnr: float
    ssim: float
    label: str  # 'best' | 'median' | 'worst' by PSNR


# ---------------------------------------------------------------- selection and table


def select_triplets(psnrs: Sequence[float] | np.ndarray, k_each: int = 2) -> dict[str, list[int]]:
    """Indices of the `k_each` best, median and worst faces by PSNR, without repeats.

    NaN scores are ignored; ties keep index order. With fewer than 3 * k_each faces the best are
    filled first, then the worst, then the median.
    """
    values = np.asarray(psnrs, dtype=np.float64)
    finite = np.flatnonzero(~np.isnan(values))
    # Stable sort on -psnr: highest first, ties by index, so the choice is reproducible.
    order = finite[np.argsort(-values[finite], kind="stable")].tolist()
    n = len(order)
    best = order[: min(k_each, n)]
    remaining = order[len(best) :]
    n_worst = min(k_each, len(remaining))
    worst = remaining[len(remaining) - n_worst :]
    middle = remaining[: len(remaining) - n_worst]
    n_median = min(k_each, len(middle))
    # Centre the median window on the middle of the whole ranking, then clip it into `middle`.
    centre = (n - 1) / 2 - len(best)
    start = int(round(centre - (n_median - 1) / 2))
    start = max(0, min(start, len(middle) - n_median))
    return {"best": best, "median": middle[start : start + n_median], "worst": worst}


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    number = float(value)
    return "—" if math.isnan(number) else f"{number:.{digits}f}"


def _matcher_name(name: str) -> str:
    return MATCHER_NAMES.get(name, name)


def weights_label(weights: Mapping[str, Any] | None) -> str:
    """'pretrained', 'random' or 'unknown' for one matcher's entry in the metrics' `weights`."""
    if not weights or weights.get("pretrained") is None:
        return "unknown"
    return "pretrained" if weights["pretrained"] else "random"


def table_markdown(metrics: Mapping[str, Any]) -> str:
    """The paper's Table 3/4 as Markdown: a row per matcher; AUC for MM, MT, UU, UT, TT; SSIM; PSNR;
    then, when the metrics name them, each matcher's weights: pretrained or random, and their sha256.

    Image quality does not depend on the matcher, so SSIM and PSNR repeat on every row, as in the
    paper. Missing values show as '—'.
    """
    header = "| Matcher | " + " | ".join(SETTING_ORDER) + " | SSIM | PSNR |"
    align = "|:--|" + "--:|" * (len(SETTING_ORDER) + 2)
    rows = [header, align]
    quality = [_fmt(metrics.get("ssim")), _fmt(metrics.get("psnr"))]
    matchers = metrics.get("matchers") or {}
    for name, aucs in matchers.items():
        cells = [_fmt(aucs.get(setting)) for setting in SETTING_ORDER]
        rows.append(f"| {_matcher_name(name)} | " + " | ".join(cells + quality) + " |")
    if not matchers:
        rows.append("| — | " + " | ".join(["—"] * len(SETTING_ORDER) + quality) + " |")
    weights = metrics.get("weights") or {}
    if weights:
        rows += ["", "Matcher weights:"]
        rows += [
            f"- {_matcher_name(name)}: {weights_label(weights.get(name))}, "
            f"sha256 {(weights.get(name) or {}).get('sha256') or '—'}"
            for name in matchers
        ]
    return "\n".join(rows) + "\n"


# ---------------------------------------------------------------- ROC figure


def plot_roc(
    curves: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float], float]]],
    path_or_buffer: str | BinaryIO,
    dpi: int = 120,
) -> None:
    """ROC curves as a PNG: one panel per matcher, one line per setting, its AUC in the legend.

    `curves` is {matcher: {setting: (fpr, tpr, auc)}}, what `metrics.protocol_aucs` returns per
    matcher. Uses matplotlib's Agg renderer through a bare Figure (not pyplot), so it needs no
    display and leaves no global figure state behind in long-running workers.
    """
    from matplotlib.figure import Figure

    names = list(curves) or [""]
    fig = Figure(figsize=(5.0 * len(names), 4.6), dpi=dpi, layout="constrained")
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names):
        settings = curves.get(name, {})
        ax.plot([0, 1], [0, 1], color="#adb5bd", linewidth=1, linestyle="-", label="chance")
        for setting in [s for s in SETTING_ORDER if s in settings] + [
            s for s in settings if s not in SETTING_ORDER
        ]:
            fpr, tpr, auc = settings[setting]
            style = SETTING_STYLE.get(setting, {"color": "#495057", "linestyle": "-"})
            ax.plot(np.asarray(fpr), np.asarray(tpr), linewidth=2, label=f"{setting}  AUC {auc:.4f}", **style)
        title = _matcher_name(name)
        if name in MATCHER_NOTES:
            title += f"\n{MATCHER_NOTES[name]}"
        ax.set_title(title, fontsize=11)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_aspect("equal")
        ax.set_xlabel("false accept rate")
        ax.set_ylabel("true accept rate")
        ax.grid(True, color="#e9ecef", linewidth=0.8)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        ax.legend(loc="lower right", fontsize=9, frameon=False, prop={"family": "monospace", "size": 9})
    fig.savefig(path_or_buffer, format="png", facecolor="white")


# ---------------------------------------------------------------- files


def _jsonable(value: Any) -> Any:
    """Plain JSON values: NumPy scalars and arrays unwrapped; NaN and infinities (not JSON) as null."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render_report(
    metrics: Mapping[str, Any],
    curves: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float], float]]],
    triplets: Sequence[Triplet],
    config: Mapping[str, Any],
    checkpoints: Mapping[str, str],
    note: str = "",
    title: str = "Masked face recovery — evaluation",
) -> dict[str, bytes]:
    """The report's files as {file name: bytes}; see the module docstring for what each holds."""
    roc = io.BytesIO()
    plot_roc(curves, roc)
    roc_png = roc.getvalue()
    table = table_markdown(metrics)
    page = _html(metrics, roc_png, triplets, config, checkpoints, note, title)
    return {
        "metrics.json": (json.dumps(_jsonable(metrics), indent=2) + "\n").encode(),
        "table.md": table.encode(),
        "roc.png": roc_png,
        "report.html": page.encode(),
    }


def write_report(out_dir: str, **report: Any) -> dict[str, str]:
    """Write metrics.json, table.md, roc.png and report.html under `out_dir` (a local folder or an
    s3:// prefix), each atomically; `report` holds `render_report`'s arguments. Returns {file name:
    its URI}. For other destinations, call `render_report` and store its bytes."""
    from unmask_core import storage

    written = {}
    for name, data in render_report(**report).items():
        uri = storage.join(out_dir, name)
        storage.write_bytes_atomic(uri, data)
        written[name] = uri
    return written


# ---------------------------------------------------------------- HTML


CSS = """
:root { --ink: #1b2230; --muted: #5c6677; --line: #e3e7ee; --bg: #f5f7fa; --card: #ffffff;
        --accent: #364fc7; --good: #2b8a3e; --mid: #e67700; --bad: #c92a2a; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
       font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
.wrap { max-width: 1160px; margin: 0 auto; padding: 0 28px; }
header { background: linear-gradient(120deg, #1f2a48 0%, #2d3f75 60%, #364fc7 100%); color: #fff;
         padding: 30px 0 26px; }
header h1 { margin: 0 0 4px; font-size: 26px; font-weight: 650; letter-spacing: -0.01em; }
header .sub { margin: 0; color: #d0d8f5; font-size: 14px; }
header .src { margin-top: 10px; font: 12.5px/1.6 ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace;
              color: #b8c4ee; word-break: break-all; }
main.wrap { padding-top: 24px; padding-bottom: 40px; }
.note { margin: 0 0 22px; padding: 14px 18px; border-radius: 10px; background: #fff4e0;
        border: 1px solid #ffd08a; border-left: 6px solid #f08c00; color: #5f3b00; font-size: 15.5px; }
.note strong { text-transform: uppercase; letter-spacing: 0.06em; font-size: 12.5px; margin-right: 8px;
               color: #b35c00; }
.stats { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); gap: 12px;
         margin-bottom: 22px; }
.stat { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 12px 16px; }
.stat .k { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: 0.05em; }
.stat .v { font-size: 22px; font-weight: 620; font-variant-numeric: tabular-nums; }
.stat .v small { font-size: 13px; font-weight: 500; color: var(--muted); }
section { background: var(--card); border: 1px solid var(--line); border-radius: 12px;
          padding: 20px 24px 22px; margin-bottom: 22px; box-shadow: 0 1px 2px rgba(20, 30, 60, 0.04); }
h2 { margin: 0 0 4px; font-size: 18px; font-weight: 640; }
.lead { margin: 0 0 16px; color: var(--muted); font-size: 13.5px; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { padding: 8px 12px; text-align: right; border-bottom: 1px solid var(--line); white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
thead th { font-size: 12.5px; color: var(--muted); font-weight: 600; }
thead tr.groups th { border-bottom: none; padding-bottom: 0; text-transform: uppercase; font-size: 11px;
                     letter-spacing: 0.06em; }
thead tr.groups th span { display: block; border-bottom: 2px solid var(--line); padding-bottom: 4px; }
thead tr.groups th.ours span { border-color: #91a7ff; color: var(--accent); }
td.ours { background: #f1f4ff; font-weight: 600; }
td.upper { color: var(--good); }
td .matcher { font-weight: 600; }
td .why { display: block; font-size: 12px; color: var(--muted); font-weight: 400; }
td .weights { display: block; font-size: 12px; font-weight: 600; color: #2b8a3e; max-width: 260px;
  white-space: normal; }
td .weights.random, td .weights.unknown { color: #c92a2a; }
td .weights .hash { display: block; font-weight: 400; color: var(--muted); word-break: break-all;
  font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 10.5px; }
.legend { display: flex; flex-wrap: wrap; gap: 6px 18px; margin-top: 12px; font-size: 12.5px;
          color: var(--muted); }
.legend b { color: var(--ink); font-family: ui-monospace, Menlo, Consolas, monospace; margin-right: 4px; }
img.roc { display: block; width: 100%; max-width: 1040px; height: auto; margin: 0 auto; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(340px, 1fr)); gap: 16px; }
.face { border: 1px solid var(--line); border-radius: 10px; padding: 12px; background: #fbfcfe; }
.face .top { display: flex; align-items: center; gap: 8px; margin-bottom: 10px; min-width: 0; }
.chip { flex: none; font-size: 11px; font-weight: 700; text-transform: uppercase; letter-spacing: 0.06em;
        padding: 2px 8px; border-radius: 999px; color: #fff; }
.chip.best { background: var(--good); } .chip.median { background: var(--mid); }
.chip.worst { background: var(--bad); }
.face .id { font: 12px ui-monospace, Menlo, Consolas, monospace; color: var(--muted); overflow: hidden;
            text-overflow: ellipsis; white-space: nowrap; }
.trio { display: grid; grid-template-columns: repeat(3, 1fr); gap: 6px; }
figure { margin: 0; }
figure img { display: block; width: 100%; height: auto; aspect-ratio: 1 / 1; object-fit: cover;
             border-radius: 6px; background: #e9ecef; image-rendering: auto; }
figcaption { text-align: center; font-size: 12px; color: var(--muted); margin-top: 3px; }
figcaption b { color: var(--ink); }
.scores { display: flex; justify-content: space-between; margin-top: 10px; font-size: 13px;
          font-variant-numeric: tabular-nums; }
.scores span { color: var(--muted); }
.scores b { color: var(--ink); font-weight: 620; }
.run { display: grid; grid-template-columns: minmax(0, 1.1fr) minmax(0, 1fr); gap: 20px; }
h3 { margin: 0 0 8px; font-size: 14px; font-weight: 620; }
pre { margin: 0; padding: 12px 14px; background: #f4f6fa; border: 1px solid var(--line); border-radius: 8px;
      font: 12px/1.5 ui-monospace, Menlo, Consolas, monospace; overflow-x: auto; max-height: 520px; }
table.hashes td { font-size: 12.5px; text-align: left; white-space: normal; }
table.hashes td.hash { font-family: ui-monospace, Menlo, Consolas, monospace; word-break: break-all;
                       color: var(--muted); }
.empty { color: var(--muted); font-style: italic; }
footer { color: var(--muted); font-size: 12px; text-align: center; padding: 0 0 30px; }
@media (max-width: 760px) { .run { grid-template-columns: 1fr; } }
"""

# Records, once the page has loaded, how many images decoded: a check a headless browser can read
# from the DOM (tests/test_report.py) and harmless to a reader.
IMAGE_CHECK = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var ok = images.filter(function (img) { return img.complete && img.naturalWidth > 0; });
  document.body.dataset.imagesTotal = String(images.length);
  document.body.dataset.imagesOk = String(ok.length);
});
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _stat(key: str, value: str, unit: str = "") -> str:
    small = f" <small>{_e(unit)}</small>" if unit and value != "—" else ""
    return f'<div class="stat"><div class="k">{_e(key)}</div><div class="v">{_e(value)}{small}</div></div>'


def _stats_html(metrics: Mapping[str, Any]) -> str:
    cards = []
    if metrics.get("n_images") is not None:
        cards.append(_stat("Test faces", f"{int(metrics['n_images']):,}"))
    if metrics.get("n_identities") is not None:
        cards.append(_stat("Identities", f"{int(metrics['n_identities']):,}"))
    if metrics.get("n_pairs") is not None:
        n_pairs = int(metrics["n_pairs"])
        unit = f"{int(metrics['n_genuine']):,} genuine" if metrics.get("n_genuine") is not None else ""
        cards.append(_stat("Verification pairs", f"{n_pairs:,}", unit))
    cards.append(_stat("PSNR (U vs T)", _fmt(metrics.get("psnr"), 2), "dB"))
    cards.append(_stat("SSIM (U vs T)", _fmt(metrics.get("ssim"), 4)))
    if "masked_region_psnr" in metrics:
        cards.append(_stat("PSNR in mask", _fmt(metrics.get("masked_region_psnr"), 2), "dB"))
    return f'<div class="stats">{"".join(cards)}</div>'


def _table_html(metrics: Mapping[str, Any]) -> str:
    groups = (
        '<tr class="groups"><th></th><th colspan="2"><span>masked input</span></th>'
        '<th colspan="2" class="ours"><span>unmasked (ours)</span></th><th><span>bound</span></th>'
        '<th colspan="2"><span>image quality</span></th></tr>'
    )
    head = (
        "<tr><th>Matcher</th>"
        + "".join(f'<th title="{_e(SETTING_HELP[s])}">{s}</th>' for s in SETTING_ORDER)
        + "<th>SSIM</th><th>PSNR</th></tr>"
    )
    quality = f"<td>{_fmt(metrics.get('ssim'))}</td><td>{_fmt(metrics.get('psnr'))}</td>"
    rows = []
    matchers = metrics.get("matchers") or {}
    weights = metrics.get("weights") or {}
    for name, aucs in matchers.items():
        why = f'<span class="why">{_e(MATCHER_NOTES[name])}</span>' if name in MATCHER_NOTES else ""
        why += _weights_html(weights.get(name)) if weights else ""
        cells = []
        for setting in SETTING_ORDER:
            css = "ours" if setting in ("UU", "UT") else "upper" if setting == "TT" else ""
            cells.append(f'<td class="{css}">{_fmt(aucs.get(setting))}</td>')
        rows.append(
            f'<tr><td><span class="matcher">{_e(_matcher_name(name))}</span>{why}</td>'
            f"{''.join(cells)}{quality}</tr>"
        )
    if not matchers:
        rows.append("<tr><td>—</td>" + "<td>—</td>" * len(SETTING_ORDER) + quality + "</tr>")
    legend = "".join(f"<span><b>{s}</b>{_e(SETTING_HELP[s])}</span>" for s in SETTING_ORDER)
    return (
        f"<table><thead>{groups}{head}</thead><tbody>{''.join(rows)}</tbody></table>"
        f'<div class="legend">{legend}</div>'
    )


def _weights_html(weights: Mapping[str, Any] | None) -> str:
    label = weights_label(weights)
    digest = (weights or {}).get("sha256") or ""
    meaning = {
        "pretrained": "pretrained weights",
        "random": "random weights: these AUCs say nothing about faces",
        "unknown": "weights of unknown origin",
    }[label]
    hash_html = f' <span class="hash">sha256 {_e(digest)}</span>' if digest else ""
    return f'<span class="weights {label}">{_e(meaning)}{hash_html}</span>'


def _triplets_html(triplets: Sequence[Triplet]) -> str:
    if not triplets:
        return '<p class="empty">No test faces to show.</p>'
    order = {label: k for k, label in enumerate(LABEL_ORDER)}
    cards = []
    for t in sorted(triplets, key=lambda t: (order.get(t.label, len(order)), -t.psnr)):
        figures = "".join(
            f'<figure><img alt="{kind} of {_e(t.id)}" src="{_data_uri(_png(image))}">'
            f"<figcaption><b>{kind}</b> {caption}</figcaption></figure>"
            for kind, image, caption in (("T", t.T, "true"), ("M", t.M, "masked"), ("U", t.U, "unmasked"))
        )
        label = t.label if t.label in order else "other"
        cards.append(
            f'<div class="face"><div class="top"><span class="chip {_e(label)}">{_e(t.label)}</span>'
            f'<span class="id" title="{_e(t.id)}">{_e(t.id)}</span></div>'
            f'<div class="trio">{figures}</div>'
            f'<div class="scores"><span>PSNR <b>{_fmt(t.psnr, 2)}</b> dB</span>'
            f"<span>SSIM <b>{_fmt(t.ssim, 4)}</b></span></div></div>"
        )
    return f'<div class="grid">{"".join(cards)}</div>'


def _run_html(config: Mapping[str, Any], checkpoints: Mapping[str, str]) -> str:
    config_json = json.dumps(_jsonable(config), indent=2, sort_keys=True)
    if checkpoints:
        rows = "".join(
            f'<tr><td>{_e(name)}</td><td class="hash">{_e(digest)}</td></tr>'
            for name, digest in sorted(checkpoints.items())
        )
        hashes = f'<table class="hashes"><tbody>{rows}</tbody></table>'
    else:
        hashes = '<p class="empty">No checkpoints recorded.</p>'
    return (
        f'<div class="run"><div><h3>Configuration</h3><pre>{_e(config_json)}</pre></div>'
        f"<div><h3>Checkpoints (sha256)</h3>{hashes}</div></div>"
    )


def _html(
    metrics: Mapping[str, Any],
    roc_png: bytes,
    triplets: Sequence[Triplet],
    config: Mapping[str, Any],
    checkpoints: Mapping[str, str],
    note: str,
    title: str,
) -> str:
    sources = [f"{key}: {config[key]}" for key in ("pairs", "models") if config.get(key)]
    source_html = f'<div class="src">{"<br>".join(_e(s) for s in sources)}</div>' if sources else ""
    note_html = f'<div class="note" role="note"><strong>Note</strong>{_e(note)}</div>' if note else ""
    labels = sorted(
        {t.label for t in triplets}, key=lambda x: LABEL_ORDER.index(x) if x in LABEL_ORDER else 9
    )
    faces_lead = (
        "T is the true face, M the masked input and U = g(f(M)) our unmasked face; "
        f"{', '.join(labels) or 'sampled'} faces of the test split by PSNR of U against T at 256 px."
    )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light">
<title>{_e(title)}</title>
<style>{CSS}</style>
</head>
<body>
<header><div class="wrap">
<h1>{_e(title)}</h1>
<p class="sub">Face verification ROC AUC under MM / MT / UU / UT / TT per matcher, and image quality of
the unmasked face U against the true face T.</p>
{source_html}
</div></header>
<main class="wrap">
{note_html}
{_stats_html(metrics)}
<section>
<h2>Verification AUC</h2>
<p class="lead">Area under the ROC curve of cosine similarity between probe and gallery embeddings;
SSIM and PSNR compare U with T at 256 px (the paper's Table 3/4 layout).</p>
{_table_html(metrics)}
</section>
<section>
<h2>ROC curves</h2>
<p class="lead">One panel per matcher, one curve per probe/gallery setting.</p>
<img class="roc" alt="ROC curves per matcher and setting" src="{_data_uri(roc_png)}">
</section>
<section>
<h2>Test faces</h2>
<p class="lead">{_e(faces_lead)}</p>
{_triplets_html(triplets)}
</section>
<section>
<h2>Run</h2>
<p class="lead">What produced these numbers.</p>
{_run_html(config, checkpoints)}
</section>
</main>
<footer>unmask · self-contained report: every image is embedded in this file</footer>
<script>{IMAGE_CHECK}</script>
</body>
</html>
"""
