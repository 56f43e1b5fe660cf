"""The self-contained dissection report (one HTML file; images inlined as data URIs).

Every text that comes from the inputs (layer, label and category names, paths, settings) goes
through `esc`: a crafted labels file cannot inject markup.
"""
import base64
import html
import os

from jaxdissect.io import files

CATEGORY_COLOURS = {"object": "#4e79a7", "part": "#f28e2b", "material": "#59a14f", "scene": "#b07aa1"}
STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px} h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #ddd;padding:4px 8px;text-align:left}
th{background:#f4f4f4} .settings td:first-child{color:#666}
.cards{display:flex;flex-direction:column;gap:6px}
.card{display:flex;align-items:center;gap:12px;padding:4px;border:1px solid #eee;border-radius:4px}
.card .info{width:190px;font-size:13px;flex:none} .card .label{font-weight:600}
.card img{image-rendering:pixelated;height:112px;width:auto;max-width:calc(100% - 210px);object-fit:contain}
.muted{color:#888} details summary{cursor:pointer;margin:8px 0}
.legend span{display:inline-block;width:10px;height:10px;margin:0 4px 0 12px}
svg.chart{max-width:100%;height:auto}
"""


def esc(value):
    """Any value as HTML text (quotes escaped too, so it is safe inside attributes)."""
    return html.escape(str(value))


def plural(count, noun):
    """'1 unit', '2 units'."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def label_counts(layer_summary):
    """[(label, category, count)] of interpretable units, by category then count."""
    counts = [(label, v["category"], v["units"]) for label, v in layer_summary["labels"].items()]
    order = list(CATEGORY_COLOURS)
    return sorted(counts, key=lambda t: (order.index(t[1]) if t[1] in order else 9, -t[2], t[0]))


def bar_chart(counts, width=900, bar_height=16):
    """A horizontal SVG bar chart of interpretable units per label, coloured by category; it shrinks to fit
    narrower containers."""
    if not counts:
        return '<p class="muted">No interpretable units at these cut-offs.</p>'
    top = max(c for _, _, c in counts)
    label_width, chart_width = 150, width - 200
    rows = []
    for i, (label, category, count) in enumerate(counts):
        y = i * (bar_height + 4)
        w = max(1.0, chart_width * count / top)
        colour = CATEGORY_COLOURS.get(category, "#999")
        rows.append(f'<text x="{label_width - 6}" y="{y + bar_height - 4}" text-anchor="end" font-size="12">'
                    f'{esc(label)}</text>'
                    f'<rect x="{label_width}" y="{y}" width="{w:.1f}" height="{bar_height}" fill="{colour}">'
                    f'<title>{esc(label)} ({esc(category)}): {plural(count, "unit")}</title></rect>'
                    f'<text x="{label_width + w + 4:.1f}" y="{y + bar_height - 4}" font-size="12">{count}</text>')
    height = len(counts) * (bar_height + 4)
    return (f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">'
            f'{"".join(rows)}</svg>')


def legend(counts):
    used = {category for _, category, _ in counts}
    return '<div class="legend">' + "".join(
        f'<span style="background:{c}"></span>{name}' for name, c in CATEGORY_COLOURS.items() if name in used) + "</div>"


def layers_table(summary):
    rows = []
    for name, layer in summary["layers"].items():
        counts = label_counts(layer)
        top = ", ".join(f"{label} ({n})" for label, _, n in sorted(counts, key=lambda t: -t[2])[:6])
        rows.append(f"<tr><td>{esc(name)}</td><td>{layer['units']}</td>"
                    f"<td>{layer['interpretable_units']}</td><td>{len(counts)}</td><td>{esc(top)}</td></tr>")
    return ("<table><tr><th>layer</th><th>units</th><th>interpretable</th><th>labels</th>"
            "<th>most frequent labels (units)</th></tr>" + "".join(rows) + "</table>")


SCORE_NAMES = {"max_iqr": "max IQR", "iou": "IoU"}


def unit_card(unit, strip, label_score, layer=""):
    """One unit: label, category, IoU, IQR, agreement and threshold, the runner-up label with its score
    (`label_score`, the measure that picks labels), and its top samples."""
    fmt = lambda x: "–" if x is None else f"{x:.3f}"
    image = (f'<img alt="top samples of unit {unit["unit"]}" src="data:image/jpeg;base64,'
             f'{base64.b64encode(strip).decode()}">' if strip else '<span class="muted">no samples</span>')
    return (f'<div class="card" id="{esc(layer)}-u{unit["unit"]}"><div class="info"><div class="label">'
            f'unit {unit["unit"]}: {esc(unit["label"])}</div>'
            f'<div class="muted">{esc(unit["category"] or "no label")}</div>'
            f'IoU {fmt(unit["iou"])} · IQR {fmt(unit["iqr"])}<br>agreement {fmt(unit["agreement"])} · '
            f'threshold {fmt(unit["threshold"])}<br><span class="muted">runner-up: '
            f'{esc(unit["runner_up"])} ({SCORE_NAMES[label_score]} {fmt(unit["runner_up_score"])})'
            f'</span></div>{image}</div>')


def unit_cards(layer_summary, strips, label_score, layer=""):
    """Interpretable units grouped by label (most frequent labels first), each by IoU; the rest folded."""
    units = layer_summary["unit"]
    count = {label: v["units"] for label, v in layer_summary["labels"].items()}
    good = sorted((u for u in units if u["interpretable"]),
                  key=lambda u: (-count[u["label"]], u["label"], -(u["iou"] or 0)))
    rest = sorted((u for u in units if not u["interpretable"]), key=lambda u: -(u["iou"] or 0))
    cards = "".join(unit_card(u, strips.get(u["unit"]), label_score, layer) for u in good)
    folded = "".join(unit_card(u, strips.get(u["unit"]), label_score, layer) for u in rest)
    return (f'<div class="cards">{cards}</div>'
            f'<details><summary>{plural(len(rest), "unit")} below the cut-offs</summary>'
            f'<div class="cards">{folded}</div></details>')


def settings_table(summary, run_info):
    s = summary["settings"]
    cut_offs = (f"IoU > {s['min_iou']}, IQR > {s['min_iqr']}" if s["readout"] == "reference"
                else f"IoU > {s['min_iou']}, agreement > {s['min_agreement']}")
    rows = {**run_info,
            "samples": s["samples"], "seed": s["seed"], "read-out": s["readout"], "threshold rule": s["rule"],
            "labels picked by": SCORE_NAMES[summary["label_score"]], "cut-offs": cut_offs,
            "segmentation downsample": s["downsample"]}
    return '<table class="settings">' + "".join(
        f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in rows.items()) + "</table>"


def render_report(summary, strips_by_layer, run_info):
    sections = []
    for name, layer in summary["layers"].items():
        sections.append(f'<h2 id="{esc(name)}">{esc(name)}: {layer["interpretable_units"]} of '
                        f'{plural(layer["units"], "unit")} interpretable</h2>{legend(label_counts(layer))}'
                        f'{bar_chart(label_counts(layer))}'
                        f'{unit_cards(layer, strips_by_layer.get(name, {}), summary["label_score"], name)}')
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>Dissection report</title>'
            f'<style>{STYLE}</style></head><body><h1>GAN dissection report</h1>'
            f'{settings_table(summary, run_info)}<h2>Layers</h2>{layers_table(summary)}'
            f'{"".join(sections)}</body></html>')


def write_report(outdir, summary, strips_by_layer, run_info):
    path = os.path.join(outdir, "report.html")
    files.save_text(path, render_report(summary, strips_by_layer, run_info))
    return path
