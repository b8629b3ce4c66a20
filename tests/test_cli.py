"""The command line: coord-check, sweep and report write their files; bad input exits 2 in one line."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from mupso_lite.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_coord_check_writes_csv_and_html(tmp_path, capsys):
    out = tmp_path / "coord"
    assert main(["coord-check", "--optimizer", "kfac", "--widths", "16,32", "--steps", "1,2", "--seeds", "0,1",
                 "--base-width", "16", "--damping-mode", "trace", "--out", str(out)]) == 0
    frame, ex = pd.read_csv(out / "coord.csv"), pd.read_csv(out / "exponents.csv")
    assert set(frame["width"]) == {16, 32} and set(frame["step"]) == {1, 2}
    assert list(ex.columns) == ["step", "layer", "role", "slope"]
    html = (out / "coord.html").read_text()
    assert "Plotly.newPlot" in html and "Coordinate check: K-FAC" in html and "layers.2 (output)" in html
    assert (out / "coord.html").stat().st_size > 3_000_000 and not (out / "plotly.min.js").exists()  # inline
    captured = capsys.readouterr()
    assert "layers.0" in captured.out and f"wrote {out / 'coord.csv'}" in captured.out
    assert "coord-check" in captured.err and "4/4" in captured.err  # the progress bar: 2 widths x 2 seeds


def test_coord_check_no_progress_and_shared_plotly_js(tmp_path, capsys):
    out = tmp_path / "coord"
    assert main(["coord-check", "--optimizer", "sgd", "--widths", "16,32", "--steps", "1", "--seeds", "0",
                 "--base-width", "16", "--no-progress", "--plotlyjs", "directory", "--out", str(out)]) == 0
    assert capsys.readouterr().err == ""
    html = (out / "coord.html").read_text()
    assert 'src="plotly.min.js"' in html and len(html) < 200_000
    assert (out / "plotly.min.js").stat().st_size > 3_000_000


def test_sweep_then_report(tmp_path, capsys):
    results, report = tmp_path / "s.jsonl", tmp_path / "report"
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"optimizer": ["kfac"], "param": ["sp", "mup"]}))
    args = ["sweep", "--grid", str(grid), "--widths", "16,32", "--lrs", "0.03,0.3", "--datasets", "teacher",
            "--steps", "3", "--base-width", "16", "--executor", "serial", "--no-progress", "--results", str(results)]
    assert main(args) == 0
    assert "8 runs in" in capsys.readouterr().out and len(results.read_text().splitlines()) == 8
    assert main(args) == 0  # resumes: nothing new
    assert len(results.read_text().splitlines()) == 8
    assert main(["report", str(results), "--out", str(report)]) == 0
    summary = pd.read_csv(report / "summary.csv")
    assert len(summary) == 8 and set(summary["ok"]) == {1}
    assert (report / "lr_transfer.html").exists() and (report / "accuracy_vs_width.html").exists()
    assert not (report / "damping_transfer.html").exists()  # one damping value: nothing to show
    lr = (report / "lr_transfer.html").read_text()
    assert "Learning-rate transfer: K-FAC" in lr and "training loss (whole training set)" in lr
    assert '<script src="http' not in lr and len(lr) > 3_000_000  # offline by default: plotly.js inlined


@pytest.mark.parametrize("choice", ["directory", "cdn"])
def test_report_plotlyjs_directory_and_cdn_write_small_files(tmp_path, choice, capsys):
    results, report = tmp_path / "s.jsonl", tmp_path / "report"
    assert main(["sweep", "--widths", "16,32", "--lrs", "0.03,0.3", "--optimizers", "sgd", "--datasets", "teacher",
                 "--steps", "2", "--executor", "serial", "--no-progress", "--results", str(results)]) == 0
    assert main(["report", str(results), "--out", str(report), "--plotlyjs", choice]) == 0
    pages = sorted(report.glob("*.html"))
    assert [p.name for p in pages] == ["accuracy_vs_width.html", "lr_transfer.html"]
    for page in pages:
        html = page.read_text()
        assert len(html) < 200_000
        assert ('src="plotly.min.js"' in html) == (choice == "directory")
        assert ('src="https://cdn.plot.ly/' in html) == (choice == "cdn")
    assert (report / "plotly.min.js").exists() == (choice == "directory")


def test_a_resumed_sweep_prints_no_empty_progress_bar(tmp_path, capsys):
    results = tmp_path / "s.jsonl"
    args = ["sweep", "--widths", "16", "--lrs", "0.1", "--optimizers", "sgd", "--datasets", "teacher", "--steps", "2",
            "--executor", "serial", "--results", str(results)]
    assert main(args) == 0
    first = capsys.readouterr()
    assert "1/1" in first.err  # the bar, while there is something to run
    assert main(args) == 0
    again = capsys.readouterr()
    assert again.err == "" and again.out == f"1 run in {results}: 1 ok\n"


@pytest.mark.parametrize("argv, message", [
    (["sweep", "--widths", "16,x"], "argument --widths: expected a comma-separated list of widths, got '16,x'"),
    (["sweep", "--lrs", "-0.1"], "argument --lrs: expected lrs > 0"),
    (["sweep", "--optimizers", "lbfgs"], "argument --optimizers: expected values among sgd"),
    (["sweep", "--widths", "16", "--executor", "dask"], "argument --executor: invalid choice: 'dask'"),
    (["sweep", "--steps", "0", "--widths", "16"], "argument --steps: expected a positive integer, got '0'"),
    (["sweep", "--widths", "16", "--results", "/proc/no/such.jsonl"], "results: expected a writable file path"),
    (["sweep"], "grid: expected at least one of --grid, --widths"),
    (["coord-check", "--widths", "16"], "widths: expected at least two"),
    (["coord-check", "--damping", "nan"], "argument --damping: expected a finite number >= 0"),
    (["report", "/no/such/file.jsonl"], "results: no file /no/such/file.jsonl"),
    (["report", "r.jsonl", "--plotlyjs", "web"], "argument --plotlyjs: invalid choice: 'web' (choose from "),
    (["coord-check", "--plotlyjs", "none"], "argument --plotlyjs: invalid choice: 'none'"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_bad_flags_and_values_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and err.count("\n") == 1, err


def test_python_dash_m_and_the_console_script_show_help():
    for cmd in ([sys.executable, "-m", "mupso_lite", "sweep", "--help"],
                [str(Path(sys.executable).parent / "mupso-lite"), "report", "--help"]):
        if not os.path.exists(cmd[0]) and shutil.which(cmd[0]) is None:
            pytest.fail(f"{cmd[0]} is not installed: pip install -e . declares the console script")
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert res.returncode == 0 and "usage: mupso-lite" in res.stdout, res.stderr
    res = subprocess.run([sys.executable, "-m", "mupso_lite", "sweep", "--widths", "0"], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 2 and res.stderr.count("\n") == 1


def _fail_if_called(*args, **kwargs):
    raise AssertionError("work started before the arguments were checked")


@pytest.mark.parametrize("command", ["coord-check", "report", "sweep"])
def test_an_output_path_under_a_file_fails_before_any_work(tmp_path, command, capsys, monkeypatch):
    import mupso_lite.coord
    monkeypatch.setattr(mupso_lite.coord, "coord_check", _fail_if_called)
    monkeypatch.setattr(sys.modules["mupso_lite.sweep"], "sweep", _fail_if_called)
    monkeypatch.setattr(sys.modules["mupso_lite.sweep"], "load_results", _fail_if_called)
    (tmp_path / "some_file.txt").write_text("keep me")
    bad = str(tmp_path / "some_file.txt" / "sub")
    argv = {"coord-check": ["coord-check", "--widths", "16,32", "--out", bad],
            "report": ["report", str(tmp_path / "r.jsonl"), "--out", bad],
            "sweep": ["sweep", "--widths", "16", "--results", bad + "/r.jsonl"]}[command]
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    flag = "--results" if command == "sweep" else "--out"
    assert e.value.code == 2 and f"error: {flag}: expected a" in err and "some_file.txt is not a folder" in err, err
    assert (tmp_path / "some_file.txt").read_text() == "keep me"


@pytest.mark.parametrize("content, message", [
    (b"[16, 32]", "--grid: expected a JSON object of lists, got list"),
    (b'{"width": {"a": 16}}', "--grid: expected a JSON object of lists, got {\"a\": 16} for 'width'"),
    (b"{}", "--grid: expected a JSON object of lists, got an empty object"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "--grid: expected a readable JSON file"),
    (b"width: [16]", "--grid: expected a readable JSON file"),
])
def test_a_grid_file_that_is_not_an_object_of_lists_exits_2(tmp_path, content, message, capsys):
    grid = tmp_path / "grid.json"
    grid.write_bytes(content)
    with pytest.raises(SystemExit) as e:
        main(["sweep", "--grid", str(grid), "--results", str(tmp_path / "r.jsonl")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "r.jsonl").exists()


def test_sweep_and_report_count_diverged_runs_and_give_the_hint(tmp_path, capsys):
    results, report = tmp_path / "s.jsonl", tmp_path / "report"
    assert main(["sweep", "--widths", "16", "--lrs", "0.05,100", "--optimizers", "sgd", "--datasets", "teacher",
                 "--steps", "15", "--executor", "serial", "--no-progress", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "2 runs in" in out and "1 ok" in out and "1 diverged" in out, out
    assert "1 run diverged (lower the learning rate)" in out
    assert main(["report", str(results), "--out", str(report)]) == 0
    out = capsys.readouterr().out
    summary = pd.read_csv(report / "summary.csv")
    assert list(summary.columns[summary.columns.get_loc("ok"):][:2]) == ["ok", "diverged"]
    assert summary.set_index("lr").loc[100.0, "diverged"] == 1 and summary.set_index("lr").loc[0.05, "ok"] == 1
    assert "1 run diverged (lower the learning rate)" in out and "diverged" in out.splitlines()[0]
    # the figure shows the diverged run as an × with its hover text, not as a missing point
    figure = (report / "lr_transfer.html").read_text()
    assert '"name":"diverged"' in figure and "diverged: " in figure


def test_ctrl_c_exits_130_with_one_line_and_keeps_the_finished_runs(tmp_path):
    results = tmp_path / "r.jsonl"
    # 3000 steps: a run takes seconds, so the other five cannot all finish between the first saved
    # record and the Ctrl-C (at 400 steps, ~0.3 s a run, they sometimes did: 6 of 6 saved)
    proc = subprocess.Popen([sys.executable, "-m", "mupso_lite", "sweep", "--widths", "16,24,32,40,48,56",
                             "--lrs", "0.05", "--optimizers", "kfac", "--datasets", "teacher", "--steps", "3000",
                             "--executor", "local", "--workers", "2", "--no-progress", "--results", str(results)],
                            cwd=ROOT, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a terminal's process: Ctrl-C not ignored, even when this test runs in a background
                            # job of a non-interactive shell (which starts its commands with SIGINT ignored)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not (results.exists() and results.read_bytes().count(b"\n") >= 1):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    from mupso_lite.sweep import read_records
    n = len(read_records(results))
    assert 1 <= n < 6
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err == (f"mupso-lite sweep: interrupted: {n} of 6 runs finished and are saved in {results}; "
                   "run the same sweep again to resume\n")


@pytest.mark.parametrize("optimizer, lr, name", [("muon", "0.02", "Muon"), ("soap", "0.003", "SOAP")])
def test_coord_check_with_muon_and_soap(tmp_path, optimizer, lr, name, capsys):
    out = tmp_path / "coord"
    assert main(["coord-check", "--optimizer", optimizer, "--lr", lr, "--widths", "16,32", "--steps", "1",
                 "--seeds", "0", "--base-width", "16", "--no-progress", "--plotlyjs", "cdn", "--out", str(out)]) == 0
    assert set(pd.read_csv(out / "coord.csv")["width"]) == {16, 32}
    assert f"Coordinate check: {name}, \\u03bcP, base lr {float(lr):g}" in (out / "coord.html").read_text()
    assert "layers.0" in capsys.readouterr().out


def test_coord_check_refuses_a_kfac_flag_for_another_optimizer(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["coord-check", "--optimizer", "muon", "--damping-mode", "trace", "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    assert "--damping-mode: only K-FAC and FOOF read it, got --damping-mode trace with --optimizer muon" in err


def test_sweep_and_report_with_muon_and_soap(tmp_path, capsys):
    results, report = tmp_path / "s.jsonl", tmp_path / "report"
    # --damping-mode is K-FAC's: dropped for both; the dampings are SOAP's eps (Muon has none: 4 + 8 runs)
    assert main(["sweep", "--optimizers", "muon,soap", "--widths", "16,32", "--lrs", "0.003,0.02",
                 "--dampings", "1e-8,1e-6", "--damping-mode", "trace", "--datasets", "teacher", "--steps", "3",
                 "--base-width", "16", "--executor", "serial", "--no-progress", "--results", str(results)]) == 0
    assert f"12 runs in {results}: 12 ok" in capsys.readouterr().out
    assert main(["report", str(results), "--out", str(report), "--plotlyjs", "cdn"]) == 0
    summary = pd.read_csv(report / "summary.csv")
    assert len(summary) == 12 and set(summary["ok"]) == {1} and set(summary["optimizer"]) == {"muon", "soap"}
    assert "Learning-rate transfer: Muon, SOAP" in (report / "lr_transfer.html").read_text()
    assert "Damping transfer: SOAP" in (report / "damping_transfer.html").read_text()
