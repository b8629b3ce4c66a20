"""Hostile input to ml.sweep, its results file and the command line: each case names the
argument in its error, leaves the user's file byte-for-byte as it was, or records the run
with the right status. Tiny runs only (width 8, 2 steps, the "teacher" data, serial)."""
import json
import os
import sys

import pytest

import mupso_lite as ml
from mupso_lite.cli import main
from mupso_lite.sweep import config_key, expand_grid, read_records

GRID = {"width": [8], "lr": [0.05], "optimizer": ["sgd"], "dataset": ["teacher"]}
RUN = dict(steps=2, executor="serial", progress=False)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The bytes of a results file holding one finished run of GRID."""
    path = tmp_path_factory.mktemp("finished") / "r.jsonl"
    ml.sweep(GRID, results=path, **RUN)
    data = path.read_bytes()
    assert data.count(b"\n") == 1 and data.endswith(b"\n")
    return data


def refused(path, match, error=ValueError):
    """ml.sweep refuses ``path`` with ``error`` matching ``match`` and leaves its bytes alone."""
    before = path.read_bytes() if path.is_file() else None
    with pytest.raises(error, match=match):
        ml.sweep(GRID, results=path, **RUN)
    if before is not None:
        assert path.read_bytes() == before


# ---------------------------------------------------------------- the results path
def test_results_is_a_directory(tmp_path):
    refused(tmp_path, r"^results: expected a file path, got the directory ")


def test_results_under_a_regular_file(tmp_path):
    (tmp_path / "notes.txt").write_text("keep")
    refused(tmp_path / "notes.txt" / "r.jsonl", r"^results: expected a writable file path, got '.*notes\.txt/r\.jsonl' "
                                                 r"\(.*notes\.txt is not a folder\)$")
    assert (tmp_path / "notes.txt").read_text() == "keep"


def test_results_is_a_symlink_to_dev_null(tmp_path):
    # refused: the runs would vanish and the next call would run them all again
    (tmp_path / "r.jsonl").symlink_to("/dev/null")
    refused(tmp_path / "r.jsonl", r"^results: expected a regular file, got '.*r\.jsonl' \(a character device\)$")


@pytest.mark.timeout(60)
def test_results_is_a_named_pipe_and_nothing_hangs(tmp_path):
    os.mkfifo(tmp_path / "r.jsonl")
    refused(tmp_path / "r.jsonl", r"^results: expected a regular file, got '.*r\.jsonl' \(a named pipe\)$")


def test_results_is_none_or_empty():
    with pytest.raises(TypeError, match=r"^results: expected a file path \(str or Path\), got NoneType$"):
        ml.sweep(GRID, results=None, **RUN)
    with pytest.raises(ValueError, match=r"^results: expected a file path, got the directory"):
        ml.sweep(GRID, results="", **RUN)


@pytest.mark.parametrize("content, line, what", [
    (b"[1, 2]\n", 1, "is not a results record"),
    (b"3\n", 1, "is not a results record"),
    (b'"x"\n', 1, "is not a results record"),
    (b'{"key": "k", "config": "width=8", "status": "ok"}\n', 1, "is not a results record"),
    (b'{"key": "k", "config": {}}\n', 1, "is not a results record"),  # no status
])
def test_results_with_json_lines_that_are_not_records(tmp_path, finished, content, line, what):
    path = tmp_path / "r.jsonl"
    path.write_bytes(content + finished)
    refused(path, rf"^results: .*r\.jsonl: line {line} {what}")


def test_results_of_binary_garbage(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(bytes(range(128, 256)) * 4)  # no newline, not UTF-8, not JSON
    refused(path, r"^results: .*r\.jsonl: line 1 is not UTF-8 text")


def test_results_of_nul_bytes_after_a_crash(tmp_path, finished):
    path = tmp_path / "r.jsonl"
    path.write_bytes(finished + b"\0" * 4096)  # a zero-filled tail, as a crash can leave
    refused(path, r"^results: .*r\.jsonl: line 2 holds NUL bytes")


def test_results_is_a_grid_json(tmp_path):
    path = tmp_path / "grid.json"
    path.write_bytes(json.dumps(GRID).encode())  # one line, no final newline
    refused(path, r"^results: .*grid\.json: line 1 is not a results record")


def test_results_whose_last_line_is_text_that_is_not_a_record(tmp_path, finished):
    path = tmp_path / "r.jsonl"
    path.write_bytes(finished + b"see the notebook for details")
    refused(path, r"^results: .*r\.jsonl: line 2 is not valid JSON")


def test_an_incomplete_trailing_fragment_is_dropped_and_the_rest_kept(tmp_path, finished):
    path = tmp_path / "r.jsonl"
    path.write_bytes(finished + finished[: len(finished) // 2])  # a writer killed mid-line
    df = ml.sweep(GRID, results=path, **RUN)
    assert path.read_bytes() == finished and len(df) == 1  # cut, and nothing run again


def test_a_last_line_without_newline_is_kept_and_not_rerun(tmp_path, finished):
    path = tmp_path / "r.jsonl"
    path.write_bytes(finished.rstrip(b"\n"))
    assert len(read_records(path)) == 1
    ml.sweep(GRID, results=path, **RUN)
    assert path.read_bytes() == finished  # the newline is back, no second line


def test_blank_and_crlf_lines_are_fine(tmp_path, finished):
    path = tmp_path / "r.jsonl"
    content = b"\n  \n" + finished.replace(b"\n", b"\r\n") + b"\n\n"
    path.write_bytes(content)
    df = ml.sweep(GRID, results=path, **RUN)
    assert len(df) == 1 and path.read_bytes() == content  # already done: untouched


def test_an_error_record_is_retried(tmp_path, finished):
    rec = json.loads(finished)
    rec.update(status="error", message="RuntimeError: out of memory")
    path = tmp_path / "r.jsonl"
    path.write_bytes((json.dumps(rec) + "\n").encode())
    df = ml.sweep(GRID, results=path, **RUN)
    statuses = [r["status"] for r in read_records(path)]
    assert statuses == ["error", "ok"] and list(df["status"]) == ["ok"]


def test_an_empty_results_file_is_a_fresh_start(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b"")
    assert len(ml.load_results(path)) == 0
    assert list(ml.sweep(GRID, results=path, **RUN)["status"]) == ["ok"]


def test_a_symlink_to_a_results_file_is_followed(tmp_path, finished):
    (tmp_path / "real.jsonl").write_bytes(finished)
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "real.jsonl")
    ml.sweep({**GRID, "width": [8, 12]}, results=tmp_path / "link.jsonl", **RUN)
    assert (tmp_path / "link.jsonl").is_symlink()
    assert [r["config"]["width"] for r in read_records(tmp_path / "real.jsonl")] == [8, 12]


def test_reading_a_directory_or_a_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"^results: expected a results file, got .* \(not a regular file\)$"):
        read_records(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"^results: no file .*missing\.jsonl; run ml\.sweep"):
        ml.load_results(tmp_path / "missing.jsonl")


# ---------------------------------------------------------------- the grid
@pytest.mark.parametrize("grid, error, match", [
    ({"lr": [float("nan")]}, ValueError, r"^lr: expected a finite number > 0, got nan$"),
    ({"lr": [float("inf")]}, ValueError, r"^lr: expected a finite number > 0, got inf$"),
    ({"width": [float("inf")]}, TypeError, r"^width: expected a positive integer, got inf \(float\)$"),
    ({"width": [True]}, TypeError, r"^width: expected a positive integer, got True \(bool\)$"),
    ({"width": "16"}, TypeError, r"^width: expected a positive integer, got '16' \(str\)$"),
    ({"seed": ["0"]}, TypeError, r"^seed: expected an integer, got '0'$"),
    ({"batch_size": [-1]}, ValueError, r"^batch_size: expected a positive integer, got -1$"),
    ({"steps": [1e12]}, TypeError, r"^steps: expected a positive integer, got 1000000000000.0 \(float\)$"),
    ({"optimizer": ["kfac"], "damping": [-0.1]}, ValueError, r"^damping: expected a finite number >= 0, got -0.1$"),
    ({"learning_rate": [0.1]}, ValueError, r"^grid: unknown key 'learning_rate'; expected keys among"),
    ({"width": [8], "model": ["transformer"]}, ValueError, r"^model: expected one of 'mlp', 'cnn'"),
])
def test_bad_grid_values_name_the_key(tmp_path, grid, error, match):
    with pytest.raises(error, match=match):
        ml.sweep({**GRID, **grid}, results=tmp_path / "r.jsonl", **RUN)
    assert not (tmp_path / "r.jsonl").exists()


def test_a_huge_step_count_is_accepted_as_the_users_budget():
    # no arbitrary cap: a long run is a choice; Ctrl-C stops it and keeps what finished
    (cfg,) = expand_grid({**GRID, "steps": [10**12]})
    assert cfg["steps"] == 10**12 and '"steps":1000000000000' in config_key(cfg)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"workers": 0}, ValueError, r"^workers: expected a positive integer, got 0$"),
    ({"workers": True}, TypeError, r"^workers: expected a positive integer, got True \(bool\)$"),
    ({"workers": 1.5}, TypeError, r"^workers: expected a positive integer, got 1.5 \(float\)$"),
    ({"executor": "ray", "ray_address": ""}, ValueError, r"^ray_address: expected an address such as 'auto'"),
    ({"executor": "local", "ray_address": "auto"}, ValueError, r"^ray_address: only used with executor='ray'"),
])
def test_bad_sweep_arguments(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        ml.sweep(GRID, results=tmp_path / "r.jsonl", steps=2, progress=False, **kwargs)
    assert not (tmp_path / "r.jsonl").exists()


def test_ray_executor_without_ray_installed(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # "import ray" now raises ImportError
    with pytest.raises(ImportError, match=r"^executor='ray' needs Ray: pip install 'ray>=2.9'$"):
        ml.sweep(GRID, results=tmp_path / "r.jsonl", steps=2, progress=False, executor="ray", ray_address="auto")
    assert not (tmp_path / "r.jsonl").exists()


# ---------------------------------------------------------------- the command line
def exits_2(argv, capsys, message):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and err.count("\n") == 1, err


@pytest.mark.parametrize("argv, message", [
    (["sweep", "--widths", "16,abc"], "argument --widths: expected a comma-separated list of widths, got '16,abc'"),
    (["sweep", "--widths", "16", "--lrs", "nan"], "argument --lrs: expected lrs > 0, got nan"),
    (["sweep", "--widths", "16", "--lrs", "inf"], "lr: expected a finite number > 0, got inf"),
    (["sweep", "--widths", "16", "--optimizers", "kfac", "--dampings", "nan"],
     "damping: expected a finite number >= 0, got nan"),
    (["sweep", "--widths", "16", "--workers", "0"], "argument --workers: expected a positive integer, got '0'"),
    (["sweep", "--widht", "16"], "unrecognized arguments: --widht 16"),
    (["sweep", "--widths", "16", "--results", "/dev/null"], "--results: expected a regular file, got '/dev/null'"),
])
def test_bad_cli_values_exit_2_in_one_line(argv, message, capsys):
    exits_2(argv, capsys, message)


def test_cli_results_is_a_directory(tmp_path, capsys):
    exits_2(["sweep", "--widths", "16", "--results", str(tmp_path)], capsys,
            f"--results: expected a file path, got the directory '{tmp_path}'")


def test_cli_grid_is_a_directory(tmp_path, capsys):
    exits_2(["sweep", "--grid", str(tmp_path)], capsys, f"--grid: expected a readable JSON file, got '{tmp_path}'")


def test_cli_out_is_an_existing_file(tmp_path, capsys):
    (tmp_path / "out").write_text("keep")
    exits_2(["coord-check", "--widths", "16,32", "--out", str(tmp_path / "out")], capsys,
            f"--out: expected a folder that can be created, got '{tmp_path / 'out'}' (it exists and is not a folder)")
    assert (tmp_path / "out").read_text() == "keep"


def test_report_on_a_missing_file(tmp_path, capsys):
    exits_2(["report", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "rep")], capsys,
            f"results: no file {tmp_path / 'nope.jsonl'}")
    assert not (tmp_path / "rep").exists()


def test_report_on_a_file_that_is_not_a_results_file(tmp_path, capsys):
    path = tmp_path / "grid.json"
    path.write_bytes(b'{"width": [16]}')
    exits_2(["report", str(path), "--out", str(tmp_path / "rep")], capsys,
            f"results: {path}: line 1 is not a results record")
    assert path.read_bytes() == b'{"width": [16]}' and not (tmp_path / "rep").exists()


def test_report_on_an_empty_file(tmp_path, capsys):
    (tmp_path / "r.jsonl").write_bytes(b"")
    exits_2(["report", str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "rep")], capsys,
            f"results: expected at least one run in {tmp_path / 'r.jsonl'}, got none")


def test_report_on_records_that_are_not_sweep_runs(tmp_path, capsys):
    (tmp_path / "r.jsonl").write_bytes(b'{"key": "a", "config": {"x": 1}, "status": "ok"}\n')
    exits_2(["report", str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "rep")], capsys,
            "results: expected runs of ml.sweep in")


def test_report_on_a_file_of_only_diverged_runs(tmp_path, finished, capsys):
    rec = json.loads(finished)
    rec.update(status="diverged", message="diverged at step 2: the loss is nan", hint="lower the learning rate",
               train_loss=None, test_loss=None, test_accuracy=None)
    (tmp_path / "r.jsonl").write_text(json.dumps(rec) + "\n")
    assert main(["report", str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "1 run diverged (lower the learning rate)" in out
    import pandas as pd
    row = pd.read_csv(tmp_path / "rep" / "summary.csv").iloc[0]
    assert (row["runs"], row["ok"], row["diverged"]) == (1, 0, 1) and pd.isna(row["train_loss"])
