"""Hostile input to ml.sweep, its results file and the command line: each case names the
argument in its error, leaves the user's file byte-for-byte as it was, or records the run
with the right status. Tiny runs only (width 8, 2 steps, the "teacher" data, serial, except
where a pool worker is killed)."""
import json
import os
import signal
import sys
from pathlib import Path

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


# ---------------------------------------------------------------- planted files next to the results
PLANTS = {"link": (lambda lock, target: lock.symlink_to(target), "a symlink to '.*elsewhere/victim'"),
          "pipe": (lambda lock, target: os.mkfifo(lock), "a named pipe"),
          "dir": (lambda lock, target: lock.mkdir(), "a directory")}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("plant", PLANTS)
@pytest.mark.parametrize("results_exists", [False, True])
def test_a_planted_lock_is_refused_and_not_followed(tmp_path, finished, plant, results_exists):
    path, target = tmp_path / "r.jsonl", tmp_path / "elsewhere" / "victim"
    if results_exists:
        path.write_bytes(finished)
    make, got = PLANTS[plant]
    make(tmp_path / "r.jsonl.lock", target)
    refused(path, rf"^results: expected the claim lock '.*r\.jsonl\.lock' to be a regular file or absent, got {got}")
    assert path.exists() == results_exists and not target.parent.exists()  # nothing created


def test_a_lock_symlink_planted_after_the_check_is_not_followed(tmp_path, finished, monkeypatch):
    from mupso_lite import results as results_module
    path, target = tmp_path / "r.jsonl", tmp_path / "victim"
    path.write_bytes(finished)
    real, calls = results_module._check_sidecar, []

    def check_then_plant(sidecar, arg="results"):  # the check passes, then the link appears before the open
        calls.append(sidecar)
        return os.symlink(target, sidecar) if len(calls) == 1 else real(sidecar, arg)
    monkeypatch.setattr(results_module, "_check_sidecar", check_then_plant)
    with pytest.raises(ValueError, match=r"^results: expected the claim lock .* got a symlink to '.*victim'"):
        results_module.ResultsFile(path).open()
    assert not target.exists() and path.read_bytes() == finished


def test_a_dangling_results_symlink_is_refused_and_its_target_not_created(tmp_path):
    target = tmp_path / "elsewhere" / "r.jsonl"
    (tmp_path / "r.jsonl").symlink_to(target)
    refused(tmp_path / "r.jsonl", r"^results: expected a regular file or a new path, got '.*r\.jsonl' "
                                  r"\(a symlink to '.*elsewhere/r\.jsonl', which does not exist\)$")
    assert not target.parent.exists()


# ---------------------------------------------------------------- a byte-order mark
BOM = b"\xef\xbb\xbf"


@pytest.mark.parametrize("ending", [b"\n", b""])
def test_a_results_file_starting_with_a_bom_is_read(tmp_path, finished, ending):
    path = tmp_path / "r.jsonl"
    path.write_bytes(BOM + finished.rstrip(b"\n") + ending)
    assert [r["key"] for r in read_records(path)] == [json.loads(finished)["key"]]
    df = ml.sweep(GRID, results=path, **RUN)
    assert len(df) == 1 and path.read_bytes() == BOM + finished  # not rerun; only a missing newline added


def test_a_bom_in_the_middle_of_a_results_file_is_still_refused(tmp_path, finished):
    (tmp_path / "r.jsonl").write_bytes(finished + BOM + finished)
    refused(tmp_path / "r.jsonl", r"^results: .*r\.jsonl: line 2 is not valid JSON")


def test_cli_grid_file_starting_with_a_bom_is_read(tmp_path, capsys):
    grid = tmp_path / "grid.json"
    grid.write_bytes(BOM + json.dumps(GRID).encode())
    assert main(["sweep", "--grid", str(grid), "--steps", "2", "--executor", "serial", "--no-progress",
                 "--results", str(tmp_path / "r.jsonl")]) == 0
    assert [r["config"]["width"] for r in read_records(tmp_path / "r.jsonl")] == [8]


# ---------------------------------------------------------------- an unreachable Ray cluster
@pytest.mark.timeout(120)
@pytest.mark.parametrize("address", ["127.0.0.1:{port}", "ray://127.0.0.1:{port}", "10.255.255.1:6379", "auto"])
def test_an_unreachable_ray_address_fails_fast_naming_it(tmp_path, monkeypatch, address):
    pytest.importorskip("ray")
    import socket
    import time
    from mupso_lite import executors
    monkeypatch.setattr(executors, "RAY_PROBE_TIMEOUT_S", 1.0)  # a non-routable address times out
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")  # what "auto" finds
    address = address.format(port=port)
    start = time.monotonic()
    # refused by the probe; or, where a proxy accepts any connection, by Ray's first try
    with pytest.raises(ConnectionError, match=rf"^ray_address: expected a running Ray cluster at '{address}', got "
                                              r"no (connection to |Ray answer).*; start one with `ray start --head`"):
        ml.sweep(GRID, results=tmp_path / "r.jsonl", steps=2, progress=False, executor="ray", ray_address=address)
    assert time.monotonic() - start < 60
    assert not (tmp_path / "r.jsonl").exists() or (tmp_path / "r.jsonl").read_bytes() == b""  # no run
    import ray
    assert not ray.is_initialized()


@pytest.mark.parametrize("address", ["head", "head:port", "head:70000", "http://head:10001", "ray://"])
def test_a_malformed_ray_address_names_what_it_wanted(tmp_path, address):
    pytest.importorskip("ray")
    with pytest.raises(ValueError, match=r"^ray_address: expected 'auto', 'local', 'host:port' \(a cluster's GCS\) "
                                         rf"or 'ray://host:port' \(Ray Client\), got '{address}'$"):
        ml.sweep(GRID, results=tmp_path / "r.jsonl", steps=2, progress=False, executor="ray", ray_address=address)
    assert not (tmp_path / "r.jsonl").exists()


# ---------------------------------------------------------------- a pool worker killed
def dies_at_width_9(cfg, device="cpu"):
    """``run_config`` in a pool worker, except that the worker running width 9 dies: killed with
    SIGKILL as the out-of-memory killer does, or by ``os._exit(3)`` with DIE=exit; with DIE=once,
    only the first time. RUN_LOG gets one line per call."""
    from mupso_lite.sweep import run_config
    with open(os.environ["RUN_LOG"], "a") as log:
        log.write(f"{cfg['width']}\n")
    if cfg["width"] == 9 and os.environ["DIE"] == "exit":
        os._exit(3)
    first = Path(os.environ["RUN_LOG"]).read_text().split().count("9") == 1
    if cfg["width"] == 9 and (os.environ["DIE"] != "once" or first):
        os.kill(os.getpid(), signal.SIGKILL)
    return run_config(cfg, device)


def sweep_with_a_dying_run(tmp_path, monkeypatch, die):
    """Records, DataFrame (or the error) and the widths run, once the sweep is over and checked."""
    import multiprocessing
    monkeypatch.setattr(sys.modules["mupso_lite.sweep"], "run_config", dies_at_width_9)
    monkeypatch.setenv("RUN_LOG", str(tmp_path / "log"))
    monkeypatch.setenv("DIE", die)
    try:
        out = ml.sweep({**GRID, "width": [8, 9, 10, 11]}, results=tmp_path / "r.jsonl", steps=2, executor="local",
                       workers=2, progress=False)
    except RuntimeError as e:
        out = e
    assert multiprocessing.active_children() == [], "worker processes outlived the sweep"
    assert sorted(os.listdir(tmp_path)) == ["log", "r.jsonl"], "the claims were not released"
    return read_records(tmp_path / "r.jsonl"), out, [int(w) for w in (tmp_path / "log").read_text().split()]


@pytest.mark.timeout(300)
def test_a_run_whose_worker_is_killed_is_recorded_as_failed_and_the_others_finish(tmp_path, monkeypatch):
    with pytest.warns(RuntimeWarning, match=r"^sweep: 1 run\(s\) lost their worker process, also when rerun alone "
                                            r"\(width=9 lr=0.05\): recorded with status 'error' in .*r\.jsonl; "
                                            "run the same sweep again to retry them"):
        records, df, ran = sweep_with_a_dying_run(tmp_path, monkeypatch, "always")
    assert {r["config"]["width"]: r["status"] for r in records} == {8: "ok", 9: "error", 10: "ok", 11: "ok"}
    assert len(records) == 4 and sorted(df["width"]) == [8, 9, 10, 11]
    assert [r["message"] for r in records if r["status"] == "error"] == [
        "worker process died (killed by SIGKILL, e.g. by the out-of-memory killer), also when rerun alone"]
    assert ran.count(9) == 2 and max(map(ran.count, (8, 10, 11))) <= 2  # lost runs are rerun once


@pytest.mark.timeout(300)
def test_a_run_whose_worker_is_killed_once_is_rerun_and_recorded_ok(tmp_path, monkeypatch, recwarn):
    records, df, ran = sweep_with_a_dying_run(tmp_path, monkeypatch, "once")
    assert len(records) == 4 and {r["status"] for r in records} == set(df["status"]) == {"ok"}, records
    assert ran.count(9) == 2 and not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


@pytest.mark.timeout(300)
def test_a_worker_that_exits_by_itself_stops_the_sweep_keeping_what_finished(tmp_path, monkeypatch):
    records, error, ran = sweep_with_a_dying_run(tmp_path, monkeypatch, "exit")
    assert isinstance(error, RuntimeError) and str(error).startswith(
        "executor='local': expected a worker process to run or be killed, got one that exited by itself "
        "(exit code 3), also when rerun alone;") and str(error).endswith("run the same sweep again to resume")
    assert {r["status"] for r in records} <= {"ok"} and 9 not in [r["config"]["width"] for r in records]
    assert ran.count(9) == 2
