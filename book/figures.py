"""Static images from plotly figures, for the book (`make book`).

The notebooks keep their figures as plotly JSON outputs and docs/results/ keeps them as
plotly HTML files; a static page needs pictures. This module reads a figure from either
form, turns a notebook's plotly outputs into SVG image outputs, and draws the SVGs with
plotly's exporter, kaleido, which drives a headless Chromium (Debian's /usr/bin/chromium
when it is there) with the plotly.js that ships with the plotly package: no network.
"""
import json
import os
import re
from pathlib import Path

PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
SVG_MIME = "image/svg+xml"
CHROMIUM = Path("/usr/bin/chromium")
# Size of a figure whose layout does not give one (plotly's HTML figures fill the window).
DEFAULT_WIDTH, DEFAULT_HEIGHT = 860, 500


def figure_from_html(text: str) -> dict:
    """The figure ({"data", "layout"}) that a plotly `write_html` file draws.

    plotly writes ``Plotly.newPlot("div id", [traces], {layout}, {config})`` with JSON
    arguments, so the JSON decoder reads them one after the other.
    """
    call = "Plotly.newPlot("
    start = text.find(call)
    if start < 0:
        raise ValueError("no Plotly.newPlot call in this HTML file")
    decoder, pos, args = json.JSONDecoder(), start + len(call), []
    for _ in range(3):  # the div id, the traces, the layout
        while text[pos] in " \t\r\n,":
            pos += 1
        value, pos = decoder.raw_decode(text, pos)
        args.append(value)
    _, data, layout = args
    return {"data": data, "layout": layout}


def figure_size(fig: dict) -> tuple:
    """(width, height) in pixels: the layout's own, else the defaults above."""
    layout = fig.get("layout", {})
    return layout.get("width") or DEFAULT_WIDTH, layout.get("height") or DEFAULT_HEIGHT


def figure_title(fig: dict) -> str:
    """The figure's title as plain text on one line ("" when it has none); plotly titles may
    hold HTML tags such as <br> or <b>."""
    title = fig.get("layout", {}).get("title") or {}
    text = title.get("text", "") if isinstance(title, dict) else str(title)
    return " ".join(re.sub(r"<[^>]*>", " ", text or "").split())


def plotly_outputs(nb: dict) -> list:
    """Every plotly output of a notebook (as JSON), in the order the notebook shows them."""
    return [out for cell in nb["cells"] if cell["cell_type"] == "code"
            for out in cell.get("outputs", []) if PLOTLY_MIME in out.get("data", {})]


def to_static(nb: dict, svgs: list, dashboard_note: str) -> dict:
    """The notebook with its i-th plotly output replaced by an SVG image output ``svgs[i]``
    (text), and each live-widget output replaced by the Markdown ``dashboard_note``.

    A widget needs a kernel to draw; in a static page it would be an empty box.
    """
    figures = plotly_outputs(nb)
    if len(figures) != len(svgs):
        raise ValueError(f"{len(figures)} plotly outputs but {len(svgs)} images")
    for out, svg in zip(figures, svgs):
        title = figure_title(out["data"][PLOTLY_MIME]) or "figure"
        out["data"] = {SVG_MIME: svg, "text/plain": f"<figure: {title}>"}
        out["metadata"] = {SVG_MIME: {"alt": title}}  # MyST-NB's alt text for the image
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            if WIDGET_MIME in out.get("data", {}):
                out["data"] = {"text/markdown": dashboard_note}
    nb.get("metadata", {}).pop("widgets", None)  # no saved widget state to embed
    return nb


def export_svgs(jobs: list) -> None:
    """Draw every figure of ``jobs`` [(figure dict, svg path)] in one Chromium session.

    kaleido starts a browser once for the whole list (one start per figure would take about
    3 s each); MathJax is off, since these figures have no TeX and its default is a CDN.
    """
    if not jobs:
        return
    if CHROMIUM.exists():
        os.environ.setdefault("BROWSER_PATH", str(CHROMIUM))
    import kaleido

    specs = []
    for fig, path in jobs:
        # plotly.js names each trace by its uid, random unless given: fix them
        fig = {**fig, "data": [{**trace, "uid": f"trace{i}"} for i, trace in enumerate(fig["data"])]}
        width, height = figure_size(fig)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        specs.append({"fig": fig, "path": Path(path),
                      "opts": {"format": "svg", "width": width, "height": height, "scale": 1}})
    kaleido.write_fig_from_object_sync(specs, kopts={"mathjax": False})
    missing = [str(path) for _, path in jobs if not Path(path).is_file()]
    if missing:
        raise RuntimeError(f"kaleido wrote no image for {missing}")
    for _, path in jobs:
        Path(path).write_text(stable_ids(Path(path).read_text()))


def stable_ids(svg: str) -> str:
    """The SVG with plotly.js's random figure id (in clip-path, legend and defs ids) replaced
    by a fixed one, so that the same figure always gives the same file."""
    uid = re.search(r'id="defs-(\w+)"', svg)
    if uid is None:
        return svg
    return re.sub(rf"\b(clip|legend|defs-|topdefs-){uid.group(1)}", r"\1fig", svg)
