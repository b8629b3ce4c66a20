"""The dashboard's optimizer controls reach the optimizer: the Fisher and memory controls, bad
values refused before any widget exists, Muon's and SOAP's defaults and runs."""
import threading

import pytest

pytest.importorskip("ipywidgets")
from mupso_lite.dashboard import Dashboard  # noqa: E402
from test_dashboard import wait_for  # noqa: E402


def test_fisher_control_reaches_the_optimizer():
    dash = Dashboard(width=32, optimizer="kfac", dataset="teacher_regression", steps=5, depth=2)
    assert dash.controls["fisher"].value == "auto" and not dash.controls["fisher"].disabled
    data = dash._dataset("teacher_regression")
    for choice in ("auto", "empirical", "mc"):
        dash.controls["fisher"].value = choice
        _, opt = dash._model(dash.settings(), data, "mup")
        assert opt.fisher == choice
        opt.remove_hooks()
    dash.controls["optimizer"].value = "sgd"
    assert dash.controls["fisher"].disabled
    with pytest.raises(ValueError, match=r"fisher: expected one of 'auto', 'empirical', 'mc', got 'exact'"):
        Dashboard(fisher="exact")
    dash.close()


def test_memory_control_reaches_the_optimizer():
    from mupso_lite.dashboard_runs import optimizer_options
    dash = Dashboard(width=32, optimizer="sgd", steps=5, depth=2)
    memory = dash.controls["memory"]
    assert memory.options == (("this batch (the theory)", 0.0), ("average, decay 0.5", 0.5),
                              ("average, decay 0.9", 0.9), ("average, decay 0.95", 0.95), ("average, decay 0.99", 0.99))
    assert memory.value == 0.0 and memory.disabled and dash.settings().memory == 0.0
    assert memory in dash.widget.children[0].children  # in the grid, after the Fisher control
    data = dash._dataset("digits")
    for optimizer, enabled in [("adam", False), ("kfac", True), ("foof", True), ("shampoo", True), ("muon", False),
                               ("soap", True), ("sgd", False)]:
        dash.controls["optimizer"].value = optimizer
        assert memory.disabled is not enabled, optimizer
    built = {}
    for optimizer in ("kfac", "shampoo"):
        dash.controls["optimizer"].value = optimizer
        for choice in (0.0, 0.95):
            memory.value = choice
            _, built[optimizer, choice] = dash._model(dash.settings(), data, "mup")
            built[optimizer, choice].remove_hooks()
        assert optimizer_options(dash.settings()) == ({"fisher": "auto", "ema_decay": 0.95, "inverse_interval": 1}
                                                      if optimizer == "kfac" else {"beta": 0.95, "update_interval": 1})
        memory.value = 0.0  # the optimizers' defaults: nothing extra is passed
        assert optimizer_options(dash.settings()) == ({"fisher": "auto"} if optimizer == "kfac" else {})
    assert (built["kfac", 0.95].ema_decay, built["kfac", 0.95].inverse_interval) == (0.95, 1)
    assert (built["kfac", 0.0].ema_decay, built["kfac", 0.0].inverse_interval) == (0.0, 1)
    assert (built["shampoo", 0.95].beta, built["shampoo", 0.95].update_interval) == (0.95, 1)
    assert (built["shampoo", 0.0].beta, built["shampoo", 0.0].update_interval) == (0.0, 1)
    dash.close()
    for optimizer in ("kfac", "foof", "shampoo"):  # an averaged run trains
        run = Dashboard(width=32, optimizer=optimizer, memory=0.95, steps=5, depth=2).run(wait=True)
        assert run.last_settings.memory == 0.95 and "done, 5 steps" in run.status, run.status
        run.close()


def test_moving_the_memory_control_during_a_run_restarts_it():
    dash = Dashboard(width=64, steps=2000, optimizer="kfac").run()
    assert wait_for(lambda: len(dash.records) >= 3)
    first_job = dash._job
    dash.controls["memory"].value = 0.9
    assert first_job.join(timeout=30) and first_job.stopped
    assert dash.last_settings.memory == 0.9 and dash.running
    dash.close()
    assert first_job.error is None and dash._job.error is None


@pytest.mark.parametrize("memory,error,message", [
    (0.8, ValueError, "got 0.8"), (1.0, ValueError, "got 1.0"), (-0.5, ValueError, "got -0.5"),
    (float("nan"), ValueError, "got nan"), ("0.95", TypeError, r"got '0.95' \(str\)"),
    (True, TypeError, r"got True \(bool\)"), (None, TypeError, r"got None \(NoneType\)"),
])
def test_a_bad_memory_is_refused_before_any_widget_exists(monkeypatch, memory, error, message):
    monkeypatch.setattr(Dashboard, "_build_controls", lambda *a: pytest.fail("widgets built for a bad memory"))
    threads = threading.active_count()
    with pytest.raises(error, match=r"memory: expected one of 0, 0.5, 0.9, 0.95, 0.99 \(the decay of the "
                                    r"curvature average; 0: this batch's\), " + message):
        Dashboard(optimizer="kfac", memory=memory)
    assert threading.active_count() == threads


def test_memory_accepts_numpy_and_integer_values():
    np = pytest.importorskip("numpy")
    assert Dashboard(memory=np.float32(0.95)).settings().memory == 0.95
    assert Dashboard(memory=0).settings().memory == 0.0


@pytest.mark.parametrize("optimizer", ["muon", "soap"])
def test_a_muon_or_soap_run_and_width_view_finish_and_plot(optimizer):
    dash = Dashboard(width=32, depth=2, steps=10, optimizer=optimizer, coord_widths=(32, 64), coord_steps=2)
    dash.run(wait=True)
    assert "done, 10 steps" in dash.status and [r["step"] for r in dash.records] == list(range(1, 11)), dash.status
    assert list(dash.loss_figure.data[0].x) == list(range(1, 11)) and dash.records[-1]["loss"] < dash.records[0]["loss"]
    assert [len(t.y) for t in dash.feature_figure.data] == [10, 10] and min(dash.feature_figure.data[0].y) > 0
    dash.width_view(wait=True)
    assert "width view done (widths 32, 64)" in dash.status and dash.verdict(), dash.status
    assert {p["width"] for p in dash.width_points} == {32, 64}
    name = {"muon": "Muon", "soap": "SOAP"}[optimizer]
    assert dash.width_figure.layout.title.text.startswith(f"width view: μP {name},")
    dash.close()


def test_muon_and_soap_set_their_defaults_and_controls():
    from mupso_lite.dashboard_runs import DEFAULTS, optimizer_options
    dash = Dashboard(optimizer="kfac", width=64, depth=2, steps=5)   # the base width: eps as given
    c, data = dash.controls, dash._dataset("digits")
    c["optimizer"].value = "muon"   # no damping, no curvature memory, no Fisher
    assert c["lr"].value == pytest.approx(DEFAULTS["muon"][0]) and DEFAULTS["muon"][1] is None
    assert c["damping"].disabled and c["memory"].disabled and c["fisher"].disabled
    assert optimizer_options(dash.settings()) == {}
    _, opt = dash._model(dash.settings(), data, "mup")
    assert type(opt).__name__ == "Muon" and all("damping" not in g for g in opt.param_groups)
    c["optimizer"].value = "soap"   # the damping is SOAP's eps; the memory its shampoo_beta
    assert c["lr"].value == pytest.approx(DEFAULTS["soap"][0])
    assert c["damping"].value == pytest.approx(DEFAULTS["soap"][1], rel=1e-6)
    assert not c["damping"].disabled and not c["memory"].disabled and c["fisher"].disabled
    c["damping"].value = 1e-4
    _, opt = dash._model(dash.settings(), data, "mup")
    matrices = [g for g in opt.param_groups if g["use_soap"]]
    assert type(opt).__name__ == "SOAP" and [g["eps"] for g in matrices] == pytest.approx([1e-4, 1e-4])
    for choice, frequency in ((0.0, 1), (0.95, 10)):   # memory 0: this batch's basis at every step
        c["memory"].value = choice
        _, opt = dash._model(dash.settings(), data, "mup")
        assert {g["shampoo_beta"] for g in opt.param_groups} == {choice}
        assert opt.precondition_frequency == frequency
    c["optimizer"].value = "muon"
    assert c["damping"].disabled and c["memory"].disabled
    dash.close()
