"""A real browser drives the dashboard: JupyterLab + headless Chromium (via playwright).

Starts JupyterLab on 127.0.0.1 (random free port, random token) in a temporary folder with the
options the Makefile's ``lab`` target adds (its settings, lab-settings/, and kernel culling),
its kernels at the notebooks' small sizes (MUPSO_SIZE=ci). The first test copies
notebooks/00_playground.ipynb, runs all cells, moves the width slider, presses Run and reads
plotly's own figure data from the page; then sets a blow-up (SGD, SP, learning rate 10) through
the widgets and reads the divergence and its hint in the status line. The others: Run All in
several fresh browser profiles, some with plotly's code slow to load as on a busy laptop, must
draw all three figures each time (a figure the browser failed to set up stays blank for good);
closing a notebook's tab shuts its kernel down; and a page that stops answering during a run
(the server then closes its connection) leaves the server's log short. Screenshots go to
pytest's temporary folder (never into the repository).
"""
import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from test_dashboard import wait_for   # the same polling wait as the dashboard's tests

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                "(apt-get install -y chromium chromium-driver; .ci/run installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_lab_options() -> list:
    """The options of the Makefile's lab target beyond the address and the folder served: its
    JupyterLab settings (lab-settings/) and the culling of idle kernels ($(CURDIR): the repository)."""
    recipe = (ROOT / "Makefile").read_text().split("\nlab:")[1].split("\n\n")[0]
    options = [word.replace("$(CURDIR)", str(ROOT)) for word in recipe.split()
               if word.startswith(("--LabApp.app_settings_dir=", "--MappingKernelManager."))]
    assert any(o.startswith("--LabApp.app_settings_dir=") for o in options), recipe
    return options


@contextlib.contextmanager
def jupyter_lab(tmp_path, extra=(), size="ci"):
    """(base url, token, folder served) of a JupyterLab started as `make lab` starts it, its
    kernels at the notebooks' small sizes (``size="ci"``) or their class sizes (``size=None``)."""
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    port, token = free_port(), secrets.token_hex(16)
    # MUPSO_SIZE=ci: the kernels inherit it, and the notebooks pick their small sizes (the tests' sizes)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"),
               JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"))
    env.pop("MUPSO_SIZE", None)
    if size:
        env["MUPSO_SIZE"] = size
    # start the notebook's kernel without asking ("Select Kernel" could pop up late, over Run All)
    tracker = tmp_path / "settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True, exist_ok=True)
    tracker.write_text('{"autoStartDefaultKernel": true}')
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1",
                             f"--port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
                             "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                             *make_lab_options(), *extra]
                            + (["--allow-root"] if os.geteuid() == 0 else []),
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("JupyterLab did not start:\n" + (tmp_path / "lab.log").read_text()[-3000:])
                time.sleep(0.5)
        yield base, token, root
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def lab(tmp_path):
    """(base url, token) of a JupyterLab serving a copy of the playground notebook."""
    with jupyter_lab(tmp_path) as (base, token, root):
        shutil.copy(ROOT / "notebooks" / "00_playground.ipynb", root)
        yield base, token


def api(base: str, token: str, path: str, method: str = "GET"):
    """JupyterLab's REST API: the JSON answer of ``method path``."""
    request = urllib.request.Request(f"{base}{path}?token={token}", method=method)
    with urllib.request.urlopen(request, timeout=10) as answer:
        body = answer.read()
    return json.loads(body) if body else None


def kernels(base: str, token: str):
    """(connections, execution state) of each kernel the server runs; None while the server
    cannot say (jupyter_server answers /api/kernels with a 500 while a kernel is starting)."""
    try:
        return [(k["connections"], k["execution_state"]) for k in api(base, token, "/api/kernels")]
    except urllib.error.HTTPError as error:
        if error.code >= 500:
            return None
        raise


FIGURE = """([title, i]) => {
    const plots = [...document.querySelectorAll('.js-plotly-plot')]
        .filter(p => p.layout && p.layout.title && String(p.layout.title.text || '').startsWith(title));
    const p = plots[i];
    return p ? p.data.map(t => ({name: t.name, n: (t.x || []).length})) : null;
}"""


def dismiss_dialogs(page) -> bool:
    """Accept a "Select Kernel" dialog and refuse the news toast, if either is showing."""
    dialogs = page.locator(".jp-Dialog .jp-mod-accept").all()
    for dialog in dialogs:
        click_if_still_there(dialog)
    for no in page.locator(".jp-toast-button", has_text="No").all():
        click_if_still_there(no)
    return bool(dialogs)


def click_if_still_there(button) -> None:
    """Click ``button`` unless it goes away first (a toast closes itself; JupyterLab re-renders)."""
    from playwright.sync_api import Error
    try:
        button.click(timeout=3_000)
    except Error:
        pass


STATUS = """(words) => [...document.querySelectorAll('.widget-html')].some(
    e => e.innerText.includes('device:') && words.every(w => e.innerText.includes(w)))"""

STATUS_LINE = """() => {
    const e = [...document.querySelectorAll('.widget-html span')].find(s => s.innerText.includes('device:'));
    return e ? {text: e.innerText, color: getComputedStyle(e).color} : null;
}"""

MARKS = """(title) => {
    const p = [...document.querySelectorAll('.js-plotly-plot')]
        .find(p => p.layout && p.layout.title && String(p.layout.title.text || '').startsWith(title));
    return p ? (p.layout.annotations || []).map(a => a.text) : null;
}"""


def readout_is(label: str, value: str) -> str:
    """A page function: the slider described by ``label`` reads ``value``."""
    return (f"() => [...document.querySelectorAll('.widget-slider')].some(s => s.innerText.includes('{label}') "
            f"&& Math.abs(parseFloat(s.querySelector('.widget-readout').innerText) - {float(value)}) "
            f"<= 1e-9 * Math.abs({float(value)}))")


SLIDERS = "() => [...document.querySelectorAll('.widget-slider')].map(s => s.innerText)"


def wait_for_readout(page, label: str, value: str) -> None:
    """Wait until the slider ``label`` reads ``value``; on a timeout, say what the sliders read."""
    from playwright.sync_api import TimeoutError
    try:
        page.wait_for_function(readout_is(label, value), timeout=10_000)
    except TimeoutError:
        raise AssertionError(f"slider {label!r} never read {value!r}; sliders: {page.evaluate(SLIDERS)}")


def blow_up_through_the_widgets(page) -> None:
    """SGD, SP, learning rate 10 (the slider's maximum) with the widgets, then Run."""
    page.locator(".widget-dropdown", has_text="optimizer").locator("select").select_option(label="SGD")
    wait_for_readout(page, "learning rate", "0.5")  # SGD's default lr
    page.locator(".widget-toggle-buttons", has_text="parametrization").locator(
        "button", has_text=re.compile(r"^\s*SP\s*$")).click()
    page.wait_for_function("() => [...document.querySelectorAll('.widget-toggle-buttons button.mod-active')]"
                           ".some(b => b.innerText.trim() === 'SP')", timeout=10_000)
    lr = page.locator(".widget-slider", has_text="learning rate")
    lr.scroll_into_view_if_needed()
    lr.locator(".noUi-handle").focus()
    for _ in range(15):  # 0.5 -> 10 in steps of 10^0.1 (the last presses stop at the maximum)
        page.keyboard.press("ArrowRight")
    wait_for_readout(page, "learning rate", "10")
    page.locator("button.widget-button").filter(has_text=re.compile(r"^\W*Run$")).click()


def open_and_run_all(page, base: str, token: str, name: str = "00_playground.ipynb") -> None:
    """Open notebook ``name`` and choose Run > Run All Cells, until the dashboard's sliders show."""
    from playwright.sync_api import TimeoutError
    page.goto(f"{base}/lab/tree/{name}?token={token}")
    page.wait_for_selector(".jp-Notebook", timeout=90_000)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)
    dismiss_dialogs(page)
    page.locator(".lm-MenuBar-item", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    # a dialog that still pops up late is accepted and Run All pressed again
    for attempt in range(120):               # 4 minutes: a busy 2-core machine is slow
        try:
            page.wait_for_selector(".widget-slider", timeout=2_000)
            return
        except TimeoutError:
            # a late dialog, or a Run All pressed before the kernel was ready: press it again
            idle = attempt % 10 == 9 and not page.locator(".jp-InputPrompt", has_text="*").count()
            if dismiss_dialogs(page) or idle:
                page.locator(".lm-MenuBar-item", has_text="Run").first.click()
                page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    pytest.fail("the dashboard's sliders did not appear within 4 minutes")


def test_playground_in_a_real_browser(lab, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    base, token = lab
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        try:
            open_and_run_all(page, base, token)
            # the last code cell runs the width view; its end shows in the status line
            page.wait_for_function("() => document.body.innerText.includes('width view done')", timeout=240_000)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)

            width = page.locator(".widget-slider").first
            width.scroll_into_view_if_needed()   # JupyterLab draws only the cells near the view
            wait_for_readout(page, "width M", "128")
            width.locator(".noUi-handle").focus()
            page.keyboard.press("ArrowRight")  # one step on the log2 slider: 128 -> 256
            page.wait_for_function("() => document.querySelector('.widget-slider .widget-readout')"
                                   ".innerText.trim() === '256'", timeout=10_000)

            steps = page.locator(".widget-slider", has_text="steps")
            steps.scroll_into_view_if_needed()
            steps.locator(".noUi-handle").focus()
            for _ in range(14):  # 30 -> 100 steps (step 5): long enough to watch it grow
                page.keyboard.press("ArrowRight")
            page.wait_for_function("() => [...document.querySelectorAll('.widget-slider')].some(s => "
                                   "s.innerText.includes('steps') && s.querySelector('.widget-readout')"
                                   ".innerText.trim() === '100')", timeout=10_000)

            page.locator("button.widget-button").filter(has_text=re.compile(r"^\W*Run$")).click()
            counts = []
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                loss = page.evaluate(FIGURE, ["training loss", 0])
                if loss and len(loss) == 2:  # a fresh single run: train loss + test accuracy
                    counts.append(loss[0]["n"])
                    if loss[0]["n"] == 100:
                        break
                time.sleep(0.05)
            assert counts and counts[-1] == 100, counts
            assert len(set(counts)) >= 2, f"the loss trace should grow while training: {counts}"
            page.wait_for_function("() => document.body.innerText.includes('done, 100 steps')", timeout=30_000)
            features = page.evaluate(FIGURE, ["feature change", 0])
            assert [t["name"] for t in features] == ["layers.0 (input)", "layers.1 (hidden)", "layers.2 (output)"]
            assert all(t["n"] == 100 for t in features)

            # break it on purpose: the status line names the step and what to change, in red
            blow_up_through_the_widgets(page)
            page.wait_for_function(STATUS, arg=["diverged at step", "the loss rose", "lower the learning rate"],
                                   timeout=60_000)
            status = page.evaluate(STATUS_LINE)
            assert status["color"] == "rgb(204, 0, 0)", status
            blow_up = r"diverged at step \d+: the loss rose .* · lower the learning rate · "
            assert re.search(blow_up, status["text"]), status
            assert "damping" not in status["text"], status  # SGD's hint, not K-FAC's
            marks = page.evaluate(MARKS, "training loss")
            assert marks and re.fullmatch(r"diverged at step \d+", marks[0]), marks
        finally:
            page.screenshot(path=str(tmp_path / "browser_playground.png"), full_page=False)
            browser.close()


def stop_kernels(base: str, token: str) -> None:
    """Shut down every notebook's kernel (the previous attempt's, still running its cells)."""
    for session in api(base, token, "/api/sessions"):
        api(base, token, f"/api/sessions/{session['id']}", "DELETE")


# The three figures of the dashboard (not the static copies the notebook shows with .show()).
DASHBOARD_FIGURES = """() => [...document.querySelectorAll('.jupyter-widgets .js-plotly-plot')].map(p => ({
    title: String((p.layout && p.layout.title && p.layout.title.text) || ''),
    points: (p.data || []).reduce((n, t) => n + (t.x || []).length, 0)}))"""

# plotly's widget code (the only script over 1 MB the page imports) loads 3 s slower, as it can
# on a busy 2-core laptop. anywidget gives a widget 2 s to load its code and set up: plotly's own
# FigureWidget misses that every time here and its figures stay blank, no title and no data.
SLOW_PLOTLY_CODE = """(() => {
  const create = URL.createObjectURL.bind(URL);
  URL.createObjectURL = (blob) => {
    const url = create(blob);
    if (!(blob instanceof Blob) || blob.size < 1e6) return url;
    const slow = `await new Promise((done) => setTimeout(done, 3000));
                  export * from "${url}"; export { default } from "${url}";`;
    return create(new Blob([slow], { type: "text/javascript" }));
  };
})();"""

# Run Alls, each in a fresh browser profile: in the tests 3 at the small sizes, the first as it is,
# the others with plotly's code slow. MUPSO_RUN_ALLS=10 runs 10 at class size as a student's
# browser does (nothing slowed down):
#   MUPSO_RUN_ALLS=10 python -m pytest tests/test_browser.py -k every_run_all
RUN_ALLS = int(os.environ.get("MUPSO_RUN_ALLS") or 0)


def test_every_run_all_draws_the_live_figures(tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    as_a_student = RUN_ALLS > 0
    with jupyter_lab(tmp_path, size=None if as_a_student else "ci") as (base, token, root), \
            playwright.sync_playwright() as p:
        for attempt in range(RUN_ALLS or 3):
            stop_kernels(base, token)
            shutil.copy(ROOT / "notebooks" / "00_playground.ipynb", root)   # no output of the last attempt
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)   # a fresh profile
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            errors = []
            page.on("console", lambda m: errors.append(m.text) if "[anywidget]" in m.text else None)
            page.on("pageerror", lambda e: errors.append(str(e)) if "anywidget" in str(e) else None)
            if attempt and not as_a_student:
                page.add_init_script(SLOW_PLOTLY_CODE)
            try:
                open_and_run_all(page, base, token)
                page.wait_for_function("() => document.body.innerText.includes('width view done')", timeout=240_000)
                try:   # the figures draw once plotly's code has loaded: maybe after the last cell ran
                    page.wait_for_function(f"() => {{ const f = ({DASHBOARD_FIGURES})(); "
                                           f"return f.length === 3 && f.every(x => x.title && x.points); }}",
                                           timeout=60_000)
                except playwright.TimeoutError:
                    pass   # the assertions below say what is missing
                figures = page.evaluate(DASHBOARD_FIGURES)
                titles = [f["title"].split(" ")[0] for f in figures]
                assert titles == ["training", "feature", "width"], (attempt, figures)
                assert all(f["points"] > 0 for f in figures), (attempt, figures)   # each drew its run's data
                assert not errors, (attempt, errors)
            finally:
                page.screenshot(path=str(tmp_path / f"run_all_{attempt}.png"), full_page=False)
                browser.close()


def test_closing_a_notebook_tab_shuts_its_kernel_down(tmp_path):
    # lab-settings/overrides.json5 (kernelShutdown): notebooks 01 ... 06 opened in turn and closed
    # must not leave a kernel each running
    playwright = pytest.importorskip("playwright.sync_api")
    with jupyter_lab(tmp_path) as (base, token, root), playwright.sync_playwright() as p:
        shutil.copy(ROOT / "notebooks" / "01_why_width_matters.ipynb", root)
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        console = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        try:
            page.goto(f"{base}/lab/tree/01_why_width_matters.ipynb?token={token}")
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)
            # one kernel, idle, with the page connected to it
            def connected():
                k = kernels(base, token)
                return k is not None and len(k) == 1 and k[0][0] >= 1 and k[0][1] == "idle"
            assert wait_for(connected, 60, poll=0.25), kernels(base, token)
            tab = page.locator("#jp-main-dock-panel .lm-TabBar-tab", has_text="01_why_width_matters.ipynb")
            tab.locator(".lm-TabBar-tabCloseIcon").click()
            dismiss_dialogs(page)   # "Save your work?" if the notebook counts as changed
            page.wait_for_selector("#jp-main-dock-panel .lm-TabBar-tab:has-text('01_why_width_matters')",
                                   state="detached", timeout=30_000)
            shut = wait_for(lambda: kernels(base, token) == [], 60, poll=0.25)
            assert shut, (kernels(base, token), api(base, token, "/api/sessions"), console[-20:],
                          [line for line in (tmp_path / "lab.log").read_text().splitlines()
                           if re.search(r"[Kk]ernel|[Ss]ession|DELETE", line)][-20:])
        finally:
            page.screenshot(path=str(tmp_path / "closed_tab.png"), full_page=False)
            browser.close()


# What jupyter_server logs for each kernel message it cannot deliver to a page whose connection
# it is closing: an empty warning, or a WebSocketClosedError traceback ("Task exception was never
# retrieved"), a line or a dozen per message.
UNDELIVERED = re.compile(r"^\[W [^]]* ServerApp\] $|WebSocketClosedError|Task exception was never retrieved", re.M)


def test_a_page_that_stops_answering_during_a_run_leaves_the_server_log_short(tmp_path):
    # The server pings each page and closes the connection of one that has not answered for a
    # while (90 s in `make lab`, 6 s here): a page frozen, too busy, or being reloaded. Until the
    # connection is closed, each kernel message for it is a line in the server's terminal. A
    # dashboard that kept sending its figures at ~7 updates/s filled it with hundreds of lines;
    # it must wait for the browser to draw each update instead.
    import nbformat
    playwright = pytest.importorskip("playwright.sync_api")
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "jupyter_server_config.json").write_text(json.dumps(
        {"ServerApp": {"tornado_settings": {"ws_ping_interval": 2000, "ws_ping_timeout": 6000}}}))   # ms
    with jupyter_lab(tmp_path) as (base, token, root), playwright.sync_playwright() as p:
        notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
            "import mupso_lite as ml\ndash = ml.Dashboard(width=256, optimizer='sgd', steps=2000)\ndash")])
        notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                           "language": "python"}
        nbformat.write(notebook, root / "long_run.ipynb")
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        try:
            open_and_run_all(page, base, token, "long_run.ipynb")
            page.wait_for_function(STATUS, arg=["ready: press Run"], timeout=120_000)
            page.locator("button.widget-button").filter(has_text=re.compile(r"^\W*Run$")).click()
            page.wait_for_function(STATUS, arg=["steps/s"], timeout=120_000)   # 2000 steps: a minute or more
            page.keyboard.press("Control+s")   # saved with its output, the dashboard comes back on reload
            page.wait_for_selector(".jp-mod-dirty", state="detached", timeout=30_000)
            start = len((tmp_path / "lab.log").read_text())
            # the page stops answering for 15 s (its connection is closed after 6 to 8 s), then it is reloaded
            page.evaluate("() => setTimeout(() => { const t = Date.now(); while (Date.now() - t < 15000) {} }, 0)")
            page.wait_for_timeout(17_000)
            page.reload(timeout=120_000)
            page.wait_for_selector(".jp-Notebook", timeout=120_000)
            page.wait_for_timeout(10_000)
            log = (tmp_path / "lab.log").read_text()[start:]
            undelivered = UNDELIVERED.findall(log)
            print(f"{len(undelivered)} undelivered messages logged")   # pytest -s shows it
            assert len(undelivered) <= 10, f"{len(undelivered)} undelivered messages logged:\n{log[-3000:]}"
            # the reloaded page draws the saved notebook's dashboard again from the kernel's state,
            # with the run's points (each figure compiles plotly's code while the kernel trains on
            # the same two cores: on a busy machine that took over a minute)
            page.wait_for_function(f"() => {{ const f = ({DASHBOARD_FIGURES})(); "
                                   f"return f.length === 3 && f[0].title && f[0].points > 0; }}", timeout=150_000)
        finally:
            page.screenshot(path=str(tmp_path / "reloaded.png"), full_page=False)
            browser.close()
            stop_kernels(base, token)
