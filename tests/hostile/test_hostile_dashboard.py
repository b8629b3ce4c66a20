"""The dashboard under abuse: bad arguments, rapid clicks, failing data, blow-ups, leaks.

Every bad argument must raise a ValueError/TypeError naming the argument before any widget
or thread exists; runs must leave no thread, no model and no hook behind. Tiny widths and few
steps keep the whole file to well under a minute on 2 cores.
"""
import gc
import math
import threading
import weakref

import pytest
import torch

pytest.importorskip("ipywidgets")
from ipywidgets.widgets import widget as widget_module  # noqa: E402
from torch import nn  # noqa: E402

from mupso_lite.dashboard import Dashboard  # noqa: E402
from mupso_lite.divergence import HINT_FIRST_ORDER, HINT_SECOND_ORDER, HINT_SOAP  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models run faster on one intra-op thread (and do not fight a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def job_threads():
    return [t for t in threading.enumerate() if t.name.startswith("mupso-dashboard")]


def live_linears():
    return sum(1 for o in gc.get_objects() if type(o) is nn.Linear)


def tiny(**kw):
    """A dashboard at the smallest settings (width 32, 10 steps) unless ``kw`` says otherwise."""
    return Dashboard(**{"width": 32, "steps": 10, "coord_widths": (32, 64), "coord_steps": 2, **kw})


def broken():
    raise RuntimeError("this data set is broken")


BAD_ARGUMENTS = [  # (keyword arguments, exception type, text the message must contain)
    (dict(optimizer="lbfgs"), ValueError, "optimizer: expected one of 'sgd', 'adam', 'kfac'"),
    (dict(param="ntk"), ValueError, "param: expected one of 'sp', 'mup', got 'ntk'"),
    (dict(dataset="imagenet"), ValueError, "dataset: expected one of 'digits'"),
    (dict(batch_size=0), ValueError, "batch_size: expected a positive integer, got 0"),
    (dict(batch_size=-3), ValueError, "batch_size: expected a positive integer, got -3"),
    (dict(batch_size=2.5), TypeError, "batch_size: expected a positive integer, got 2.5"),
    (dict(batch_size=100), ValueError, "batch_size: expected one of 16, 32, 64, 128, 256, 512"),
    (dict(width=3), ValueError, "width: expected an integer in 32..4096 (the slider's range), got 3"),
    (dict(width=10 ** 6), ValueError, "width: expected an integer in 32..4096"),
    (dict(lr=0), ValueError, "lr: expected a finite number > 0, got 0"),
    (dict(lr=math.nan), ValueError, "lr: expected a finite number > 0, got nan"),
    (dict(lr=-1), ValueError, "lr: expected a finite number > 0, got -1"),
    (dict(lr=1e3), ValueError, "lr: expected a number in [0.0001, 10] (the slider's range), got 1000.0"),
    (dict(damping=-1, optimizer="kfac"), ValueError, "damping: expected a finite number > 0, got -1"),
    (dict(damping=1e-9, optimizer="soap"), ValueError, "damping: expected a number in [1e-06, 1] (the slider's"),
    (dict(optimizer="Shampoo2"), ValueError, "'muon', 'soap', got 'Shampoo2'"),
    (dict(steps=0), ValueError, "steps: expected a positive integer, got 0"),
    (dict(steps=10 ** 5), ValueError, "steps: expected an integer in 5..2000"),
    (dict(depth=1), ValueError, "depth: expected an integer in 2..6 (the slider's range), got 1"),
    (dict(seed=-1), ValueError, "seed: expected an integer >= 0, got -1"),   # 0 is accepted
    (dict(datasets={"x": 3}), TypeError, "datasets['x']: expected an ml.datasets Dataset or a function"),
    (dict(datasets=[broken]), TypeError, "datasets: expected a dict"),
    (dict(coord_widths=(16, 16)), ValueError, "coord_widths: expected at least 2 distinct widths"),
    (dict(coord_widths=[0]), ValueError, "coord_widths[0]: expected a positive integer, got 0"),
    (dict(coord_widths=64), TypeError, "coord_widths: expected a list or tuple of integers, got 64"),
    (dict(coord_steps=0), ValueError, "coord_steps: expected a positive integer, got 0"),
    (dict(coord_seeds=()), ValueError, "coord_seeds: expected at least one seed"),
    (dict(update_interval=-1), ValueError, "update_interval: expected a finite number >= 0, got -1"),
]


@pytest.mark.parametrize("kwargs,error,text", BAD_ARGUMENTS, ids=[next(iter(k)) + "=" + repr(next(iter(k.values())))
                                                                  for k, _, _ in BAD_ARGUMENTS])
def test_a_bad_argument_raises_before_any_widget_or_thread(kwargs, error, text):
    widgets, threads = len(widget_module._instances), threading.active_count()
    with pytest.raises(error) as info:
        Dashboard(**kwargs)
    assert text in str(info.value)
    assert len(widget_module._instances) == widgets and threading.active_count() == threads


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_names_the_device():
    widgets = len(widget_module._instances)
    with pytest.raises(ValueError, match="device: got 'cuda', but no CUDA device is available"):
        Dashboard(device="cuda")
    assert len(widget_module._instances) == widgets


def test_optimizer_labels_and_numpy_numbers_are_accepted():
    np = pytest.importorskip("numpy")
    dash = tiny(optimizer="K-FAC", width=np.int64(64), lr=np.float32(0.1))
    assert dash.settings().optimizer == "kfac" and dash.settings().width == 64
    dash.close()


def test_twenty_quick_runs_leave_one_thread_and_the_last_runs_records():
    baseline = threading.active_count()
    dash = tiny(optimizer="sgd")
    for i in range(20):
        dash.controls["steps"].value = 5 if i < 19 else 15
        dash.run()
    replaced = [t for t in job_threads() if t is not dash._job.thread]
    for t in replaced:  # stopped: each ends before (or right after) its first step
        t.join(timeout=30)
    assert not any(t.is_alive() for t in replaced)
    assert dash.join(timeout=60)
    assert [r["step"] for r in dash.records] == list(range(1, 16)) and dash.last_settings.steps == 15
    assert "done, 15 steps" in dash.status
    assert job_threads() == [] and threading.active_count() == baseline
    dash.close()


def test_stop_and_join_with_nothing_running():
    dash = tiny()
    dash.stop()
    assert dash.join() and not dash.running and dash.records == []
    assert dash.status.endswith("ready: press Run")
    dash.close()


def test_close_twice_closes_every_widget_and_blocks_new_runs():
    widgets = len(widget_module._instances)
    dash = tiny()
    dash.widget  # the layout boxes too
    assert len(widget_module._instances) > widgets
    dash.close()
    dash.close()
    assert dash.closed and len(widget_module._instances) == widgets
    with pytest.raises(RuntimeError, match="run\\(\\): this dashboard is closed"):
        dash.run()


def test_a_closed_dashboard_is_freed_with_its_figures():
    dash = tiny(optimizer="kfac").run(wait=True)
    dash.widget
    refs = [weakref.ref(x) for x in (dash, dash.loss_figure, dash.feature_figure, dash.width_figure)]
    dash.close()
    del dash
    gc.collect()
    assert [r() for r in refs] == [None] * 4


def test_close_during_a_run_ends_its_thread():
    baseline = threading.active_count()
    with tiny(steps=2000, optimizer="adam") as dash:
        dash.run()
        assert dash.running
    assert not dash.running and len(dash.records) < 2000
    assert threading.active_count() == baseline


def test_a_dataset_that_raises_shows_in_the_status_and_leaves_no_thread():
    baseline = threading.active_count()
    dash = tiny(datasets={"broken": broken}, dataset="broken").run(wait=True)
    assert dash.status == "error: RuntimeError: this data set is broken"
    assert dash.status_widget.value.startswith('<span style="color:#c00')
    assert dash._job.error.__traceback__ is None  # its frames (and their models) are gone
    assert "this data set is broken" in dash._job.traceback
    dash.width_view(wait=True)
    assert dash.status == "error: RuntimeError: this data set is broken"
    assert threading.active_count() == baseline
    dash.close()


def test_a_dataset_function_returning_the_wrong_type_is_an_error_not_a_crash():
    dash = tiny(datasets={"numbers": lambda: [1, 2, 3]}, dataset="numbers").run(wait=True)
    assert dash.status == "error: TypeError: dataset 'numbers': expected an ml.datasets Dataset, got list"
    dash.close()


def test_divergence_shows_message_hint_and_a_mark_on_the_loss_plot():
    dash = tiny(optimizer="kfac", lr=3.0, damping=1e-4, width=64, steps=40).run(wait=True)
    last = dash.records[-1]
    assert last["diverged"] and last["step"] < 40
    assert f"diverged at step {last['step']}: the loss rose" in dash.status
    assert f"· {HINT_SECOND_ORDER}" in dash.status and "color:#c00" in dash.status_widget.value
    assert dash.messages == [f"{last['message']} · {HINT_SECOND_ORDER}"]
    (line,), (note,) = dash.loss_figure.layout.shapes, dash.loss_figure.layout.annotations
    assert line.x0 == line.x1 == last["step"] and note.text == f"diverged at step {last['step']}"
    dash.controls["lr"].value, dash.controls["damping"].value = 0.1, 0.1  # a healthy run clears the mark
    dash.run(wait=True)
    assert "done, 40 steps" in dash.status and dash.loss_figure.layout.shapes == ()
    dash.close()


def test_a_spike_shows_a_warning_hint_and_an_orange_mark():
    dash = tiny(optimizer="kfac", lr=1.0, damping=1e-3, width=256, steps=30).run(wait=True)   # spikes 4.5x
    last = dash.records[-1]
    assert not last["diverged"] and last["step"] == 30 and last["warning"]
    assert "done, 30 steps" in dash.status and f"{last['warning']} · {HINT_SECOND_ORDER}" in dash.status
    assert "color:#b35900" in dash.status_widget.value
    (line,), (note,) = dash.loss_figure.layout.shapes, dash.loss_figure.layout.annotations
    assert note.text.startswith("loss spiked at step ") and line.x0 == int(note.text.split()[-1])
    # one step in the status and on the plot: the step of the highest loss, which the warning names
    peak = max(dash.records, key=lambda r: r["loss"])["step"]
    assert line.x0 == peak and last["warning"].endswith(f" at step {peak}")
    assert f"at step {peak} · " in dash.status and "×, from " in dash.status and "e+" not in last["warning"]
    lo, hi = dash.loss_figure.layout.xaxis.range
    assert (note.xanchor, note.xshift > 0) == (("left", True) if (peak - lo) / (hi - lo) < 0.5 else ("right", False))
    dash.close()


def test_width_view_reports_divergence_per_width():
    dash = tiny(optimizer="sgd", param="sp", lr=10.0, coord_widths=(32, 512), coord_steps=12).width_view(wait=True)
    assert "verdict: diverged at width 512 (seed 0, step " in dash.status
    assert f"): {HINT_FIRST_ORDER}; layer layers.0 has no finite exponent" in dash.status  # one width: no slope
    assert "diverged at width 32" not in dash.status and "color:#c00" in dash.status_widget.value
    assert {p["width"] for p in dash.width_points} == {32}
    assert len(dash.messages) == 1 and dash.messages[0].startswith("width 512: diverged at step")
    dash.close()


def test_thirty_kfac_runs_leave_no_model_hook_or_thread():
    gc.collect()
    baseline_threads, baseline_linears = threading.active_count(), live_linears()
    dash = tiny(optimizer="kfac", steps=5)
    for i in range(30):
        dash.controls["width"].value = (32, 64)[i % 2]
        dash.run(wait=i % 3 != 0)
        if i % 3 == 0:
            dash.stop()
    assert dash.join(timeout=60)
    gc.collect()
    assert live_linears() <= baseline_linears + 4, "models of finished runs are still alive"
    assert threading.active_count() == baseline_threads
    dash.close()


@pytest.mark.parametrize("optimizer, hint", [("muon", HINT_FIRST_ORDER), ("soap", HINT_SOAP)])
def test_a_muon_or_soap_blow_up_gives_its_own_hint(optimizer, hint):
    dash = tiny(optimizer=optimizer, param="sp", lr=10.0, steps=20).run(wait=True)
    last = dash.records[-1]
    assert last["diverged"] and last["hint"] == hint and dash.messages == [f"{last['message']} · {hint}"]
    assert f"· {hint}" in dash.status and "color:#c00" in dash.status_widget.value
    dash.close()


def test_switching_through_every_optimizer_during_a_run_leaves_one_clean_run():
    baseline = threading.active_count()
    dash = tiny(optimizer="sgd", steps=2000).run()
    names = [v for _, v in dash.controls["optimizer"].options]
    assert names[-2:] == ["muon", "soap"]
    for name in names[1:]:   # each change restarts the run with the optimizer's defaults
        dash.controls["optimizer"].value = name
    assert dash.last_settings.optimizer == "soap" and dash.running
    dash.close()
    assert dash._job.error is None and job_threads() == [] and threading.active_count() == baseline
