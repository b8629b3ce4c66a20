"""The dashboard driven without a browser: runs, stop, restart, errors, divergence, figures.
(Its figures' pacing: test_live_figures.py; its optimizer controls: test_dashboard_controls.py.)"""
import re
import threading
import time

import pytest

pytest.importorskip("ipywidgets")
from mupso_lite.dashboard import Dashboard  # noqa: E402


def wait_for(condition, timeout=60.0, poll=0.01):
    """True once ``condition()`` is, asked every ``poll`` seconds; False after ``timeout``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(poll)
    return False


def label_inside(fig, note):
    """The mark's label is on the side of its line that stays inside the plot's x range."""
    lo, hi = fig.layout.xaxis.range
    left_half = (note.x - lo) / (hi - lo) < 0.5
    return (note.xanchor, note.xshift > 0) == (("left", True) if left_half else ("right", False))


@pytest.mark.parametrize("factor,text", [(1089.7, "1090×"), (1.0899e3, "1090×"), (29.71, "29.7×"), (6.0, "6×"),
                                         (11.5, "11.5×"), (4.5e8, "450000000×"), (0.5, "0.5×"), (9.996, "10×")])
def test_factors_have_at_most_3_digits_no_exponent_and_the_times_sign(factor, text):
    from mupso_lite.divergence import format_factor
    assert format_factor(factor) == text


def test_run_plots_loss_accuracy_and_one_feature_trace_per_layer():
    dash = Dashboard(width=128, depth=4, steps=30, optimizer="kfac").run(wait=True)
    assert "done, 30 steps" in dash.status and "device: cpu" in dash.status
    assert [r["step"] for r in dash.records] == list(range(1, 31))
    train_loss, test_acc = dash.loss_figure.data
    assert list(train_loss.x) == list(range(1, 31))
    assert list(train_loss.y) == pytest.approx([r["loss"] for r in dash.records])
    assert len(test_acc.x) >= 2 and all(0 <= a <= 1 for a in test_acc.y)
    names = [t.name for t in dash.feature_figure.data]
    assert names == ["layers.0 (input)", "layers.1 (hidden)", "layers.2 (hidden)", "layers.3 (output)"]
    assert all(len(t.y) == 30 and min(t.y) > 0 for t in dash.feature_figure.data)
    assert dash.timings["first_point_s"] > 0 and dash.timings["steps_per_s"] > 0
    assert "application/vnd.jupyter.widget-view+json" in dash._repr_mimebundle_()


def test_same_settings_repeat_exactly():
    a = Dashboard(width=64, steps=15, optimizer="shampoo").run(wait=True)
    b = Dashboard(width=64, steps=15, optimizer="shampoo").run(wait=True)
    assert [r["loss"] for r in a.records] == [r["loss"] for r in b.records]


def test_stop_ends_the_run_within_one_step():
    dash = Dashboard(width=512, steps=2000, optimizer="sgd").run()
    assert wait_for(lambda: len(dash.records) >= 3)
    seen = len(dash.records)
    dash.stop()
    assert dash.join(timeout=30)
    assert len(dash.records) <= seen + 1
    assert dash.records[-1]["step"] < 2000
    assert dash.status.startswith("device: cpu · stopped at step")


def test_moving_a_slider_during_a_run_restarts_it_cleanly():
    dash = Dashboard(width=256, steps=2000, optimizer="adam").run()
    assert wait_for(lambda: len(dash.records) >= 5)
    first_job, old_records = dash._job, dash.records
    dash.controls["width"].value = 64
    assert first_job.join(timeout=30) and first_job.stopped
    assert dash.last_settings.width == 64 and dash.running
    assert wait_for(lambda: dash.records is not old_records and len(dash.records) >= 5)
    dash.stop()
    assert dash.join(timeout=30)
    steps = [r["step"] for r in dash.records]
    assert steps == list(range(1, len(steps) + 1))  # a fresh run, not the old one continued
    assert list(dash.loss_figure.data[0].x) == steps
    assert first_job.error is None and dash._job.error is None


def test_run_and_compare_say_running_at_once_and_a_replaced_run_does_not_overwrite_it():
    dash = Dashboard(width=64, steps=10, optimizer="sgd").run(wait=True)
    assert "done, 10 steps" in dash.status
    gate, load = threading.Event(), dash._dataset
    dash._dataset = lambda name: (gate.wait(30), load(name))[1]   # the new run waits before its first step
    dash.run()
    assert dash.status == "device: cpu · running μP SGD, width 64, lr 0.5, 10 steps, digits …"
    gate.set()
    assert dash.join(timeout=60) and "done, 10 steps" in dash.status
    dash._dataset = load
    dash.controls["steps"].value = 2000
    dash.run()
    assert wait_for(lambda: len(dash.records) >= 3)
    first_job, gate = dash._job, threading.Event()
    dash._dataset = lambda name: (gate.wait(30), load(name))[1]
    dash.compare()   # the replaced run ends ("stopped at step ...") while the comparison waits
    assert first_job.join(timeout=30)
    assert dash.status == "device: cpu · running SP vs μP: SGD, width 64, lr 0.5, 2000 steps, digits …"
    dash.width_view()
    assert dash.status.startswith("device: cpu · width view: starting (μP SGD, widths 32, 64, 128, 256, 512) …")
    gate.set()
    dash.close()


def count_runs(dash):
    """Wrap ``dash._train_job``: the list returned gets the settings of every run that begins."""
    started, train_job = [], dash._train_job
    dash._train_job = lambda job, s, *rest: (started.append(s), train_job(job, s, *rest))[1]
    return started


def test_quick_changes_during_a_run_restart_it_once_with_the_last_values():
    dash = Dashboard(width=256, steps=2000, optimizer="adam").run()
    started = count_runs(dash)
    assert wait_for(lambda: len(dash.records) >= 3)
    first_job = dash._job
    for width in (128, 64, 128, 512, 64):   # a slider's key presses, well within the restart delay
        dash.controls["width"].value = width
        time.sleep(0.02)
    dash.controls["lr"].value = 0.02
    assert first_job.join(timeout=30) and first_job.stopped   # the old run stops at once
    assert dash.running and dash.last_settings.width == 64 and dash.last_settings.lr == pytest.approx(0.02)
    assert wait_for(lambda: len(started) == 1 and len(dash.records) >= 3)
    time.sleep(1.0)   # longer than the restart delay: nothing else starts
    assert len(started) == 1 and (started[0].width, started[0].lr) == (64, pytest.approx(0.02))
    assert dash.records[0]["step"] == 1 and dash.running
    dash.controls["width"].value = 128   # a change after the run began: one more restart
    assert wait_for(lambda: len(started) == 2) and started[1].width == 128
    dash.controls["width"].value = 256   # a restart waits for the controls to be still ...
    dash.run()   # ... and an explicit Run replaces it: one run, not two
    assert wait_for(lambda: len(started) == 3)
    time.sleep(1.0)
    assert len(started) == 3 and started[2].width == 256
    dash.close()
    assert not dash.running and all(job.error is None for job in (first_job, dash._job))


def test_a_run_keeps_the_last_two_runs_faded_and_compare_does_not():
    dash = Dashboard(width=64, steps=10, optimizer="sgd").run(wait=True)
    first = [r["loss"] for r in dash.records]
    assert [t.name for t in dash.loss_figure.data] == ["train loss", "test accuracy"]
    dash.controls["width"].value = 128
    dash.run(wait=True)
    loss, acc, old_loss, old_acc = dash.loss_figure.data   # the run's own traces first: their indices stay
    assert (loss.name, loss.opacity, list(loss.x)) == ("train loss", None, list(range(1, 11)))
    assert old_loss.name == "earlier: width 64" and old_loss.opacity == 0.3 and list(old_loss.y) == first
    assert old_acc.yaxis == "y2" and old_acc.showlegend is False and old_acc.legendgroup == old_loss.legendgroup
    features = dash.feature_figure.data
    assert len(features) == 6 and [t.opacity for t in features[3:]] == [0.3] * 3
    assert [t.showlegend for t in features[3:]] == [True, False, False] and features[3].name == "earlier: width 64"
    dash.controls["width"].value, dash.controls["lr"].value = 256, 0.1
    dash.run(wait=True)
    dash.controls["width"].value = 512
    dash.run(wait=True)   # at most two earlier runs, the newest least faded
    faded = [(t.name, t.opacity) for t in dash.loss_figure.data if t.opacity and t.showlegend is not False]
    assert faded == [("earlier: width 256", 0.3), ("earlier: width 128, lr 0.5", 0.15)]
    dash.compare(wait=True)   # Compare and the Run after it show only their own curves
    assert all(t.opacity is None for t in dash.loss_figure.data + dash.feature_figure.data)
    dash.run(wait=True)
    assert [t.name for t in dash.loss_figure.data] == ["train loss", "test accuracy"]
    dash.close()


def test_moving_a_slider_while_idle_does_not_start_a_run():
    dash = Dashboard(width=64, steps=10)
    dash.controls["lr"].value = 0.1
    assert not dash.running and dash.records == []


def test_choosing_an_optimizer_sets_its_defaults_and_damping_switch():
    dash = Dashboard(optimizer="sgd")
    assert dash.controls["damping"].disabled
    dash.controls["optimizer"].value = "kfac"
    assert dash.controls["lr"].value == pytest.approx(0.1)
    assert dash.controls["damping"].value == pytest.approx(0.1)
    assert not dash.controls["damping"].disabled


def test_an_exception_becomes_a_status_message_and_the_dashboard_still_works():
    def broken():
        raise RuntimeError("this data set is broken")
    dash = Dashboard(width=64, steps=10, datasets={"broken": broken}, dataset="broken").run(wait=True)
    assert dash.status == "error: RuntimeError: this data set is broken"
    assert isinstance(dash._job.error, RuntimeError)
    dash.controls["dataset"].value = "digits"
    dash.run(wait=True)
    assert "done, 10 steps" in dash.status


def test_divergence_is_reported_with_its_step():
    dash = Dashboard(width=1024, optimizer="sgd", param="sp", lr=10.0, dataset="teacher_regression",
                     steps=100).run(wait=True)
    k = dash.records[-1]["step"]
    assert dash.records[-1]["diverged"] and k < 100
    assert f"diverged at step {k}" in dash.status


def test_a_blow_up_is_reported_with_a_hint_and_marked_on_the_loss_plot():
    # SGD at lr 10 in SP: the loss goes 2.3 -> 300 in a few steps without ever being NaN
    dash = Dashboard(width=512, optimizer="sgd", param="sp", lr=10.0, steps=40).run(wait=True)
    last = dash.records[-1]
    assert last["diverged"] and last["step"] < 40 and last["hint"] == "lower the learning rate"
    assert f"diverged at step {last['step']}: the loss rose" in dash.status
    assert re.search(r"the loss rose \d+(\.\d+)?×, from .* stayed above 10× its start", dash.status), dash.status
    assert " for 5 steps · lower the learning rate · " in dash.status
    assert "color:#c00" in dash.status_widget.value
    assert dash.messages == [f"{last['message']} · lower the learning rate"]
    (line,), (note,) = dash.loss_figure.layout.shapes, dash.loss_figure.layout.annotations
    assert line.x0 == last["step"] and note.text == f"diverged at step {last['step']}"
    # zoomed to the steps that ran (not 0..40 with the mark at the left edge), the label inside the plot
    lo, hi = dash.loss_figure.layout.xaxis.range
    assert lo == 0 and last["step"] < hi < 40 and list(dash.feature_figure.layout.xaxis.range) == [lo, hi]
    assert label_inside(dash.loss_figure, note) and dash.loss_figure.layout.showlegend
    assert dash.snapshot("loss").layout.shapes[0].x0 == last["step"]  # a saved notebook keeps it


def test_compare_reports_divergence_per_parametrization():
    dash = Dashboard(width=512, optimizer="sgd", lr=10.0, steps=40).compare(wait=True)
    assert "SP: diverged at step" in dash.status and "lower the learning rate" in dash.status
    assert "μP: done, 40 steps" in dash.status  # the same lr trains under μP, after a spike it reports
    assert len(dash.messages) == 2 and dash.messages[0].startswith("SP: diverged at step")
    assert dash.messages[1].startswith("μP: unstable: the loss spiked")
    marks = [a.text for a in dash.loss_figure.layout.annotations]
    assert marks[0] == f"SP diverged at step {max(r['step'] for r in dash.records if r['param'] == 'sp')}"
    assert len(marks) == 2 and marks[1].startswith("μP loss spiked at step")
    mup = [r for r in dash.records if r["param"] == "mup"]
    peak = max(mup, key=lambda r: r["loss"])["step"]   # the step the warning names is the step marked
    assert marks[1] == f"μP loss spiked at step {peak}" and mup[-1]["warning"].endswith(f" at step {peak}")
    assert list(dash.loss_figure.layout.xaxis.range) == [0, 40]   # μP ran all 40 steps: no zoom
    assert all(label_inside(dash.loss_figure, note) for note in dash.loss_figure.layout.annotations)


def test_close_stops_the_run_and_closes_the_widgets():
    baseline = threading.active_count()
    dash = Dashboard(width=64, steps=2000)
    box = dash.widget
    dash.run()
    dash.close()
    assert not dash.running and threading.active_count() == baseline
    assert box.comm is None and dash.loss_figure.comm is None and dash.controls["width"].comm is None


def test_compare_overlays_sp_and_mup():
    dash = Dashboard(width=256, depth=3, steps=10, optimizer="sgd").compare(wait=True)
    assert {r["param"] for r in dash.records} == {"sp", "mup"}
    assert [t.name for t in dash.loss_figure.data] == ["train loss (SP)", "test accuracy (SP)",
                                                       "train loss (μP)", "test accuracy (μP)"]
    assert len(dash.feature_figure.data) == 6
    assert all(len(t.x) == 10 for t in dash.feature_figure.data)
    assert "SP: done" in dash.status and "μP: done" in dash.status


def test_width_view_fits_slopes_mup_flat_sp_not():
    kw = dict(optimizer="sgd", steps=10, coord_widths=(64, 256, 1024), coord_steps=2, coord_seeds=(0, 1))
    mup = Dashboard(param="mup", **kw).width_view(wait=True)
    assert len(mup.width_points) == 3 * 2 * 3  # widths x seeds x layers
    assert [len(t.x) for t in mup.width_figure.data] == [3, 2] * 3  # measured + dashed prediction
    assert all(abs(s) < 0.3 for s in mup.slopes().values()), mup.slopes()
    assert "width view done (widths 64, 256, 1024): slopes input " in mup.status
    assert mup.status.endswith("(μP predicts 0) · verdict: feature learning is width-stable")
    sp = Dashboard(param="sp", **kw).width_view(wait=True)
    assert sp.slopes()["layers.2"] > 0.4, sp.slopes()  # SP at a fixed lr: the output blows up
    assert "layer layers.2 grows like M^" in sp.verdict() and sp.status.endswith("verdict: " + sp.verdict())


@pytest.mark.parametrize("width,expected", [
    (32, [32, 64, 128, 256, 512]), (64, [32, 64, 128, 256, 512]), (256, [32, 64, 128, 256, 512]),
    (512, [32, 64, 128, 256, 512]), (1024, [64, 128, 256, 512, 1024]), (4096, [256, 512, 1024, 2048, 4096]),
    (100, [50, 100, 200, 400, 800]),
])
def test_width_view_widths_follow_the_width_control(width, expected):
    dash = Dashboard(width=width)
    assert dash.width_view_widths() == expected
    assert list(dash.width_figure.layout.xaxis.tickvals) == expected  # the empty plot shows them too
    dash.close()


def test_moving_the_width_slider_moves_the_width_view_and_coord_widths_override_it():
    dash = Dashboard(width=256, optimizer="sgd", coord_steps=1)
    dash.controls["width"].value = 2048
    assert dash.width_view_widths() == [128, 256, 512, 1024, 2048]
    dash.controls["width"].value = 64
    dash.width_view(wait=True)
    assert sorted({p["width"] for p in dash.width_points}) == [32, 64, 128, 256, 512]
    assert list(dash.width_figure.layout.xaxis.tickvals) == [32, 64, 128, 256, 512]
    assert "width view done (widths 32, 64, 128, 256, 512)" in dash.status
    fixed = Dashboard(width=2048, coord_widths=[256, 64, 128])
    assert fixed.width_view_widths() == [64, 128, 256]
    fixed.controls["width"].value = 32
    assert fixed.width_view_widths() == [64, 128, 256]


@pytest.mark.parametrize("param", ["sp", "mup"])
def test_width_view_verdict_is_coord_checks(param):
    import mupso_lite as ml
    dash = Dashboard(width=128, optimizer="sgd", param=param, coord_steps=2, device="cpu").width_view(wait=True)
    data = dash._dataset("digits")
    cc = ml.coord_check(lambda w, seed: ml.MLP(data.d_in, data.d_out, w, 3, base_width=64, param=param, seed=seed),
                        "sgd", param=param, widths=[32, 64, 128, 256, 512], steps=2, seeds=(0,), data=data,
                        lr=0.5, batch_size=64, device="cpu")
    assert dash.verdict() == cc.verdict() and dash.status.endswith(f"verdict: {cc.verdict()}")
    assert dash.coord_result.slopes() == pytest.approx(cc.slopes())
    if param == "mup":
        assert cc.verdict() == "feature learning is width-stable"
    else:  # SP, fixed lr: the input layer freezes and the output grows with the width
        assert "layer layers.0 freezes like M^-" in cc.verdict() and "layer f grows like M^" in cc.verdict()


def test_figures_are_readable_before_and_after_a_run():
    dash = Dashboard(width=128, steps=20)
    figures = [dash.loss_figure, dash.feature_figure, dash.width_figure]
    for fig in figures:  # the legend sits below the axes, never over them
        assert fig.layout.legend.orientation == "h" and fig.layout.legend.y < 0
        assert fig.layout.legend.yanchor == "top"
    log_axes = [dash.loss_figure.layout.yaxis, dash.feature_figure.layout.yaxis, dash.width_figure.layout.yaxis]
    for axis in log_axes:  # decades only, as powers of ten
        assert axis.type == "log" and axis.dtick == 1 and axis.exponentformat == "power"
    titles = [(f.layout.xaxis.title.text, f.layout.yaxis.title.text) for f in figures]
    assert titles == [("step", "training loss"), ("step", "feature change ‖Δh‖ (rms)"),
                      ("width M", "feature change ‖Δh‖ (rms)")]
    assert dash.loss_figure.layout.yaxis2.title.text == "test accuracy"
    # empty figures start on the ranges a run fills, not plotly's 0.1 .. 1e6
    width_x, width_y = dash.width_figure.layout.xaxis, dash.width_figure.layout.yaxis
    assert width_x.type == "log" and list(width_x.range) == pytest.approx([1.41, 2.80], abs=0.01)  # 32/1.25..512*1.25
    assert list(width_y.range) == [-3, 0.5] and list(dash.feature_figure.layout.xaxis.range) == [0, 20]
    dash.run(wait=True)
    assert list(dash.loss_figure.layout.xaxis.range) == [0, 20] and dash.loss_figure.layout.yaxis.autorange
    dash.controls["dataset"].value = "teacher_regression"
    dash.run(wait=True)  # no accuracy: the test loss shares the loss axis, the accuracy axis hides
    assert dash.loss_figure.layout.yaxis.title.text == "loss (training, test)"
    assert dash.loss_figure.layout.yaxis2.visible is False
    dash.close()


def test_the_tours_blow_up_setting_diverges():
    # the playground's tour, step 5: SGD, SP, width 4096, learning rate 10
    dash = Dashboard(optimizer="sgd", param="sp", width=4096, lr=10.0).run(wait=True)
    last = dash.records[-1]
    assert last["diverged"] and last["step"] < 20
    assert f"diverged at step {last['step']}: the loss rose" in dash.status
    assert "lower the learning rate" in dash.status and "color:#c00" in dash.status_widget.value
    dash.close()
