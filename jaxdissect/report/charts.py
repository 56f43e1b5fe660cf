"""Self-contained figures for the causal analyses: SVG line and bar charts, PNG image grids.

Charts are `Svg` values (a body and its size) so that several can be stacked
into one file with `stack`; `str(chart)` is a complete SVG document. No
plotting library: a chart is a few dozen SVG elements.
"""
import dataclasses
import html
import io
import math

import numpy as np
from PIL import Image

PALETTE = ("#4e79a7", "#e15759", "#59a14f", "#f28e2b", "#b07aa1", "#76b7b2", "#9c755f", "#bab0ac")
MARGIN = {"left": 64, "right": 150, "top": 34, "bottom": 58}
FONT = 'font-family="system-ui,sans-serif"'


@dataclasses.dataclass(frozen=True)
class Svg:
    body: str
    width: int
    height: int

    def __str__(self):
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" height="{self.height}" '
                f'viewBox="0 0 {self.width} {self.height}" {FONT}>'
                f'<rect width="100%" height="100%" fill="white"/>{self.body}</svg>\n')


def stack(charts, gap=12):
    """Charts one above the other, as one `Svg`."""
    parts, y = [], 0
    for chart in charts:
        parts.append(f'<g transform="translate(0,{y})">{chart.body}</g>')
        y += chart.height + gap
    return Svg("".join(parts), max(c.width for c in charts), y - gap)


def nice_ticks(low, high, count=5):
    """Round tick values covering [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low] if math.isfinite(low) else [0.0]
    raw = (high - low) / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if m * step >= raw)
    first = math.ceil(low / step - 1e-9) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _fmt(v):
    return f"{v:.4g}"


def _covering(low, high):
    """(ticks, range) with the range widened to the outer ticks."""
    ticks = nice_ticks(low, high)
    return ticks, (min(low, ticks[0]), max(high, ticks[-1]))


def _fit_title(width, title):
    """A width at which a 14px title fits."""
    return max(width, int(MARGIN["left"] + 8.2 * len(title)))


class _Axes:
    """Maps data coordinates to pixels inside the margins and draws the frame."""

    def __init__(self, width, height, x_range, y_range, log_x=False, bottom=MARGIN["bottom"]):
        self.width, self.height, self.log_x = width, height, log_x
        self.x0, self.x1 = (math.log(v) for v in x_range) if log_x else x_range
        self.y0, self.y1 = y_range
        if self.x1 <= self.x0:
            self.x0, self.x1 = self.x0 - 0.5, self.x0 + 0.5
        if self.y1 <= self.y0:
            self.y0, self.y1 = self.y0 - 0.5, self.y0 + 0.5
        self.left, self.top = MARGIN["left"], MARGIN["top"]
        self.plot_w = width - MARGIN["left"] - MARGIN["right"]
        self.plot_h = height - MARGIN["top"] - bottom

    def px(self, x):
        x = math.log(x) if self.log_x else x
        return self.left + self.plot_w * (x - self.x0) / (self.x1 - self.x0)

    def py(self, y):
        return self.top + self.plot_h * (1 - (y - self.y0) / (self.y1 - self.y0))

    def frame(self, title, x_label, y_label, x_ticks, y_ticks):
        bottom, right = self.top + self.plot_h, self.left + self.plot_w
        out = [f'<text x="{self.left}" y="20" font-size="14" font-weight="600">{html.escape(title)}</text>',
               f'<line x1="{self.left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#444"/>',
               f'<line x1="{self.left}" y1="{self.top}" x2="{self.left}" y2="{bottom}" stroke="#444"/>']
        for value in y_ticks:
            y = self.py(value)
            out.append(f'<line x1="{self.left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#eee"/>'
                       f'<text x="{self.left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">'
                       f'{_fmt(value)}</text>')
        for value, label in x_ticks:
            x = self.px(value)
            out.append(f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 4}" stroke="#444"/>'
                       f'<text x="{x:.1f}" y="{bottom + 17}" font-size="11" text-anchor="middle">'
                       f'{html.escape(label)}</text>')
        out.append(f'<text x="{self.left + self.plot_w / 2:.1f}" y="{self.height - 12}" font-size="12" '
                   f'text-anchor="middle">{html.escape(x_label)}</text>'
                   f'<text x="14" y="{self.top + self.plot_h / 2:.1f}" font-size="12" text-anchor="middle" '
                   f'transform="rotate(-90 14 {self.top + self.plot_h / 2:.1f})">{html.escape(y_label)}</text>')
        return out


def line_chart(series, title="", x_label="", y_label="", x_ticks=None, log_x=False, y_range=None,
               width=640, height=340):
    """Lines with markers; `series` is a list of dicts with 'name', 'x', 'y' and optionally
    'low'/'high' (a shaded band, e.g. mean +- std) and 'colour'.

    `x_ticks`: [(x, label)] for categorical axes; by default the x values
    themselves when there are few, else round ticks.
    """
    xs = [float(v) for s in series for v in s["x"]]
    ys = [float(v) for s in series for key in ("y", "low", "high") for v in s.get(key, ())
          if math.isfinite(float(v))]
    y_ticks, y_range = _covering(*(y_range or (min(ys + [0.0]), max(ys + [0.0]))))
    width = _fit_title(width, title)
    axes = _Axes(width, height, (min(xs), max(xs)), y_range, log_x)
    if x_ticks is None:
        distinct = sorted(set(xs))
        values = distinct if len(distinct) <= 12 else nice_ticks(min(xs), max(xs))
        x_ticks = [(v, _fmt(v)) for v in values]
    out = axes.frame(title, x_label, y_label, x_ticks, y_ticks)
    for i, s in enumerate(series):
        colour = s.get("colour", PALETTE[i % len(PALETTE)])
        points = [(axes.px(float(x)), axes.py(float(y))) for x, y in zip(s["x"], s["y"]) if math.isfinite(float(y))]
        if "low" in s and "high" in s:
            upper = [(axes.px(float(x)), axes.py(float(h))) for x, h in zip(s["x"], s["high"])]
            lower = [(axes.px(float(x)), axes.py(float(lo))) for x, lo in zip(s["x"], s["low"])]
            outline = " ".join(f"{x:.1f},{y:.1f}" for x, y in upper + lower[::-1])
            out.append(f'<polygon points="{outline}" fill="{colour}" fill-opacity="0.15" stroke="none"/>')
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        if len(points) <= 60:
            out.extend(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>' for x, y in points)
        legend_y = MARGIN["top"] + 8 + 18 * i
        legend_x = width - MARGIN["right"] + 12
        out.append(f'<line x1="{legend_x}" y1="{legend_y}" x2="{legend_x + 18}" y2="{legend_y}" '
                   f'stroke="{colour}" stroke-width="3"/><text x="{legend_x + 24}" y="{legend_y + 4}" '
                   f'font-size="12">{html.escape(s["name"])}</text>')
    return Svg("".join(out), width, height)


def bar_chart(labels, values, title="", y_label="", errors=None, notes=None, colours=None, width=None,
              height=320):
    """Vertical bars, one per label; optional error bars (+-) and a note above each bar."""
    values = [float(v) for v in values]
    spread = [float(errors[i]) if errors is not None else 0.0 for i in range(len(values))]
    y_ticks, y_range = _covering(min([v - e for v, e in zip(values, spread)] + [0.0]),
                                 max([v + e for v, e in zip(values, spread)] + [0.0]))
    width = _fit_title(width or max(360, MARGIN["left"] + MARGIN["right"] + 46 * len(values)), title)
    bottom = 24 + 4 * max([len(str(label)) for label in labels] + [0])   # room for the slanted labels
    height += bottom - MARGIN["bottom"]
    axes = _Axes(width, height, (0, max(len(values), 1)), y_range, bottom=bottom)
    out = axes.frame(title, "", y_label, [], y_ticks)
    slot = axes.plot_w / max(len(values), 1)
    zero = axes.py(0.0)
    for i, (label, value) in enumerate(zip(labels, values)):
        x = axes.left + slot * (i + 0.15)
        y = axes.py(value)
        colour = colours[i] if colours else PALETTE[0]
        out.append(f'<rect x="{x:.1f}" y="{min(y, zero):.1f}" width="{slot * 0.7:.1f}" '
                   f'height="{abs(zero - y):.1f}" fill="{colour}"><title>{html.escape(str(label))}: '
                   f'{_fmt(value)}</title></rect>')
        centre = x + slot * 0.35
        if errors is not None:
            lo, hi = axes.py(value - float(errors[i])), axes.py(value + float(errors[i]))
            out.append(f'<line x1="{centre:.1f}" y1="{lo:.1f}" x2="{centre:.1f}" y2="{hi:.1f}" stroke="#222"/>')
        if notes is not None:
            out.append(f'<text x="{centre:.1f}" y="{min(y, zero) - 4:.1f}" font-size="10" '
                       f'text-anchor="middle">{html.escape(str(notes[i]))}</text>')
        base = axes.top + axes.plot_h + 12
        out.append(f'<text x="{centre:.1f}" y="{base}" font-size="11" text-anchor="end" '
                   f'transform="rotate(-35 {centre:.1f} {base})">{html.escape(str(label))}</text>')
    return Svg("".join(out), width, height)


def heat_colours(values, vmax=None):
    """(..., 3) uint8 colours of non-negative `values`: black -> red -> yellow -> white at `vmax`."""
    values = np.asarray(values, np.float64)
    vmax = float(np.max(values)) if vmax is None else float(vmax)
    t = np.clip(values / vmax, 0.0, 1.0) if vmax > 0 else np.zeros_like(values)
    rgb = np.stack([np.clip(3 * t, 0, 1), np.clip(3 * t - 1, 0, 1), np.clip(3 * t - 2, 0, 1)], axis=-1)
    return np.rint(rgb * 255).astype(np.uint8)


def upscale(image, size):
    """Nearest-neighbour resize of an (h, w, 3) uint8 image to (size, size)."""
    h, w = image.shape[:2]
    rows = np.arange(size) * h // size
    cols = np.arange(size) * w // size
    return image[rows][:, cols]


def image_grid(rows, gap=2, min_size=96):
    """uint8 grid of equally sized (h, w, 3) uint8 tiles (`rows`: a list of lists of tiles), small
    tiles enlarged by an integer factor to at least `min_size` pixels high."""
    factor = max(1, -(-min_size // rows[0][0].shape[0]))
    rows = [[tile.repeat(factor, axis=0).repeat(factor, axis=1) for tile in row] for row in rows]
    h, w = rows[0][0].shape[:2]
    columns = max(len(r) for r in rows)
    sheet = np.full((len(rows) * (h + gap) - gap, columns * (w + gap) - gap, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            sheet[i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = tile
    return sheet


def png_bytes(image):
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
