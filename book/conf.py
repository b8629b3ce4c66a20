"""Sphinx configuration of the book that `make book` builds (see book/build.py).

book/build.py copies this file, the book's own pages and a static copy of every notebook and
docs page into build/book-src/, then runs Sphinx on that folder. MyST-NB reads the notebooks
and never executes them: each page shows the committed, class-size outputs, with the plotly
figures already turned into SVG images. Everything the site needs ships with it: no math
(the pages hold no TeX, so no MathJax), no web fonts, no widget scripts from a CDN.
"""
project = "mupso_lite"
author = "the mupso_lite authors"
copyright = "the mupso_lite authors"  # noqa: A001 (Sphinx's name)
html_title = "mupso_lite: width-scaled second-order optimization"

extensions = ["myst_nb"]

# MyST-NB: render the committed outputs, never run a kernel
nb_execution_mode = "off"
nb_merge_streams = True
nb_ipywidgets_js = {}  # the live dashboard only runs in the lab: no widget scripts from a CDN
myst_heading_anchors = 3  # links to a section (#heading) inside a page

exclude_patterns = ["_build", "_committed", "_extra", "**.ipynb_checkpoints"]

html_theme = "sphinx_book_theme"
html_theme_options = {
    "home_page_in_toc": True,
    "show_navbar_depth": 1,
    "show_toc_level": 2,
    "use_download_button": False,  # each notebook page links the committed .ipynb itself
    "use_fullscreen_button": False,
}
html_static_path = ["_static"]
html_css_files = ["book.css"]
html_extra_path = ["_extra"]  # docs/results/*.html, the interactive figures, and plotly.min.js
html_copy_source = False
html_show_sourcelink = False
html_last_updated_fmt = None  # no build date: the same sources give the same site
html_context = {"default_mode": "light"}  # the figures are drawn on white
html_show_search_summary = False  # a summary needs fetch(), which file:// pages may not use
