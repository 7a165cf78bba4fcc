"""Charts for the dashboard, drawn on the server as inline SVG: nothing to vendor, nothing fetched.

Each function returns :class:`markupsafe.Markup` to drop into a template. Labels pass through
:func:`markupsafe.escape`; colours come from CSS classes (``dashboard.css``), so the charts follow
the page's theme. The ``viewBox`` scales each chart to its container's width (narrow screens too).

Example::

    >>> svg = bars([("C3", 0.21), ("C1", 0.05)], fmt="{:.2f}")
    >>> svg.startswith("<svg") and "C3" in svg and "0.21" in svg
    True
    >>> "<polyline" in line_chart([1, 2, 3], [("val AUC", [0.70, 0.72, 0.71], "{:.3f}")])
    True
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

WIDTH = 640


def _label(text: str, limit: int = 22) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def bars(items: Sequence[tuple[str, float]], *, fmt: str = "{:.3g}", css: Sequence[str] | None = None,
         title: str = "", scale_max: float | None = None, notes: Sequence[str] | None = None) -> Markup:
    """A horizontal bar per (label, value), longest = ``scale_max`` (default: the largest value);
    ``notes[i]``, when not empty, is added to bar i's tooltip."""
    row, top, label_w, value_w = 22, 6, 170, 70
    height = top * 2 + row * max(len(items), 1)
    peak = scale_max if scale_max is not None else max((v for _, v in items), default=0.0)
    span = WIDTH - label_w - value_w - 10
    parts = [f'<svg class="chart bars" viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{escape(title)}">']
    if title:
        parts.append(f"<title>{escape(title)}</title>")
    for i, (label, value) in enumerate(items):
        y = top + i * row
        w = 0.0 if peak <= 0 else max(1.0, span * max(value, 0.0) / peak)
        cls = f"bar {css[i]}" if css else "bar"
        note = f" ({notes[i]})" if notes and notes[i] else ""
        parts.append(
            f'<g class="bar-row"><title>{escape(label)}: {escape(fmt.format(value))}{escape(note)}</title>'
            f'<text class="label" x="{label_w - 8}" y="{y + 15}" text-anchor="end">{escape(_label(label))}</text>'
            f'<rect class="{cls}" x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row - 7}" rx="2"/>'
            f'<text class="value" x="{label_w + w + 6:.1f}" y="{y + 15}">{escape(fmt.format(value))}</text></g>')
    parts.append("</svg>")
    return Markup("".join(parts))


def budget(actual: float | None, limit: float | None, reference: float | None, unit: str) -> Markup:
    """One figure against its budget: a bar for ``actual``, a line at ``limit``, a faint bar for
    ``reference`` (the all-features model). Over budget, the bar turns red."""
    if actual is None:
        return Markup('<p class="muted">not measured</p>')
    height, x0, span = 64, 10, WIDTH - 20
    peak = max(v for v in (actual, limit, reference, 1e-12) if v is not None) * 1.08

    def x(v: float) -> float:
        return x0 + span * v / peak

    over = limit is not None and actual > limit
    parts = [f'<svg class="chart budget" viewBox="0 0 {WIDTH} {height}" role="img" '
             f'aria-label="{actual:.4g} {unit} of {"no budget" if limit is None else f"{limit:g} {unit}"}">']
    if reference is not None:
        parts.append(f'<rect class="reference" x="{x0}" y="8" width="{x(reference) - x0:.1f}" height="10" rx="2">'
                     f'<title>all features: {reference:.4g} {unit}</title></rect>'
                     f'<text class="small" x="{x0}" y="32">all features {reference:.4g} {unit}</text>')
    parts.append(f'<rect class="bar{" over" if over else ""}" x="{x0}" y="38" width="{max(1.0, x(actual) - x0):.1f}" '
                 f'height="16" rx="2"><title>this version: {actual:.4g} {unit}</title></rect>'
                 + (f'<text class="value" x="{x(actual) + 6:.1f}" y="51">{actual:.4g} {unit}</text>'
                    if x(actual) < WIDTH * 0.75 else
                    f'<text class="value inside" x="{x(actual) - 6:.1f}" y="51" text-anchor="end">'
                    f'{actual:.4g} {unit}</text>'))
    if limit is not None:
        lx = x(limit)
        parts.append(f'<line class="limit" x1="{lx:.1f}" x2="{lx:.1f}" y1="2" y2="{height - 2}"/>'
                     f'<text class="small limit-label" x="{lx - 4 if lx > WIDTH / 3 else lx + 4:.1f}" y="32" '
                     f'text-anchor="{"end" if lx > WIDTH / 3 else "start"}">budget {limit:g} {unit}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def line_chart(xs: Sequence[int], series: Sequence[tuple[str, Sequence[float | None], str]], *,
               marks: Sequence[str] | None = None, title: str = "") -> Markup:
    """Lines over versions ``xs``, one panel per series (name, values, fmt), stacked, each with its
    own scale and the versions below the last. ``marks[i]`` is a CSS class for point i of the first
    series (``promoted``, ``rejected``, ``pending``)."""
    left, right, top, panel_h, gap, bottom = 64, 24, 8, 96, 34, 26
    plot_w, n = WIDTH - left - right, len(xs)
    height = top + len(series) * (panel_h + gap) + bottom - gap

    def px(i: int) -> float:
        return left + (plot_w * i / (n - 1) if n > 1 else plot_w / 2)

    parts = [f'<svg class="chart lines" viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{escape(title)}">']
    for k, (name, values, fmt) in enumerate(series):
        y0 = top + k * (panel_h + gap) + 18  # the panel's plot area starts under its name
        h = panel_h - 18
        parts.append(f'<text class="panel s{k}" x="{left}" y="{y0 - 6}">{escape(name)}</text>'
                     f'<line class="axis" x1="{left}" x2="{left + plot_w}" y1="{y0 + h}" y2="{y0 + h}"/>')
        known = [v for v in values if v is not None]
        if not known:
            continue
        lo, hi = min(known), max(known)
        pad = (hi - lo) * 0.15 or abs(hi) * 0.05 or 1.0

        def py(v: float, lo: float = lo - pad, hi: float = hi + pad, y0: float = y0, h: float = h) -> float:
            return y0 + h * (1 - (v - lo) / (hi - lo))

        for v in sorted({lo, hi}):
            parts.append(f'<line class="grid" x1="{left}" x2="{left + plot_w}" y1="{py(v):.1f}" y2="{py(v):.1f}"/>'
                         f'<text class="small s{k}" x="{left - 6}" y="{py(v) + 4:.1f}" text-anchor="end">'
                         f"{escape(fmt.format(v))}</text>")
        points = [(px(i), py(v)) for i, v in enumerate(values) if v is not None]
        parts.append(f'<polyline class="line s{k}" points="{" ".join(f"{a:.1f},{b:.1f}" for a, b in points)}"/>')
        for i, v in enumerate(values):
            if v is None:
                continue
            mark = f" {marks[i]}" if marks and k == 0 else ""
            parts.append(f'<circle class="point s{k}{mark}" cx="{px(i):.1f}" cy="{py(v):.1f}" r="4.5">'
                         f"<title>v{xs[i]} {escape(name)}: {escape(fmt.format(v))}</title></circle>")
    step = max(1, n // 12)  # at most about a dozen version labels
    for i, x in enumerate(xs):
        if i % step == 0 or i == n - 1:
            parts.append(f'<text class="small" x="{px(i):.1f}" y="{height - 8}" text-anchor="middle">v{x}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
