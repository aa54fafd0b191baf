"""The audit's HTML report: one self-contained file (CSS inline, plots as base64 PNG).

Plots are drawn with matplotlib's object API on an Agg canvas, never pyplot, so drawing a report
neither needs a display nor changes the backend of the process that calls it. Each plot is also
saved as a PNG under plots_dir, for viewing or attaching elsewhere.
"""
from __future__ import annotations

import base64
import datetime as dt
import html
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from pipeline.audit.worst_cases import OverlayCase
from sam2rad.atomic_files import replace_atomically

REFERENCE_COLOUR = "#00d5ff"  # cyan
PREDICTION_COLOUR = "#ff9500"  # orange: the pair stays apart for colour-blind readers too
OK_COLOUR = "#3b7dd8"
FLAGGED_COLOUR = "#d64545"
THRESHOLD_COLOUR = "#222222"
MAX_STUDY_BARS = 40
DPI = 110


# ---------------------------------------------------------------------------------------------
# Plots


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    return buffer.getvalue()


def _style(ax) -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(labelsize=8)
    ax.grid(axis="y", color="#e5e5e5", linewidth=0.8)
    ax.set_axisbelow(True)


def short_uid(uid: str | None, keep: int = 12) -> str:
    """The tail of a UID (where UIDs differ), for plot labels; tables show UIDs whole."""
    if not uid:
        return "?"
    return uid if len(uid) <= keep + 1 else "…" + uid[-keep:]


def dice_histogram(dice: Sequence[float], threshold: float) -> bytes:
    fig = Figure(figsize=(6.2, 3.0))
    ax = fig.add_subplot()
    values = np.asarray([d for d in dice if d is not None and math.isfinite(d)], dtype=float)
    bins = np.linspace(0.0, 1.0, 21)
    if values.size:
        counts, _, patches = ax.hist(values, bins=bins, color=OK_COLOUR, edgecolor="white", linewidth=0.8)
        for patch, left in zip(patches, bins[:-1]):
            if left < threshold:
                patch.set_facecolor(FLAGGED_COLOUR)
    else:
        ax.text(0.5, 0.5, "no compared instances", ha="center", va="center", transform=ax.transAxes, color="#777")
    ax.axvline(threshold, color=THRESHOLD_COLOUR, linestyle="--", linewidth=1.2)
    ax.text(threshold, 1.0, f" threshold {threshold:g}", transform=ax.get_xaxis_transform(), va="top", ha="left",
            fontsize=8, color=THRESHOLD_COLOUR)
    ax.set_xlim(0, 1)
    ax.set_xlabel("Dice (instance mean over frames and classes)", fontsize=9)
    ax.set_ylabel("instances", fontsize=9)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_title(f"Dice distribution (n = {values.size})", fontsize=10, loc="left")
    _style(ax)
    return _png(fig)


def study_bars(studies: pd.DataFrame, threshold: float, max_bars: int = MAX_STUDY_BARS) -> bytes:
    """Horizontal bars of each study's mean Dice (lowest first, at most max_bars), min Dice as a tick."""
    rated = studies[studies["mean_dice"].notna()].sort_values(["mean_dice", "study_uid"]).head(max_bars)
    n = len(rated)
    fig = Figure(figsize=(6.2, max(1.6, 0.32 * n + 1.0)))
    ax = fig.add_subplot()
    if n:
        y = np.arange(n)[::-1]  # lowest Dice at the top
        flagged = rated["flagged"].fillna(False).to_numpy(dtype=bool)
        ax.barh(y, rated["mean_dice"].to_numpy(dtype=float), height=0.65,
                color=[FLAGGED_COLOUR if f else OK_COLOUR for f in flagged])
        ax.scatter(rated["min_dice"].to_numpy(dtype=float), y, marker="|", s=120, color="#111", zorder=3,
                   linewidths=1.5)
        ax.set_yticks(y)
        ax.set_yticklabels([short_uid(u) for u in rated["study_uid"]], fontsize=7, family="monospace")
        for tick, f in zip(ax.get_yticklabels(), flagged):
            if f:
                tick.set_color(FLAGGED_COLOUR)
        for yi, value in zip(y, rated["mean_dice"].to_numpy(dtype=float)):
            ax.text(min(value, 1.0) + 0.01, yi, f"{value:.2f}", va="center", ha="left", fontsize=7, color="#333")
        ax.set_ylim(-0.7, n - 0.3)
    else:
        ax.set_yticks([])
        ax.text(0.5, 0.5, "no study with compared instances", ha="center", va="center", transform=ax.transAxes,
                color="#777")
    ax.axvline(threshold, color=THRESHOLD_COLOUR, linestyle="--", linewidth=1.2)
    ax.set_xlim(0, 1.08)
    ax.set_xlabel("Dice", fontsize=9)
    shown = f"{n} lowest of {int(studies['mean_dice'].notna().sum())}" if n < studies["mean_dice"].notna().sum() else f"{n}"
    ax.set_title(f"Mean Dice per study ({shown} studies)", fontsize=10, loc="left")
    ax.legend(handles=[Patch(color=OK_COLOUR, label="mean ≥ threshold"),
                       Patch(color=FLAGGED_COLOUR, label="flagged (mean < threshold)"),
                       Line2D([], [], color="#111", marker="|", linestyle="none", markersize=9, label="min instance"),
                       Line2D([], [], color=THRESHOLD_COLOUR, linestyle="--", label=f"threshold {threshold:g}")],
              fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18 if n > 3 else -0.35), ncol=2,
              frameon=False)
    _style(ax)
    ax.grid(axis="y", visible=False)
    ax.grid(axis="x", color="#e5e5e5", linewidth=0.8)
    return _png(fig)


def _filled(mask: np.ndarray, colour: str, alpha: float) -> np.ndarray:
    rgba = np.zeros(mask.shape + (4,), dtype=float)
    rgba[..., :3] = [int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    rgba[..., 3] = mask * alpha
    return rgba


def view_window(case: OverlayCase, margin: float = 0.35, min_margin: int = 16) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1) to draw: the masks with a margin, inside the imaging region when known."""
    rows, cols = case.reference.shape
    r0, r1, c0, c1 = case.region or (0, rows, 0, cols)
    union = case.reference | case.prediction
    if not union.any():
        return r0, r1, c0, c1
    ys, xs = np.nonzero(union)
    pad_y = max(min_margin, int(margin * (ys.max() - ys.min() + 1)))
    pad_x = max(min_margin, int(margin * (xs.max() - xs.min() + 1)))
    # The masks always stay in view, even where they leave the imaging region.
    top, bottom = min(max(ys.min() - pad_y, r0), ys.min()), max(min(ys.max() + 1 + pad_y, r1), ys.max() + 1)
    left, right = min(max(xs.min() - pad_x, c0), xs.min()), max(min(xs.max() + 1 + pad_x, c1), xs.max() + 1)
    return int(top), int(bottom), int(left), int(right)


def overlay(case: OverlayCase) -> bytes:
    """The source frame (or a black canvas) zoomed on the masks, with reference and predicted contours."""
    top, bottom, left, right = view_window(case)
    ref = case.reference[top:bottom, left:right]
    pred = case.prediction[top:bottom, left:right]
    rows, cols = ref.shape
    fig = Figure(figsize=(3.6, min(3.6 * rows / cols, 4.2) + 0.45))
    ax = fig.add_subplot()
    if case.image is not None:
        ax.imshow(case.image[top:bottom, left:right], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        width = 1.3
    else:
        # No image: filled masks on black, both visible where they overlap (blended) and apart.
        ax.imshow(np.zeros((rows, cols)), cmap="gray", vmin=0, vmax=1)
        ax.imshow(_filled(ref, REFERENCE_COLOUR, 0.55), interpolation="nearest")
        ax.imshow(_filled(pred, PREDICTION_COLOUR, 0.55), interpolation="nearest")
        width = 0.8
    for mask, colour in ((ref, REFERENCE_COLOUR), (pred, PREDICTION_COLOUR)):
        if mask.any() and not mask.all():
            padded = np.pad(mask.astype(float), 1)  # closes contours cut by the window's edge
            ax.contour(np.arange(-1, cols + 1), np.arange(-1, rows + 1), padded, levels=[0.5], colors=[colour],
                       linewidths=width)
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color("#cccccc")
    ax.legend(handles=[Line2D([], [], color=REFERENCE_COLOUR, lw=2, label=f"reference ({int(case.reference.sum())} px)"),
                       Line2D([], [], color=PREDICTION_COLOUR, lw=2, label=f"prediction ({int(case.prediction.sum())} px)")],
              loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize=7, frameon=False)
    return _png(fig)


# ---------------------------------------------------------------------------------------------
# HTML


_CSS = """
:root { --ink:#1d2430; --muted:#6b7280; --line:#e5e7eb; --bg:#f6f7f9; --card:#fff; --bad:#d64545; --ok:#3b7dd8; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif; color:var(--ink);
       background:var(--bg); }
main { max-width: 1120px; margin: 0 auto; padding: 28px 24px 48px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 32px 0 10px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
.meta { color: var(--muted); font-size: 12.5px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 10px; margin-top: 18px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px; }
.card .v { font-size: 22px; font-weight: 600; }
.card .k { color: var(--muted); font-size: 12px; }
.card.bad .v { color: var(--bad); }
.panel { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 14px; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 14px; align-items: start; }
.plots img, .case img { max-width: 100%; height: auto; display: block; margin: 0 auto; }
table { border-collapse: collapse; width: 100%; background: var(--card); font-size: 12.5px; }
th, td { padding: 5px 8px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: #fafafa; font-weight: 600; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.flagged td { background: #fdeeee; }
tr.flagged td:first-child { box-shadow: inset 3px 0 0 var(--bad); }
code, .uid { font-family: ui-monospace, 'SFMono-Regular', Menlo, Consolas, monospace; font-size: 11.5px;
             word-break: break-all; }
.badge { display: inline-block; padding: 1px 7px; border-radius: 10px; font-size: 11px; font-weight: 600; }
.badge.bad { background: #fbdada; color: #9b1c1c; }
.badge.ok { background: #dde9fb; color: #1e4f99; }
.cases { display: grid; grid-template-columns: repeat(auto-fill, minmax(250px, 1fr)); gap: 14px; }
.case { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 10px; }
.case .cap { font-size: 12px; margin-top: 6px; }
.case .cap .d { font-size: 15px; font-weight: 600; }
.legend-swatch { display:inline-block; width: 14px; height: 3px; vertical-align: middle; margin: 0 4px 0 10px; }
details { margin-top: 10px; }
summary { cursor: pointer; color: var(--muted); }
.scroll { max-height: 420px; overflow: auto; border: 1px solid var(--line); border-radius: 8px; }
.note { color: var(--muted); font-size: 12px; margin: 6px 0 0; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: object, digits: int = 3) -> str:
    if value is None or value is pd.NA:
        return "–"
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return _e(value)
    if math.isnan(f):
        return "–"
    if math.isinf(f):
        return "∞"
    return f"{f:.{digits}f}"


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _summary_table(summary: dict) -> str:
    unit = summary.get("distance_unit") or "px"
    rows = []
    for key, label, digits, u in (("dice", "Dice", 3, ""), ("iou", "IoU", 3, ""),
                                  ("hd95", "HD95", 2, unit), ("assd", "ASSD", 2, unit)):
        rows.append(
            f"<tr><td>{label}</td>" + "".join(
                f'<td class="num">{_num(summary.get(f"{key}_{stat}"), digits)}</td>'
                for stat in ("mean", "median", "min", "max")) + f"<td>{_e(u)}</td></tr>")
    notes = []
    if summary.get("n_infinite_distance"):
        notes.append(f"{summary['n_infinite_distance']} instance(s) with a frame where the object was missed or "
                     "hallucinated have an infinite HD95/ASSD and are left out of the distance statistics "
                     "(their Dice counts).")
    if summary.get("n_other_unit"):
        notes.append(f"{summary['n_other_unit']} instance(s) without a pixel spacing (distances in px) are left "
                     f"out of the distance statistics in {unit}.")
    note_html = "".join(f'<p class="note">{_e(n)}</p>' for n in notes)
    return ('<table><thead><tr><th>metric</th><th class="num">mean</th><th class="num">median</th>'
            '<th class="num">min</th><th class="num">max</th><th>unit</th></tr></thead><tbody>'
            + "".join(rows) + "</tbody></table>" + note_html)


def _studies_table(studies: pd.DataFrame) -> str:
    head = ("<tr><th>study UID</th><th class='num'>instances</th><th class='num'>frames</th>"
            "<th class='num'>mean Dice</th><th class='num'>min Dice</th><th class='num'>mean IoU</th>"
            "<th class='num'>mean HD95</th><th class='num'>mean ASSD</th><th>unit</th>"
            "<th class='num'>no ref.</th><th class='num'>no SEG</th><th class='num'>failed</th><th></th></tr>")
    body = []
    for s in studies.itertuples(index=False):
        flagged = bool(s.flagged) if s.flagged is not pd.NA else False
        badge = '<span class="badge bad">flagged</span>' if flagged else (
            '<span class="badge ok">ok</span>' if s.mean_dice is not None and not pd.isna(s.mean_dice) else "")
        body.append(
            f'<tr class="{"flagged" if flagged else ""}"><td class="uid">{_e(s.study_uid)}</td>'
            f'<td class="num">{s.n_instances}</td><td class="num">{s.n_frames}</td>'
            f'<td class="num">{_num(s.mean_dice)}</td><td class="num">{_num(s.min_dice)}</td>'
            f'<td class="num">{_num(s.mean_iou)}</td><td class="num">{_num(s.mean_hd95, 2)}</td>'
            f'<td class="num">{_num(s.mean_assd, 2)}</td><td>{_e(s.distance_unit if isinstance(s.distance_unit, str) else "")}</td>'
            f'<td class="num">{s.n_missing_reference}</td><td class="num">{s.n_missing_seg}</td>'
            f'<td class="num">{s.n_failed}</td><td>{badge}</td></tr>')
    if not body:
        body.append('<tr><td colspan="13" class="note">no studies</td></tr>')
    return f'<div class="scroll"><table><thead>{head}</thead><tbody>{"".join(body)}</tbody></table></div>'


def _uid_list(title: str, rows: pd.DataFrame, explanation: str) -> str:
    if rows.empty:
        return ""
    items = "".join(
        f"<tr><td class='uid'>{_e(r.source_sop_uid)}</td><td class='uid'>{_e(r.study_uid if isinstance(r.study_uid, str) else '–')}</td>"
        f"<td class='uid'>{_e(r.seg_sop_uid if isinstance(r.seg_sop_uid, str) else '–')}</td>"
        f"<td>{_e(r.error if isinstance(r.error, str) else '')}</td></tr>"
        for r in rows.itertuples(index=False))
    return (f"<details><summary>{_e(title)} ({len(rows)})</summary><p class='note'>{_e(explanation)}</p>"
            "<div class='scroll'><table><thead><tr><th>source SOP Instance UID</th><th>study UID</th>"
            f"<th>SEG SOP Instance UID</th><th>detail</th></tr></thead><tbody>{items}</tbody></table></div></details>")


def _case_html(case: OverlayCase, png: bytes, rank: int) -> str:
    image_note = "" if case.image is not None else "<br><span class='note'>masks only (no source image)</span>"
    return (
        f"<div class='case'>{_img(png, f'overlay {rank}')}<div class='cap'>"
        f"<span class='d'>Dice {_num(case.dice)}</span> <span class='note'>(frame {case.frame_number}: "
        f"{_num(case.frame_dice)}, class {_e(case.class_label)})</span>"
        f"<br>study <span class='uid'>{_e(case.study_uid or '–')}</span>"
        f"<br>source <span class='uid'>{_e(case.source_sop_uid)}</span>"
        f"<br>SEG <span class='uid'>{_e(case.seg_sop_uid)}</span>{image_note}</div></div>")


def _card(value: object, label: str, bad: bool = False) -> str:
    return f"<div class='card{' bad' if bad else ''}'><div class='v'>{_e(value)}</div><div class='k'>{_e(label)}</div></div>"


def render_report(*, instances: pd.DataFrame, studies: pd.DataFrame, summary: dict, threshold: float,
                  cases: Sequence[OverlayCase], plots: dict[str, bytes] | None = None,
                  title: str = "Sam2Rad Dice audit", extra_html: str = "") -> tuple[str, dict[str, bytes]]:
    """The report's HTML and its plots by file name (PNG bytes); `extra_html` (trusted, already escaped)
    goes after the worst cases, e.g. the "AI vs reader" section."""
    plots = dict(plots or {})
    ok = instances[instances["status"] == "ok"]
    plots.setdefault("dice_histogram.png", dice_histogram(ok["dice"].astype(float).tolist(), threshold))
    plots.setdefault("study_dice.png", study_bars(studies, threshold))
    case_pngs = []
    for rank, case in enumerate(cases, start=1):
        name = f"worst_{rank:02d}.png"
        plots.setdefault(name, overlay(case))
        case_pngs.append(plots[name])

    n_flagged = int(summary.get("n_flagged_studies", int(studies["flagged"].fillna(False).sum())))
    cards = "".join([
        _card(summary.get("n_segs", "–"), "SEGs audited"),
        _card(summary.get("n_instances", len(ok)), "instances compared"),
        _card(summary.get("n_frames", "–"), "frames compared"),
        _card(_num(summary.get("dice_mean")), "mean Dice",
              bad=summary.get("dice_mean") is not None and float(summary["dice_mean"]) < threshold),
        _card(f"{n_flagged} / {summary.get('n_studies', len(studies))}", f"studies below {threshold:g}",
              bad=n_flagged > 0),
        _card(summary.get("n_missing_reference", "–"), "SEGs without reference"),
        _card(summary.get("n_missing_seg", "–"), "references without SEG"),
        _card(summary.get("n_failed", "–"), "failed comparisons", bad=bool(summary.get("n_failed"))),
    ])
    flagged = studies[studies["flagged"].fillna(False).astype(bool)]
    flagged_html = (
        "<p>All studies with compared instances reach the threshold.</p>" if flagged.empty else
        f"<p><b>{len(flagged)}</b> stud{'y' if len(flagged) == 1 else 'ies'} with mean Dice below "
        f"{threshold:g}:</p>" + _studies_table(flagged))
    cases_html = (
        "<p class='note'>No compared instances.</p>" if not cases else
        "<p class='note'>Each at the frame and class where it scores lowest. "
        f"<span class='legend-swatch' style='background:{REFERENCE_COLOUR}'></span>reference"
        f"<span class='legend-swatch' style='background:{PREDICTION_COLOUR}'></span>prediction</p>"
        "<div class='cases'>" + "".join(_case_html(c, p, i) for i, (c, p) in enumerate(zip(cases, case_pngs), 1))
        + "</div>")
    lists = (
        _uid_list("SEGs without a reference", instances[instances["status"] == "missing_reference"],
                  "The SEG's source instance has no reference label; not an error, nothing to compare.")
        + _uid_list("References without a SEG", instances[instances["status"] == "missing_seg"],
                    "A reference label exists but no audited SEG cites its source instance.")
        + _uid_list("Failed comparisons", instances[instances["status"] == "failed"],
                    "Both sides exist but could not be compared.")
        + _uid_list("Reviewed SEGs (not in the means)", instances[instances["status"] == "reviewed"],
                    "A reader's SEG (SEMIAUTOMATIC/MANUAL) of a source instance; the AI SEG is what is audited.")
        + _uid_list("Superseded AI SEGs (not in the means)", instances[instances["status"] == "superseded"],
                    "An older AI SEG of a source instance a newer AI SEG also cites."))
    generated = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title><style>{_CSS}</style></head>
<body><main>
<h1>{_e(title)}</h1>
<div class="meta">Generated {generated} · flag threshold: study mean Dice &lt; {threshold:g} ·
distances in {_e(summary.get("distance_unit") or "px")} · UIDs and measurements only, no patient data</div>
<div class="cards">{cards}</div>
<h2>Overall</h2>
<div class="panel">{_summary_table(summary)}</div>
<h2>Distribution</h2>
<div class="plots"><div class="panel">{_img(plots["dice_histogram.png"], "Dice histogram")}</div>
<div class="panel">{_img(plots["study_dice.png"], "mean Dice per study")}</div></div>
<h2>Flagged studies</h2>
{flagged_html}
<h2>Worst cases</h2>
{cases_html}
{extra_html}
<h2>All studies</h2>
{_studies_table(studies)}
{lists}
</main></body></html>
"""
    return page, plots


def write_report(path: str | os.PathLike[str], *, instances: pd.DataFrame, studies: pd.DataFrame, summary: dict,
                 threshold: float, cases: Sequence[OverlayCase], plots_dir: str | os.PathLike[str] | None = None,
                 title: str = "Sam2Rad Dice audit", extra_html: str = "") -> Path:
    """Write the self-contained report to path (atomically) and its plots as PNG files to plots_dir."""
    page, plots = render_report(instances=instances, studies=studies, summary=summary, threshold=threshold,
                                cases=cases, title=title, extra_html=extra_html)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if plots_dir is not None:
        folder = Path(plots_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("worst_*.png"):  # a previous run may have drawn more cases
            stale.unlink(missing_ok=True)
        for name, png in plots.items():
            (folder / name).write_bytes(png)
    return replace_atomically(lambda tmp: tmp.write_text(page, encoding="utf-8"), path)
