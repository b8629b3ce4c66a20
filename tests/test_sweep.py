"""ml.sweep / ml.load_results: the grid, validation, the append-only file, resume, executors."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import mupso_lite as ml
from mupso_lite.sweep import config_key, expand_grid, read_records

SMALL = {"width": [16, 32], "lr": [0.05], "optimizer": ["kfac"], "dataset": ["teacher"]}


def lines(path):
    return [line for line in Path(path).read_text().splitlines() if line.strip()]


def test_expand_grid_is_the_product_with_defaults_and_no_duplicates():
    configs = expand_grid({"width": [16, 32], "lr": [0.1, 1.0], "optimizer": ["sgd", "kfac"],
                           "damping": [0.1, 0.01]}, steps=7)
    # sgd ignores damping: its 2 dampings collapse into one config -> 2*2*(1 + 2) runs
    assert len(configs) == 12
    assert len({config_key(c) for c in configs}) == 12
    assert all(c["steps"] == 7 and c["dataset"] == "digits" and c["param"] == "mup" for c in configs)
    assert {c["damping"] for c in configs if c["optimizer"] == "sgd"} == {None}
    # the key is order-independent canonical JSON
    assert config_key({"b": 1, "a": 2}) == config_key({"a": 2, "b": 1}) == '{"a":2,"b":1}'
    # a list of grids is their union; a scalar is a one-value axis
    assert len(expand_grid([{"width": 16}, {"width": [16, 32]}])) == 2


@pytest.mark.parametrize("grid, kwargs, error, match", [
    ({"widht": [16]}, {}, ValueError, r"grid: unknown key 'widht'; expected keys among model, width"),
    ({}, {}, ValueError, r"grid: expected at least one key"),
    ([], {}, ValueError, r"grid: expected a dict"),
    ("width=16", {}, TypeError, r"grid: expected a dict .* got 'width=16'"),
    ({"width": []}, {}, ValueError, r"grid\['width'\]: expected at least one value"),
    ({"width": [16, 0]}, {}, ValueError, r"width: expected a positive integer, got 0"),
    ({"width": [16.5]}, {}, TypeError, r"width: expected a positive integer, got 16.5"),
    ({"lr": [0.1, -1.0]}, {}, ValueError, r"lr: expected a finite number > 0, got -1.0"),
    ({"optimizer": ["lbfgs"]}, {}, ValueError, r"optimizer: expected one of .*'kfac'.* got 'lbfgs'"),
    ({"dataset": ["cifar"]}, {}, ValueError, r"dataset: expected one of 'digits'.* got 'cifar'"),
    ({"width": [16]}, {"executor": "dask"}, ValueError, r"executor: expected one of 'local', 'serial', 'ray'"),
    ({"width": [16]}, {"workers": 0}, ValueError, r"workers: expected a positive integer, got 0"),
    ({"width": [16]}, {"executor": "serial", "ray_address": "auto"}, ValueError, r"ray_address: only used"),
    ({"width": [16], "damping_mode": ["bogus"]}, {}, ValueError, r"damping_mode: expected one of"),
])
def test_bad_arguments_fail_before_any_run(tmp_path, grid, kwargs, error, match):
    results = tmp_path / "r.jsonl"
    with pytest.raises(error, match=match):
        ml.sweep(grid, results=results, steps=2, progress=False, **kwargs)
    assert not results.exists()  # nothing ran, nothing was written


def test_unwritable_results_path_names_the_argument(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"results: expected a writable file path, got .*file/r.jsonl"):
        ml.sweep(SMALL, results=tmp_path / "file" / "r.jsonl", steps=2, executor="serial", progress=False)
    with pytest.raises(ValueError, match="results: expected a file path, got the directory"):
        ml.sweep(SMALL, results=tmp_path, steps=2, executor="serial", progress=False)
    with pytest.raises(TypeError, match="results: expected a file path"):
        ml.sweep(SMALL, results=3, steps=2, executor="serial", progress=False)


def test_serial_sweep_records_everything_and_resumes_without_rerunning(tmp_path):
    results = tmp_path / "sub" / "r.jsonl"
    df = ml.sweep(SMALL, results=results, steps=3, executor="serial", progress=False)
    assert len(df) == 2 and set(df["status"]) == {"ok"} and len(lines(results)) == 2
    rec = json.loads(lines(results)[0])
    assert rec["version"] == ml.__version__ and rec["key"] == config_key(rec["config"])
    assert len(rec["curve"]) == rec["steps_done"] == 3
    for metric in ("final_loss", "best_loss", "train_loss", "test_loss", "test_accuracy", "seconds"):
        assert isinstance(rec[metric], float), metric
    assert rec["best_loss"] == min(rec["curve"])
    assert set(rec["feature_change"]) == {"layers.0", "layers.1", "layers.2"}
    # a second call skips both finished runs and adds only the new width
    df2 = ml.sweep({**SMALL, "width": [16, 32, 48]}, results=results, steps=3, executor="serial", progress=False)
    assert len(lines(results)) == 3 and len(df2) == 3
    assert df2.set_index("width").loc[16, "train_loss"] == df.set_index("width").loc[16, "train_loss"]


def test_diverged_runs_are_recorded_as_diverged(tmp_path):
    df = ml.sweep({"width": [16], "lr": [1e30], "optimizer": ["sgd"], "dataset": ["teacher"]},
                  results=tmp_path / "r.jsonl", steps=5, executor="serial", progress=False)
    row = df.iloc[0]
    assert row["status"] == "diverged" and row["message"].startswith("diverged at step")
    assert row["train_loss"] is None and row["steps_done"] == len(row["curve"]) <= 5
    def no_nan(name):
        raise AssertionError(f"{name} in the results file: not strict JSON")
    json.loads(lines(tmp_path / "r.jsonl")[0], parse_constant=no_nan)  # NaN/inf are stored as null


def test_load_results_tolerates_a_truncated_last_line_and_resume_repairs_it(tmp_path):
    results = tmp_path / "r.jsonl"
    ml.sweep(SMALL, results=results, steps=2, executor="serial", progress=False)
    with open(results, "a") as f:
        f.write('{"key": "half a line')
    assert len(ml.load_results(results)) == 2
    ml.sweep({**SMALL, "width": [16, 24]}, results=results, steps=2, executor="serial", progress=False)
    assert len(ml.load_results(results)) == 3 and all(json.loads(x) for x in lines(results))


def test_load_results_refuses_a_broken_line_in_the_middle_and_a_missing_file(tmp_path):
    results = tmp_path / "r.jsonl"
    results.write_text('{"key": "a", "config": {}}\nnot json\n{"key": "b", "config": {}}\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        ml.load_results(results)
    with pytest.raises(FileNotFoundError, match="results: no file"):
        ml.load_results(tmp_path / "missing.jsonl")


KILLED_SWEEP = """
import sys, mupso_lite as ml
grid = {"width": [16, 24, 32, 40, 48, 56, 64, 72], "lr": [0.05], "optimizer": ["kfac"], "dataset": ["teacher"]}
ml.sweep(grid, results=sys.argv[1], steps=int(sys.argv[2]), executor="serial", progress=False)
"""


def test_a_killed_sweep_keeps_every_finished_run_and_resumes(tmp_path):
    script, results = tmp_path / "run.py", tmp_path / "r.jsonl"
    script.write_text(textwrap.dedent(KILLED_SWEEP))
    proc = subprocess.Popen([sys.executable, str(script), str(results), "80"], start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and (not results.exists() or len(lines(results)) < 2):
        assert proc.poll() is None, "the sweep ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = read_records(results)
    assert 2 <= len(finished) < 8, "kill the sweep while it runs"
    df = ml.load_results(results)
    assert set(df["key"]) == {r["key"] for r in finished} and set(df["status"]) == {"ok"}
    subprocess.run([sys.executable, str(script), str(results), "80"], check=True, timeout=300)
    df = ml.load_results(results)
    assert len(df) == 8 and len(lines(results)) == 8 and df["width"].is_unique


def test_local_executor_gives_the_serial_results(tmp_path):
    grid = {"width": [16, 32], "lr": [0.05, 0.2], "optimizer": ["kfac"], "dataset": ["teacher"]}
    serial = ml.sweep(grid, results=tmp_path / "s.jsonl", steps=3, executor="serial", progress=False)
    local = ml.sweep(grid, results=tmp_path / "l.jsonl", steps=3, executor="local", workers=2, progress=False)
    key = ["width", "lr"]
    a, b = serial.sort_values(key).reset_index(drop=True), local.sort_values(key).reset_index(drop=True)
    assert list(a["key"]) == list(b["key"])
    assert list(a["train_loss"]) == list(b["train_loss"])  # one torch thread in both: bitwise equal


def test_ray_executor_with_a_local_instance(tmp_path):
    pytest.importorskip("ray")
    results = tmp_path / "r.jsonl"
    ml.sweep({**SMALL, "width": [16]}, results=results, steps=3, executor="serial", progress=False)
    df = ml.sweep(SMALL, results=results, steps=3, executor="ray", workers=2, progress=False)
    assert len(df) == 2 and set(df["status"]) == {"ok"} and len(lines(results)) == 2
    import ray
    assert not ray.is_initialized(), "a Ray instance the sweep started is shut down afterwards"
