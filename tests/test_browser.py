"""A real browser drives the dashboard: JupyterLab + headless Chromium (via playwright).

Starts JupyterLab on 127.0.0.1 (random free port, random token) in a temporary folder with a
copy of notebooks/00_playground.ipynb, runs all cells, moves the width slider, presses Run and
reads plotly's own figure data from the page; then sets a blow-up (SGD, SP, learning rate 10)
through the widgets and reads the divergence and its hint in the status line. A screenshot
goes to pytest's temporary folder (never into the repository).
"""
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

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


def write_at_ci_size(src: Path, dst: Path) -> None:
    """The notebook as committed: its parameters cell picks the small CI sizes itself when the
    kernel sees MUPSO_SIZE=ci, which the server below passes on to its kernels."""
    shutil.copy(src, dst)


@pytest.fixture
def lab(tmp_path):
    """(base url, token) of a JupyterLab serving a copy of the playground notebook."""
    root = tmp_path / "root"
    root.mkdir()
    write_at_ci_size(ROOT / "notebooks" / "00_playground.ipynb", root / "00_playground.ipynb")
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ, MUPSO_SIZE="ci", JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"),
               JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"))
    # start the notebook's kernel without asking ("Select Kernel" could pop up late, over Run All)
    tracker = tmp_path / "settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text('{"autoStartDefaultKernel": true}')
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1",
                             f"--port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
                             "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
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
        yield base, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


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


def test_playground_in_a_real_browser(lab, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    base, token = lab
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        try:
            page.goto(f"{base}/lab/tree/00_playground.ipynb?token={token}")
            page.wait_for_selector(".jp-Notebook", timeout=90_000)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)
            dismiss_dialogs(page)
            page.locator(".lm-MenuBar-item", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
            # a dialog that still pops up late is accepted and Run All pressed again
            for attempt in range(120):               # 4 minutes: a busy 2-core machine is slow
                try:
                    page.wait_for_selector(".widget-slider", timeout=2_000)
                    break
                except playwright.TimeoutError:
                    # a late dialog, or a Run All pressed before the kernel was ready: press it again
                    idle = attempt % 10 == 9 and not page.locator(".jp-InputPrompt", has_text="*").count()
                    if dismiss_dialogs(page) or idle:
                        page.locator(".lm-MenuBar-item", has_text="Run").first.click()
                        page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
            else:
                pytest.fail("the dashboard's sliders did not appear within 4 minutes")
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
