"""plotly's ``FigureWidget``, set up in the browser at once: a busy laptop cannot leave it blank.

In the browser, anywidget gives each widget 2 seconds from its creation to load its code and
run its ``initialize``. A figure that misses the limit drops every later message from the
kernel and stays blank for good: no title, default axes, no data, and "[anywidget] Failed to
initialize model." in the console. plotly's widget code is 4.8 MB, and plotly's own
``go.FigureWidget`` makes every figure compile its own copy: on a busy 2-core laptop (a
notebook's Run All, training in the kernel) three figures created together can miss the limit.

``FigureWidget`` here is the same figure for the kernel, with a small browser module around
plotly's code (``SHARED_PLOTLY_ESM``): ``initialize`` returns at once, the kernel's edits that
arrive before plotly's code has loaded are recorded and replayed into plotly's figure model
when it has, and the code is compiled once per page, shared by every figure.

``edit_id`` reads plotly's numbering of trace edits, which each browser view acknowledges once
it has drawn one: ``live.LiveFigure`` waits for it before sending more.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import pathlib

import plotly.graph_objects as go
import traitlets


def edit_id(figure) -> int:
    """The number of the newest trace edit plotly has sent to ``figure``'s browser views.

    Every trace edit (restyle, update, add or delete traces) of a ``FigureWidget`` gets the next
    number (plotly's ``_last_trace_edit_id``), and each view that draws it answers with that
    number (``_js2py_traceDeltas``): the acknowledgement ``LiveFigure`` waits for."""
    return int(getattr(figure, "_last_trace_edit_id", 0) or 0)


# The browser side of FigureWidget. Each figure's ``initialize`` records the kernel's edits
# (EDITS) until plotly's code has loaded. plotly's code is imported once per page, shared by
# every figure, starting once no new figure has been set up for QUIET ms, so that the long
# compile holds up no figure still being set up. plotly's own ``initialize`` then runs on a
# proxy of the model that replays the recorded edits to plotly's handlers; each view draws
# when the code is there.
SHARED_PLOTLY_ESM = """
const QUIET = 500;
const EDITS = ["_py2js_addTraces", "_py2js_deleteTraces", "_py2js_moveTraces", "_py2js_restyle", "_py2js_relayout",
  "_py2js_update", "_py2js_animate", "_py2js_removeLayoutProps", "_py2js_removeTraceProps"];
const shared = (globalThis[Symbol.for("mupso_lite.plotly_widget_code")] ||= { loads: new Map(), waiting: [], timer: 0 });

function startLoads() {   // import each waiting figure's plotly code, once per page
  for (const { model, resolve, reject } of shared.waiting.splice(0)) {
    const id = model.get("_plotly_code_id");
    if (!shared.loads.has(id)) {
      const url = URL.createObjectURL(new Blob([model.get("_plotly_code")], { type: "text/javascript" }));
      const loading = import(url);
      loading.then(() => URL.revokeObjectURL(url), () => { URL.revokeObjectURL(url); shared.loads.delete(id); });
      shared.loads.set(id, loading);
    }
    shared.loads.get(id).then(resolve, reject);
  }
}

function plotlyCode(model) {
  const loaded = shared.loads.get(model.get("_plotly_code_id"));
  if (loaded) return loaded;
  return new Promise((resolve, reject) => {
    shared.waiting.push({ model, resolve, reject });
    clearTimeout(shared.timer);
    shared.timer = setTimeout(startLoads, QUIET);
  });
}

export default () => {   // one per figure
  let figure;            // a promise of plotly's {initialize, render} for this figure
  return {
    initialize({ model, ...context }) {
      const early = [], record = {};   // the kernel's edits that arrive before plotly's code
      for (const name of EDITS) {
        record[name] = () => { const edit = model.get(name); if (edit != null) early.push([name, edit]); };
        model.on(`change:${name}`, record[name]);
      }
      const stopRecording = () => { for (const name of EDITS) model.off(`change:${name}`, record[name]); };
      figure = plotlyCode(model).then((code) => {
        stopRecording();
        const handlers = {};
        let replaying = null;   // [name, edit] while plotly's handler of that edit runs again
        const replayable = new Proxy(model, { get(target, key) {
          if (key === "on") return (event, handler, ...rest) => {
            (handlers[event] ||= []).push(handler);
            return target.on(event, handler, ...rest);
          };
          if (key === "get") return (name) => (replaying && replaying[0] === name ? replaying[1] : target.get(name));
          const value = Reflect.get(target, key);
          return typeof value === "function" ? value.bind(target) : value;
        } });
        const plotly = code.default();
        plotly.initialize({ model: replayable, ...context });
        for (replaying of early) for (const handler of handlers[`change:${replaying[0]}`] || []) handler();
        replaying = null;
        return plotly;
      }, (error) => { stopRecording(); throw error; });
    },
    async render(context) {
      return (await figure).render(context);
    },
  };
};
"""
@functools.cache
def plotly_widget_code() -> tuple[str, str]:
    """(plotly's widget code, a short id of it), read once from plotly's package data."""
    import plotly.basewidget
    path = pathlib.Path(plotly.basewidget.__file__).parent / "package_data" / "widgetbundle.js"
    code = path.read_text(encoding="utf-8")
    return code, hashlib.sha256(code.encode()).hexdigest()[:16]


class FigureWidget(go.FigureWidget):
    """plotly's ``go.FigureWidget`` with the browser code ``SHARED_PLOTLY_ESM``: the same figure,
    set up in the browser at once (it cannot miss anywidget's 2 s limit and stay blank), with
    plotly's code loaded once per page for all figures.

    A page that connects later (reloaded, or opened in a second tab) gets the figure as it is
    now: plotly sends later edits as messages and leaves the figure's widget state
    (``_widget_data``, ``_widget_layout``) as it was when the figure was displayed, so such a
    page drew a live figure's axes without the runs drawn since."""

    _esm = SHARED_PLOTLY_ESM
    _plotly_code = traitlets.Unicode().tag(sync=True)
    _plotly_code_id = traitlets.Unicode().tag(sync=True)

    @traitlets.default("_plotly_code")
    def _default_code(self):
        return plotly_widget_code()[0]

    @traitlets.default("_plotly_code_id")
    def _default_code_id(self):
        return plotly_widget_code()[1]

    def get_state(self, key=None, drop_defaults=False):
        """The widget's state; the whole of it (``key=None``: a page connecting) with the
        figure's current data and layout. Set without a change event: the pages already
        connected keep the edits as they arrive, and need no copy."""
        if key is None and hasattr(self, "_layout_obj"):   # (not while plotly's __init__ opens the widget)
            self._trait_values["_widget_data"] = copy.deepcopy(self._data)
            self._trait_values["_widget_layout"] = copy.deepcopy(self._layout_obj._props)
        return super().get_state(key, drop_defaults)
