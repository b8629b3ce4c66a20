"""The book (`make book`): a static site built from the notebooks and docs, read offline.

The first tests check book/build.py's and book/figures.py's steps on small inputs. The others
build the whole book once (into a temporary folder, with Sphinx's warnings as errors), then
open the index and every page in Debian's headless Chromium (via playwright) from file://
URLs: every image is decoded, each notebook page shows one picture per plotly figure of the
notebook and links the notebook to open with `make lab`, the results page shows each figure
of docs/results/, the console stays clean, no request leaves file://, and search finds K-FAC.
"""
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
RESULT_FIGURES = sorted((ROOT / "docs" / "results").glob("*.html"))
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                    "(apt-get install -y chromium; .ci/run installs it)")


def load(name):
    """book/<name>.py as a module (book/ is not a package)."""
    sys.path.insert(0, str(ROOT / "book"))  # build.py imports figures.py from its folder
    spec = importlib.util.spec_from_file_location(f"book_{name}", ROOT / "book" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


figures, build = load("figures"), load("build")


# ---------------------------------------------------------------- the build's steps, no browser
def test_figure_from_html_reads_what_plotly_wrote(tmp_path):
    import plotly.graph_objects as go
    fig = go.Figure(go.Scatter(x=[1, 2, 3], y=[4.0, 5.0, 7.0], name="loss"), layout_title_text="a title")
    fig.write_html(tmp_path / "f.html", include_plotlyjs="directory")
    got = figures.figure_from_html((tmp_path / "f.html").read_text())
    assert [t["name"] for t in got["data"]] == ["loss"] and got["data"][0]["x"] == [1, 2, 3]
    assert figures.figure_title(got) == "a title"
    assert figures.figure_title({"layout": {"title": {"text": "loss<br><sub>width 64</sub>"}}}) == "loss width 64"
    assert figures.figure_size(got) == (figures.DEFAULT_WIDTH, figures.DEFAULT_HEIGHT)
    with pytest.raises(ValueError, match="Plotly.newPlot"):
        figures.figure_from_html("<html>no figure</html>")


@pytest.mark.parametrize("path", RESULT_FIGURES, ids=lambda p: p.stem)
def test_every_results_figure_is_read_and_placed(path):
    fig = figures.figure_from_html(path.read_text())
    assert fig["data"], f"{path.name}: no traces"
    sections = build.section_ends((ROOT / "docs" / "results.md").read_text().split("\n"))
    assert build.RESULT_FIGURES.get(path.stem) in sections, \
        f"{path.name}: say in book/build.py's RESULT_FIGURES which section of docs/results.md shows it"


def test_to_static_turns_plotly_outputs_into_images_and_the_widget_into_a_note():
    nb = json.loads((ROOT / "notebooks" / "00_playground.ipynb").read_text())
    n = len(figures.plotly_outputs(nb))
    assert n > 0
    with pytest.raises(ValueError, match="plotly outputs"):
        figures.to_static(json.loads(json.dumps(nb)), ["<svg/>"] * (n + 1), "note")
    static = figures.to_static(nb, [f"<svg id='{i}'/>" for i in range(n)], "the dashboard runs in the lab")
    outputs = [o for c in static["cells"] for o in c.get("outputs", [])]
    assert not figures.plotly_outputs(static)
    assert [o["data"][figures.SVG_MIME] for o in outputs if figures.SVG_MIME in o.get("data", {})] == \
        [f"<svg id='{i}'/>" for i in range(n)]
    assert not any(figures.WIDGET_MIME in o.get("data", {}) for o in outputs)
    assert any(o.get("data", {}).get("text/markdown") == "the dashboard runs in the lab" for o in outputs)


def test_stable_ids_replace_plotlys_random_figure_id():
    svg = ('<svg><defs id="defs-a1b2c3"><clipPath id="clipa1b2c3xyplot"/></defs>'
           '<g clip-path="url(#clipa1b2c3xyplot)"/><g id="legenda1b2c3"/><text>a1b2c3</text></svg>')
    out = figures.stable_ids(svg)
    assert 'id="defs-fig"' in out and "url(#clipfigxyplot)" in out and 'id="legendfig"' in out
    assert "<text>a1b2c3</text>" in out  # only the ids change


def test_results_figures_go_to_the_end_of_their_section():
    text = "# R\n\n## 1. One\n\ntext\n\n### 1a. Sub\n\nsub\n\n```\n## 2. not a heading\n```\n\n## 2. Two\n\nend"
    titles = {"coord": "Coord", "lr_transfer": "LR", "new_figure": "New"}
    out = build.results_with_figures(text, titles)
    assert out.index("results/coord.svg") < out.index("## 2. Two") < out.index("results/lr_transfer.svg")
    assert out.index("### 1a. Sub") < out.index("results/coord.svg")
    assert ":target: results/coord.html" in out
    assert out.index("## Other figures") < out.index("results/new_figure.svg")


def test_lab_box_goes_under_the_title():
    nb = {"cells": [{"cell_type": "markdown", "source": ["# 02 · Title\n", "\n", "Intro."]}]}
    source = build.with_lab_box(nb, "02_x.ipynb")["cells"][0]["source"]
    assert source.startswith("# 02 · Title\n\n```{admonition} Run this notebook in the lab")
    assert "`make lab`" in source and "{download}" in source and source.endswith("Intro.")
    with pytest.raises(ValueError, match="no title"):
        build.with_lab_box({"cells": [{"cell_type": "markdown", "source": "no heading"}]}, "x.ipynb")


def test_reader_copy_hides_the_answers_unless_asked(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 21")])
    answer = nbformat.v4.new_code_cell("# Define y: twice x.\ny = 2 * x", metadata={"tags": ["solution"]})
    check = nbformat.v4.new_code_cell("assert y == 42", metadata={"tags": ["exercise-check"]})
    nb.cells += [answer, check]
    nbformat.write(nb, tmp_path / "01_x.ipynb")
    hidden = json.loads(build.reader_copy(tmp_path / "01_x.ipynb"))
    assert "y = 2 * x" not in json.dumps(hidden) and "NotImplementedError" in json.dumps(hidden)
    assert "y = 2 * x" in build.reader_copy(tmp_path / "01_x.ipynb", answers=True)
    assert "answers left for you to write" in build.lab_box("01_x.ipynb")
    assert "as committed" in build.lab_box("01_x.ipynb", answers=True)


def test_unlisted_docs_pages_still_get_into_the_book():
    index = "```{toctree}\ndocs/results\n```\n"
    assert build.with_unlisted_docs(index, ["docs/results"]) == index
    out = build.with_unlisted_docs(index, ["docs/results", "docs/new"])
    assert out.endswith("docs/new\n```\n") and ":caption: More documentation" in out


# ---------------------------------------------------------------- the built book, in Chromium
@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The book, built once for this module (Sphinx warnings are errors): its folder."""
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium (kaleido and the page checks use it)")
    tmp = tmp_path_factory.mktemp("book")
    done = subprocess.run([sys.executable, str(ROOT / "book" / "build.py"), "--src", str(tmp / "src"),
                           "--out", str(tmp / "site"), "--strict"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"book/build.py failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return tmp / "site"


def pages(site):
    """Every page of the site: the index, notebooks, docs, search and index pages (not the
    interactive plotly figures under docs/results/, which are files the pages link)."""
    return sorted(p for p in site.rglob("*.html")
                  if not p.relative_to(site).as_posix().startswith(("_static/", "docs/results/")))


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


IMAGES = """() => [...document.images].map(i => ({src: i.getAttribute('src'), complete: i.complete,
    width: i.naturalWidth, output: !!i.closest('.cell_output'),
    link: i.closest('a') ? i.closest('a').getAttribute('href') : null}))"""


def open_page(browser, url):
    """Open ``url``; returns (page, problems): console errors and warnings, page errors and
    requests that leave file://, as they come."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("request", lambda r: None if r.url.startswith(("file://", "data:", "blob:"))
            else problems.append(f"request off the disk: {r.url}"))
    page.goto(url, wait_until="load")
    page.wait_for_function("[...document.images].every(i => i.complete)", timeout=20_000)
    return page, problems


def local_file(page, href):
    """The file a relative link of ``page`` points to."""
    return Path(unquote(urlparse(page.url).path)).parent.joinpath(unquote(href.split("#")[0])).resolve()


def test_the_site_loads_nothing_from_the_network(site):
    """No page names a script, style sheet or image on another host (MathJax, fonts, widgets)."""
    assert (site / "index.html").is_file()
    for path in pages(site):
        text = path.read_text()
        remote = re.findall(r'<(?:script|link|img|iframe)\b[^>]*(?:src|href)="(?:https?:)?//[^"]*"', text)
        assert not remote, f"{path.relative_to(site)} loads {remote}"
        assert not re.search(r'<script\b[^>]*src="[^"]*mathjax', text, re.I), f"{path.relative_to(site)} loads MathJax"


@needs_chromium
def test_every_page_opens_cleanly_with_every_image_drawn(site, browser):
    seen = pages(site)
    assert {"index.html", "search.html", "docs/results.html"} <= {p.relative_to(site).as_posix() for p in seen}
    assert len([p for p in seen if p.parent.name == "notebooks"]) == len(NOTEBOOKS)
    for path in seen:
        page, problems = open_page(browser, path.as_uri())
        images = page.evaluate(IMAGES)
        broken = [i["src"] for i in images if not i["complete"] or i["width"] == 0]
        page.close()
        assert not broken, f"{path.relative_to(site)}: images not drawn: {broken}"
        assert not problems, f"{path.relative_to(site)}: {problems}"


@needs_chromium
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_page_shows_every_figure_and_how_to_open_it(site, browser, notebook):
    n_figures = len(figures.plotly_outputs(json.loads(notebook.read_text())))
    page, problems = open_page(browser, (site / "notebooks" / f"{notebook.stem}.html").as_uri())
    pictures = [i for i in page.evaluate(IMAGES) if i["output"]]
    assert len(pictures) == n_figures and all(i["width"] > 0 for i in pictures)
    box = page.locator(".admonition", has_text="Run this notebook in the lab")
    assert box.count() == 1
    text = box.inner_text()
    assert "make lab" in text and f"notebooks/{notebook.name}" in text
    href = box.locator("a[download]").get_attribute("href")
    assert href.endswith(notebook.name)
    # the student copy (answers replaced by stubs), as `make student` writes it
    assert local_file(page, href).read_text() == build.reader_copy(notebook)
    cells = json.loads(notebook.read_text())["cells"]
    solutions = [c for c in cells if "solution" in c["metadata"].get("tags", [])]
    elsewhere = {line.strip() for c in cells if c not in solutions for line in "".join(c["source"]).splitlines()}
    shown = {line.strip() for line in page.inner_text("main").splitlines()}
    for cell in solutions:   # no line of an answer is on the page (the task's comment lines are)
        answer = [line.strip() for line in "".join(cell["source"]).splitlines()
                  if line.strip() and not line.startswith("#") and line.strip() not in elsewhere]
        assert answer and not [line for line in answer if line in shown], notebook.stem
    if notebook.stem == "00_playground":
        assert "The live dashboard draws here when the notebook runs in JupyterLab" in page.inner_text("main")
    page.close()
    assert not problems


@needs_chromium
def test_results_page_shows_each_figure_linked_to_its_interactive_html(site, browser):
    page, problems = open_page(browser, (site / "docs" / "results.html").as_uri())
    images = {Path(i["src"]).stem: i for i in page.evaluate(IMAGES)}
    for html in RESULT_FIGURES:
        assert html.stem in images, f"no picture of {html.name}"
        assert images[html.stem]["width"] > 0
        link = images[html.stem]["link"]
        assert link == f"results/{html.name}"
        assert local_file(page, link).read_bytes() == html.read_bytes()
    assert (site / "docs" / "results" / "plotly.min.js").is_file()  # what the interactive figures load
    page.close()
    assert not problems


@needs_chromium
def test_search_finds_kfac_offline(site, browser):
    page, problems = open_page(browser, (site / "search.html").as_uri() + "?q=K-FAC")
    page.wait_for_function("() => document.querySelectorAll('#search-results li a').length > 0", timeout=30_000)
    found = page.eval_on_selector_all("#search-results li a", "as => as.map(a => a.getAttribute('href'))")
    page.close()
    assert any("notebooks/02_kfac_mup" in href for href in found), found
    assert not problems
