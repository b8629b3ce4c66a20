"""ml.sweep / ml.load_results: the grid, validation, resume, executors, interrupts, divergence.
(The results file's integrity: test_sweep_file.py; the progress line: test_sweep_progress.py.)"""
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


def test_a_config_names_its_curvature_memory_and_an_older_record_without_it_is_run_again(tmp_path):
    kfac, shampoo, sgd = expand_grid({"optimizer": ["kfac", "shampoo", "sgd"], "width": 16})
    assert (kfac["ema_decay"], kfac["inverse_interval"]) == (0.0, 1)        # the optimizers' defaults
    assert (shampoo["beta"], shampoo["update_interval"]) == (0.0, 1)
    assert not {"ema_decay", "inverse_interval", "beta", "update_interval"} & set(sgd)
    # the default written out is the same run: one key
    assert len(expand_grid([{"optimizer": "kfac"}, {"optimizer": "kfac", "ema_decay": 0.0}])) == 1
    assert len(expand_grid([{"optimizer": "kfac"}, {"optimizer": "kfac", "ema_decay": 0.95}])) == 2
    # a results file from before the configs named it (K-FAC then averaged its factors by
    # default): its K-FAC run is not passed off as today's, its SGD run still resumes
    grid = {**SMALL, "width": [16], "optimizer": ["kfac", "sgd"]}
    results = tmp_path / "r.jsonl"
    ml.sweep(grid, results=results, steps=2, executor="serial", progress=False)
    old = []
    for line in lines(results):
        rec = json.loads(line)
        for k in ("ema_decay", "inverse_interval"):
            rec["config"].pop(k, None)
        old.append(json.dumps({**rec, "key": config_key(rec["config"]), "train_loss": 123.0}))
    results.write_text("\n".join(old) + "\n")
    df = ml.sweep(grid, results=results, steps=2, executor="serial", progress=False).set_index("optimizer")
    assert len(lines(results)) == 3                 # the K-FAC run again, appended
    assert df.loc["sgd", "train_loss"] == 123.0 and df.loc["kfac", "train_loss"] != 123.0


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
    results.write_text('{"key": "a", "config": {}, "status": "ok"}\nnot json\n'
                       '{"key": "b", "config": {}, "status": "ok"}\n')
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


# ---------------------------------------------------------------- interrupts and orphans
def test_ctrl_c_stops_the_sweep_and_says_how_to_resume(tmp_path, monkeypatch):
    sweep_module = sys.modules["mupso_lite.sweep"]  # (ml.sweep is the function)
    real, calls = sweep_module.run_config, []

    def interrupted_on_the_second_run(cfg, device="cpu"):
        calls.append(cfg)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(cfg, device)
    monkeypatch.setattr(sweep_module, "run_config", interrupted_on_the_second_run)
    results = tmp_path / "r.jsonl"
    grid = {**SMALL, "width": [16, 24, 32]}
    with pytest.raises(KeyboardInterrupt, match=rf"^1 of 3 runs finished and are saved in {results}; "
                                                 "run the same sweep again to resume$"):
        ml.sweep(grid, results=results, steps=2, executor="serial", progress=False)
    assert len(read_records(results)) == 1
    monkeypatch.setattr(sweep_module, "run_config", real)
    assert len(ml.sweep(grid, results=results, steps=2, executor="serial", progress=False)) == 3


ORPHANS = """
import sys, mupso_lite as ml
if __name__ == "__main__":
    grid = {"width": [16, 24, 32, 40], "lr": [0.05], "optimizer": ["kfac"], "dataset": ["teacher"]}
    ml.sweep(grid, results=sys.argv[1], steps=100000, executor="local", workers=2, progress=False)
"""


def _children(pid):
    """{pid: cmdline} of the processes whose parent is ``pid`` (from /proc)."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                if ppid == pid:
                    with open(f"/proc/{d}/cmdline", "rb") as f:
                        out[int(d)] = f.read().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, ValueError, IndexError):
                pass
    return out


def _alive(pid):
    """True while ``pid`` runs (a zombie waiting for its new parent to reap it counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
def test_killing_the_sweep_leaves_no_worker_processes(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(ORPHANS))
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "r.jsonl")], start_new_session=True,
                            stderr=subprocess.DEVNULL)
    kids = {}
    try:
        deadline = time.time() + 120
        while time.time() < deadline and sum("spawn_main" in c for c in kids.values()) < 2:
            assert proc.poll() is None, "the sweep ended before it could be killed"
            kids = _children(proc.pid)
            time.sleep(0.2)
        assert sum("spawn_main" in c for c in kids.values()) == 2, kids
        assert any("resource_tracker" in c for c in kids.values()), kids
        time.sleep(2)  # let the workers get into their runs
        os.kill(proc.pid, signal.SIGKILL)  # the parent only, as the OOM killer would
        proc.wait()
        deadline = time.time() + 10
        while time.time() < deadline and any(map(_alive, kids)):
            time.sleep(0.1)
        assert not [c for pid, c in kids.items() if _alive(pid)], "workers outlived the sweep"
    finally:
        for pid in kids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# ---------------------------------------------------------------- divergence
def test_a_diverging_run_is_recorded_with_its_message_hint_and_partial_results(tmp_path):
    df = ml.sweep({"width": [16], "lr": [100.0], "optimizer": ["sgd"], "dataset": ["teacher"]},
                  results=tmp_path / "r.jsonl", steps=15, executor="serial", progress=False)
    row = df.iloc[0]
    assert row["status"] == "diverged", row["message"]
    assert row["message"].startswith("diverged at step") and row["hint"] == "lower the learning rate"
    assert 1 < row["steps_done"] == len(row["curve"]) < 15  # stopped early, every loss kept
    assert row["train_loss"] is None  # not measured on a diverged model
    assert set(row["feature_change"]) == {"layers.0", "layers.1", "layers.2"}  # the last one measured
    rec = read_records(tmp_path / "r.jsonl")[0]
    assert rec["hint"] == "lower the learning rate" and rec["status"] == "diverged"


# ---------------------------------------------------------------- Ray binds to loopback
RAY_SWEEP = """
import sys, mupso_lite as ml
if __name__ == "__main__":
    df = ml.sweep({"width": [16, 24], "lr": [0.05], "optimizer": ["kfac"], "dataset": ["teacher"]},
                  results=sys.argv[1], steps=3, executor="ray", workers=1, progress=False)
    import ray
    assert not ray.is_initialized() and len(df) == 2 and set(df["status"]) == {"ok"}, df
"""


def test_a_local_ray_instance_listens_on_loopback_only(tmp_path):
    pytest.importorskip("ray")
    psutil = pytest.importorskip("psutil")
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(RAY_SWEEP))
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "r.jsonl")], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    listening = {}
    try:
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            for p in tree:
                try:
                    for c in p.net_connections("inet"):
                        if c.status == psutil.CONN_LISTEN:
                            listening[(c.laddr.ip, c.laddr.port)] = p.name()
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    pass
            time.sleep(0.3)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err
    assert listening, "no listening socket seen: the poll missed the Ray services"
    loopback = ("127.0.0.1", "::1", "::ffff:127.0.0.1")
    exposed = {addr: name for addr, name in listening.items() if addr[0] not in loopback}
    assert not exposed, f"Ray services listening beyond loopback: {exposed}"


def test_a_ctrl_c_during_submit_is_held_not_lost():
    """The pool's submit holds SIGINT (blocked, so the workers it starts cannot get it before they
    ignore it); a Ctrl-C that arrives meanwhile must reach the sweep when the block ends. With
    SIGINT ignored there instead, it was lost and the whole grid ran."""
    import os
    import signal

    from mupso_lite.executors import sigint_held
    reached_end_of_block = False
    # Python's Ctrl-C handler, as in a terminal (a background job of a non-interactive shell
    # inherits SIGINT ignored, and then no Ctrl-C reaches it at all)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with sigint_held():
                os.kill(os.getpid(), signal.SIGINT)
                reached_end_of_block = True
    finally:
        signal.signal(signal.SIGINT, old)
    assert reached_end_of_block


def test_muon_and_soap_configs_keep_their_own_damping_and_options():
    configs = expand_grid({"optimizer": ["muon", "soap", "kfac"], "damping": [1e-8, 1e-6], "momentum": [0.9],
                           "damping_mode": ["trace"], "shampoo_beta": [0.5], "io": ["adam"]}, width=16)
    by = {name: [c for c in configs if c["optimizer"] == name] for name in ("muon", "soap", "kfac")}
    (muon,) = by["muon"]   # no damping: the two values are one config
    assert muon["damping"] is None and muon["momentum"] == 0.9 and muon["io"] == "adam"
    assert "shampoo_beta" not in muon and "damping_mode" not in muon
    assert sorted(c["damping"] for c in by["soap"]) == [1e-8, 1e-6]   # SOAP's eps is its damping
    assert all(c["shampoo_beta"] == 0.5 and c["io"] == "adam" and "momentum" not in c and "damping_mode" not in c
               for c in by["soap"])
    assert all(c["damping_mode"] == "trace" and c["momentum"] == 0.9 and "io" not in c and "shampoo_beta" not in c
               for c in by["kfac"])


def test_a_muon_and_soap_sweep_with_momentum_runs_and_hints_per_optimizer(tmp_path):
    from mupso_lite.divergence import HINT_FIRST_ORDER, HINT_SOAP
    df = ml.sweep({"optimizer": ["muon", "soap"], "lr": [3e-3, 1000.0], "momentum": [0.9], "width": [16]},
                  results=tmp_path / "r.jsonl", steps=8, dataset="teacher", base_width=16, executor="serial",
                  progress=False)
    assert len(df) == 4
    ok, bad = df[df["lr"] == 3e-3], df[df["lr"] == 1000.0].set_index("optimizer")
    assert set(ok["status"]) == {"ok"} and set(bad["status"]) == {"diverged"}, df[["optimizer", "lr", "message"]]
    assert bad.loc["muon", "hint"] == HINT_FIRST_ORDER and bad.loc["soap", "hint"] == HINT_SOAP
    momentum = df.set_index("optimizer")["momentum"]   # Muon's own; SOAP has none, its configs drop it
    assert (momentum.loc["muon"] == 0.9).all() and momentum.loc["soap"].isna().all()
