"""The dashboard's figures without a browser: updates throttled, pushes paced by the browser's
acknowledgements (and not while a blocking wait keeps the kernel from hearing them), a page that
connects later gets the figures as they are now, and the browser code matches plotly's."""
import re
import time

import pytest

pytest.importorskip("ipywidgets")
from mupso_lite.dashboard import Dashboard  # noqa: E402
from test_dashboard import wait_for  # noqa: E402


def test_figure_updates_are_throttled():
    dash = Dashboard(width=64, steps=400, optimizer="adam", update_interval=0.2).run(wait=True)
    seconds = dash.records[-1]["seconds"]
    assert dash.live["loss"].pushes <= seconds / 0.2 + 3
    assert len(dash.loss_figure.data[0].x) == 400  # but every point arrives


def browser_draws(figure):
    """What a browser view of ``figure`` sends once it has drawn the newest edit: plotly's
    acknowledgement, received through the widget's state as the kernel receives it."""
    from mupso_lite.plotly_widget import edit_id
    figure.set_state({"_js2py_traceDeltas": {"trace_edit_id": edit_id(figure), "trace_deltas": []}})


def test_figures_wait_for_the_browser_to_draw_the_last_update():
    # A browser that stops answering (reloaded, frozen, too slow) gets one push every ACK_TIMEOUT
    # seconds, not every update_interval: no flood piles up in the Jupyter server.
    from mupso_lite.live import ACK_TIMEOUT
    assert ACK_TIMEOUT >= 2
    dash = Dashboard(width=64, steps=2000, optimizer="sgd", update_interval=0.05)
    loss = dash.live["loss"]
    browser_draws(dash.loss_figure)          # a browser shows the (empty) figure
    dash.run()                               # the Run button: the kernel hears the browser meanwhile
    assert wait_for(lambda: loss.pushes >= 1 and len(dash.records) >= 20)   # the first point: at once
    silent = loss.pushes
    time.sleep(1.5)                          # 30 update intervals, the browser silent
    assert loss.pushes - silent <= 1, loss.pushes - silent
    before, end = loss.pushes, time.monotonic() + 1.5
    while time.monotonic() < end:            # the browser draws every push: back to the interval's pace
        browser_draws(dash.loss_figure)
        time.sleep(0.01)
    assert dash.running and loss.pushes - before >= 8, loss.pushes - before
    dash.close()


def test_a_blocking_wait_pushes_without_waiting_for_the_browser():
    # run(wait=True) blocks the kernel, which then cannot hear the browser: pushes keep their pace
    dash = Dashboard(width=64, steps=300, optimizer="sgd", update_interval=0.05)
    browser_draws(dash.loss_figure)
    dash.run(wait=True)
    assert dash.live["loss"].pushes >= min(8, dash.records[-1]["seconds"] / 0.05 / 2), dash.live["loss"].pushes
    assert len(dash.loss_figure.data[0].x) == 300
    dash.close()


def test_a_page_that_connects_later_gets_the_figures_as_they_are_now():
    # A reloaded page asks the kernel for each widget's whole state. plotly's FigureWidget
    # answered with the figure as it was displayed (empty): the page drew axes without the run.
    dash = Dashboard(width=64, steps=30, optimizer="sgd")
    before = dash.loss_figure.get_state()["_widget_data"]
    dash.run(wait=True)
    state = dash.loss_figure.get_state()
    lines = {t["name"]: t for t in state["_widget_data"]}
    assert before == [] and len(lines["train loss"]["x"]) == 30
    assert lines["train loss"]["y"] == list(dash.loss_figure.data[0].y)
    assert state["_widget_layout"]["title"]["text"].startswith("training loss")
    assert state["_widget_data"] is not dash.loss_figure._data   # a copy: later edits go as messages
    dash.close()


def test_the_figures_browser_code_matches_plotlys():
    # FigureWidget's browser code replays plotly's edit messages and calls its widget code:
    # the names it relies on must be plotly's (a plotly upgrade that renamed them fails here)
    from mupso_lite.plotly_widget import SHARED_PLOTLY_ESM, FigureWidget, plotly_widget_code
    fig = FigureWidget()
    edits = re.search(r"const EDITS = \[([^\]]*)\]", SHARED_PLOTLY_ESM).group(1)
    names = re.findall(r'"(_py2js_\w+)"', edits)
    assert len(names) == 9 and set(names) <= set(fig.keys)
    assert {n for n in fig.keys if n.startswith("_py2js_")} <= set(names)
    code, code_id = plotly_widget_code()
    state = fig.get_state()
    assert state["_plotly_code"] == code and state["_plotly_code_id"] == code_id and len(code) > 1_000_000
    assert len(state["_esm"]) < 5_000 and re.search(r"\bas default\}", code[-5_000:])   # plotly's default export
    assert "_js2py_traceDeltas" in fig.keys and "_last_trace_edit_id" in fig.keys   # the acknowledgements
    fig.close()
