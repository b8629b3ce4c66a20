"""Build the book, a static site to read before the lab: `make book` runs this file.

1. Copies the book's own files (book/conf.py, book/*.md, book/_static/) into build/book-src/.
2. Copies every notebook (notebooks/*.ipynb) there with its committed outputs, as the student
   copy (`make student`: each exercise's answer replaced by a stub; `--answers` keeps them, a
   teacher's edition): each plotly figure becomes an SVG image, the live dashboard a short note,
   and a box under the title says which file to open with `make lab` and links the notebook.
3. Copies the docs pages (docs/*.md); results.md gets each figure of docs/results/*.html as an
   SVG at the end of its section, linked to the interactive HTML, which the site also holds.
4. Runs Sphinx (MyST-NB, never executing a notebook) into build/book/.

    .venv/bin/python book/build.py [--src DIR] [--out DIR] [--strict] [--answers]

The notebooks/ and docs/ folders are only read. The same sources give the same site.
"""
import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "notebooks"))
import figures  # noqa: E402 (book/figures.py, next to this file)
import student  # noqa: E402 (notebooks/student.py: the student copies)

BOOK = Path(__file__).resolve().parent
ROOT = BOOK.parent
RESULTS = ROOT / "docs" / "results"

DASHBOARD_NOTE = ("**The live dashboard draws here when the notebook runs in JupyterLab** "
                  "(`make lab`, then *Run → Run All Cells*); a static page cannot run it.")

# Where each figure of docs/results/ goes in results.md: at the end of the section whose
# heading starts with "## <number>." (or "### <number>."). A figure missing here goes to a
# last section of its own, so that no figure is left out.
RESULT_FIGURES = {
    "coord": "1", "coord_averaged": "1", "lr_transfer": "2", "accuracy": "3",
    "damping_transfer": "4", "zero_readout": "5", "zero_readout_sweep": "5",
    "shampoo_root_widths": "6", "cnn_coord": "7a", "cnn_damping": "7c", "scale": "8",
    "scale_lr_digits": "8", "scale_lr_mnist1d": "8", "your_model_coord": "9",
    "family_coord": "11", "family_lr": "11",
}


def reader_copy(path: Path, answers: bool = False) -> str:
    """The notebook at ``path`` as the book shows and links it (JSON text): the student copy,
    answers replaced by stubs and the exercises' outputs cleared, or as committed (``answers``)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    return nbformat.writes(nb if answers else student.student_copy(nb, path.stem)) + "\n"


def lab_box(name: str, answers: bool = False) -> str:
    """The Markdown box, under a notebook's title, saying how to run it in the lab."""
    shown = "as committed" if answers else "with the exercises' answers left for you to write"
    return (f"```{{admonition}} Run this notebook in the lab\n:class: tip\n\n"
            f"This page shows `notebooks/{name}` run at class size, {shown}. To run it "
            f"yourself, start the lab with `make lab` from the repository root and open "
            f"`notebooks/{name}` in its file browser "
            f"(`http://127.0.0.1:8888/lab/tree/notebooks/{name}`), then *Run → Run All Cells*. "
            f"Download the notebook: {{download}}`{name} <../_committed/{name}>`.\n```\n")


def with_lab_box(nb: dict, name: str, answers: bool = False) -> dict:
    """The notebook with the lab box inserted right after its title (its first heading)."""
    for cell in nb["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        lines = "".join(cell["source"]).split("\n")
        for i, line in enumerate(lines):
            if line.startswith("# "):
                lines[i + 1:i + 1] = ["", lab_box(name, answers)]
                cell["source"] = "\n".join(lines)
                return nb
    raise ValueError(f"{name} has no title (a '# ' heading in a Markdown cell)")


def section_ends(lines: list) -> dict:
    """{section number: index of the line after its section} for the numbered headings
    ("## 1. ...", "### 7a. ...") of a Markdown page, code blocks skipped."""
    headings, fenced = [], False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
        match = None if fenced else re.match(r"(#+) (\w+)\.? ", line)
        if match:
            headings.append((i, len(match.group(1)), match.group(2)))
    ends = {}
    for k, (_, level, number) in enumerate(headings):
        later = [i for i, lev, _ in headings[k + 1:] if lev <= level]
        ends[number] = later[0] if later else len(lines)
    return ends


def figure_block(name: str, title: str) -> str:
    """A MyST figure: the SVG, linked to the interactive HTML figure."""
    return (f"```{{figure}} results/{name}.svg\n:alt: {title}\n:target: results/{name}.html\n\n"
            f"`docs/results/{name}.html`: {title}. Click the picture for the interactive figure.\n"
            "```\n")


def results_with_figures(text: str, titles: dict) -> str:
    """results.md with a figure block for each ``titles`` {figure name: title}."""
    lines = text.split("\n")
    ends = section_ends(lines)
    inserts, unplaced = {}, []
    for name in sorted(titles):
        end = ends.get(RESULT_FIGURES.get(name))
        if end is None:
            unplaced.append(name)
        else:
            inserts.setdefault(end, []).append(figure_block(name, titles[name]))
    for end in sorted(inserts, reverse=True):
        lines[end:end] = [block for b in inserts[end] for block in ("", b)]
    if unplaced:
        lines += ["", "## Other figures", ""] + [figure_block(n, titles[n]) for n in unplaced]
        print(f"book: results.md does not place {unplaced}; they go to 'Other figures'")
    return "\n".join(lines)


def copy_book(src: Path) -> None:
    """The book's own files: conf.py, its pages, its style sheet."""
    shutil.copy(BOOK / "conf.py", src / "conf.py")
    for page in sorted(BOOK.glob("*.md")):
        shutil.copy(page, src / page.name)
    shutil.copytree(BOOK / "_static", src / "_static")


def with_unlisted_docs(index: str, pages: list) -> str:
    """index.md with a last table of contents for the docs pages (names like "docs/guide")
    that index.md does not list, so that a new docs page is in the book too."""
    unlisted = [page for page in pages if not re.search(rf"^{re.escape(page)}$", index, re.M)]
    if not unlisted:
        return index
    print(f"book: index.md does not list {unlisted}; they go to 'More documentation'")
    return index + "\n```{toctree}\n:caption: More documentation\n:maxdepth: 1\n\n" + "\n".join(unlisted) + "\n```\n"


def prepare(src: Path, answers: bool = False) -> int:
    """Write the whole Sphinx project into ``src`` (the notebooks' answers hidden unless
    ``answers``); returns the number of figures drawn."""
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    copy_book(src)
    jobs, notebooks = [], []
    (src / "_committed").mkdir()  # the notebooks as the book shows them, for download
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        text = reader_copy(path, answers)
        (src / "_committed" / path.name).write_text(text)
        nb = json.loads(text)
        outputs = figures.plotly_outputs(nb)
        svgs = [src / "_svg" / f"{path.stem}_{i}.svg" for i in range(len(outputs))]
        jobs += [(out["data"][figures.PLOTLY_MIME], svg) for out, svg in zip(outputs, svgs)]
        notebooks.append((path.name, nb, svgs))
    docs = src / "docs"
    docs.mkdir()
    for page in sorted((ROOT / "docs").glob("*.md")):
        shutil.copy(page, docs / page.name)
    pages = [f"docs/{page.stem}" for page in sorted(docs.glob("*.md"))]
    (src / "index.md").write_text(with_unlisted_docs((src / "index.md").read_text(), pages))
    titles, extra = {}, src / "_extra" / "docs" / "results"  # _extra/ is copied into the site as is
    extra.mkdir(parents=True)
    for html in sorted(RESULTS.glob("*.html")):
        fig = figures.figure_from_html(html.read_text())
        titles[html.stem] = figures.figure_title(fig) or html.stem
        jobs.append((fig, docs / "results" / f"{html.stem}.svg"))
        shutil.copy(html, extra / html.name)
    if titles:
        shutil.copy(RESULTS / "plotly.min.js", extra / "plotly.min.js")
    start = time.monotonic()
    figures.export_svgs(jobs)
    print(f"book: {len(jobs)} figures drawn in {time.monotonic() - start:.1f} s")
    (src / "notebooks").mkdir()
    for name, nb, svgs in notebooks:
        nb = figures.to_static(nb, [svg.read_text() for svg in svgs], DASHBOARD_NOTE)
        (src / "notebooks" / name).write_text(json.dumps(with_lab_box(nb, name, answers), indent=1, ensure_ascii=False))
    shutil.rmtree(src / "_svg", ignore_errors=True)
    results = docs / "results.md"
    if results.exists():
        results.write_text(results_with_figures(results.read_text(), titles))
    return len(jobs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", type=Path, default=ROOT / "build" / "book-src", help="the Sphinx project")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "book", help="the site")
    parser.add_argument("--strict", action="store_true", help="fail on any Sphinx warning")
    parser.add_argument("--answers", action="store_true",
                        help="show the exercises' answers (a teacher's edition; default: the student copy)")
    args = parser.parse_args(argv)
    start = time.monotonic()
    prepare(args.src, args.answers)
    # MyST-NB writes the notebooks' images to jupyter_execute/ beside the site first: start clean
    for old in (args.out, args.out.parent / "jupyter_execute"):
        shutil.rmtree(old, ignore_errors=True)
    command = [sys.executable, "-m", "sphinx", "-b", "html", "-q", "-E", str(args.src), str(args.out),
               "-d", str(args.src / "_build" / "doctrees")] + (["-W", "--keep-going"] if args.strict else [])
    done = subprocess.run(command).returncode
    if done == 0:
        print(f"book: {args.out / 'index.html'} in {time.monotonic() - start:.0f} s")
    return done


if __name__ == "__main__":
    sys.exit(main())
