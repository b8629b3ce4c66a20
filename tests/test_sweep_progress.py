"""ml.sweep's progress line: redrawn every second in a terminal, a few lines in a log file, the
time left weighed by the runs' sizes, one display updated in place in a notebook."""
import sys
import time

import pytest

import mupso_lite as ml
from mupso_lite.sweep import config_key, expand_grid


def _slow_run(seconds):
    """A stand-in for run_config: takes ``seconds``, then returns a finished record."""
    def run(cfg, device="cpu"):
        time.sleep(seconds)
        return {"key": config_key(cfg), "config": cfg, "version": "test", "status": "ok", "message": "",
                "train_loss": 1.0, "train_accuracy": None, "curve": [1.0], "finished": time.time()}
    return run


class _Terminal(__import__("io").StringIO):
    def isatty(self):
        return True


def test_progress_moves_while_the_first_run_is_under_way(tmp_path, monkeypatch):
    """In a terminal the line is redrawn every second, before any run has finished: the elapsed
    time moves, and the estimate waits for the first run. (tqdm redrew only when a run finished.)"""
    sweep_module = sys.modules["mupso_lite.sweep"]   # ml.sweep is the function
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    monkeypatch.setattr(sweep_module, "run_config", _slow_run(2.6))
    ml.sweep({"width": [16, 32], "optimizer": ["sgd"], "dataset": ["teacher"]}, results=tmp_path / "r.jsonl",
             steps=2, executor="serial")
    frames = [f for f in term.getvalue().split("\r") if f.strip()]
    waiting = [f for f in frames if "0/2 runs done" in f]
    assert any("0:02 elapsed" in f for f in waiting), frames   # redrawn while the first run was still going
    assert all("time left: estimated once a run finishes" in f for f in waiting), waiting
    assert any("1/2 runs done" in f and "about 0:0" in f for f in frames), frames   # then an estimate
    assert "2/2 runs done" in frames[-1] and "left" not in frames[-1] and term.getvalue().endswith("\n")


def test_progress_in_a_log_file_is_a_few_lines(tmp_path, monkeypatch, capsys):
    """Written to a file or a pipe: a line when the sweep starts and one when it ends, no carriage
    returns, however many runs (tqdm wrote one redraw per finished run)."""
    ml.sweep({"width": [8, 12, 16, 20, 24, 28], "lr": [0.05, 0.1], "optimizer": ["sgd"], "dataset": ["teacher"]},
             results=tmp_path / "r.jsonl", steps=2, base_width=8, executor="serial")
    err = capsys.readouterr().err
    assert "\r" not in err and err.splitlines()[0].startswith("sweep") and len(err.splitlines()) <= 3, err
    assert "0/12 runs done" in err.splitlines()[0] and "12/12 runs done" in err.splitlines()[-1], err


def test_progress_estimate_weighs_the_runs_by_their_size():
    """The time left is the elapsed time scaled by the cost of what is left over the cost of what
    ran: a width-4096 SGD run counts for about 90 width-64 ones (as measured on 2 cores)."""
    from mupso_lite.progress import SweepProgress, run_cost
    from mupso_lite.sweep import config_key
    small, big = expand_grid({"width": [64, 4096], "optimizer": ["sgd"]})
    assert 50 * run_cost(small) < run_cost(big) < 200 * run_cost(small)
    p = SweepProgress([small, big], config_key, notebook=False, stream=__import__("io").StringIO())
    p.started -= 10   # ten seconds ago
    p.update(1, cfg=small)
    left = p.line().split("about ")[1].split(" left")[0]
    seconds = sum(int(x) * 60 ** i for i, x in enumerate(reversed(left.split(":"))))   # [h:]m:ss
    assert 500 < seconds < 2000, p.line()
    assert "1/2 runs done" in p.line() and "0:10 elapsed" in p.line()


KERNEL_SWEEP = """
import sys, time, mupso_lite as ml
S = sys.modules["mupso_lite.sweep"]
from mupso_lite.sweep import config_key
def slow(cfg, device="cpu"):
    time.sleep(2.6)
    return {"key": config_key(cfg), "config": cfg, "version": "test", "status": "diverged", "message": "",
            "train_loss": None, "train_accuracy": None, "curve": [], "finished": time.time()}
S.run_config = slow
df = ml.sweep({"width": [16, 32], "optimizer": ["sgd"], "dataset": ["teacher"]}, results=RESULTS, steps=2,
              executor="serial")
"""


def test_progress_in_a_notebook_is_one_display_updated_in_place(tmp_path):
    """In a Jupyter kernel (JupyterLab, papermill, nbval) the sweep shows one display from its start
    and updates it in place (update_display_data) while the runs are under way; a saved notebook
    keeps only that display, in its last state: no widget (saved without its state, it shows
    nothing), no stream of redraws."""
    pytest.importorskip("ipykernel")
    from jupyter_client.manager import start_new_kernel
    km, kc = start_new_kernel(kernel_name="python3")
    try:
        kc.execute_interactive(KERNEL_SWEEP.replace("RESULTS", repr(str(tmp_path / "r.jsonl"))), timeout=120,
                               output_hook=messages.append if (messages := []) is not None else None)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    kinds = [m["msg_type"] for m in messages]
    assert "stream" not in kinds and "error" not in kinds, messages
    shown = [m for m in messages if m["msg_type"] == "display_data"]
    assert len(shown) == 1 and "application/vnd.jupyter.widget-view+json" not in shown[0]["content"]["data"]
    display_id = shown[0]["content"]["transient"]["display_id"]
    updates = [m["content"] for m in messages if m["msg_type"] == "update_display_data"]
    assert updates and all(u["transient"]["display_id"] == display_id for u in updates)
    texts = [shown[0]["content"]["data"]["text/plain"]] + [u["data"]["text/plain"] for u in updates]
    assert "0/2 runs done" in texts[0]
    assert any("0/2 runs done" in t and "0:02 elapsed" in t for t in texts), texts   # moving before a run ends
    assert "2/2 runs done" in texts[-1] and "2 diverged" in texts[-1], texts
    assert len(updates) < 30, "a few redraws a second at most"
