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


# ---------------------------------------------------------------- the results file is never destroyed
def test_a_file_that_is_not_a_results_file_is_refused_untouched(tmp_path):
    grid_json = tmp_path / "grid.json"
    grid_json.write_bytes(b'{"width": [16, 32], "lr": [0.1]}')  # one line, no final newline
    before = grid_json.read_bytes()
    with pytest.raises(ValueError, match=r"results: .*grid\.json: line 1 is not a results record"):
        ml.sweep(SMALL, results=grid_json, steps=2, executor="serial", progress=False)
    assert grid_json.read_bytes() == before


def test_a_complete_last_line_without_newline_is_kept_and_not_rerun(tmp_path):
    results = tmp_path / "r.jsonl"
    ml.sweep({**SMALL, "width": [16]}, results=results, steps=2, executor="serial", progress=False)
    data = results.read_bytes()
    results.write_bytes(data.rstrip(b"\n"))  # as if the newline had been lost
    assert len(ml.load_results(results)) == 1
    df = ml.sweep(SMALL, results=results, steps=2, executor="serial", progress=False)
    assert results.read_bytes().startswith(data)  # the old line is still there, byte for byte
    assert len(lines(results)) == 2 and len(df) == 2 and df["width"].is_unique


def test_only_an_incomplete_trailing_fragment_is_dropped(tmp_path):
    results = tmp_path / "r.jsonl"
    ml.sweep(SMALL, results=results, steps=2, executor="serial", progress=False)
    good = results.read_bytes()
    results.write_bytes(good + b'{"key": "{\\"width\\": 1')
    ml.sweep(SMALL, results=results, steps=2, executor="serial", progress=False)  # nothing to run
    assert results.read_bytes() == good


@pytest.mark.parametrize("line, match", [
    (b"[1, 2]", "is not a results record"), (b"3", "is not a results record"), (b'"x"', "is not a results record"),
    (b'{"key": "a", "status": "ok"}', "is not a results record"),  # no config
    (b'{"config": {}, "status": "ok"}', "is not a results record"),  # no key
    (b"\xff\xfe\x00garbage\x81", "NUL bytes"), (b"\xff\xfe garbage \x81", "is not UTF-8 text"),
    (b'{"key": "a", "config": {}, "status": "ok"}\x00', "NUL bytes"),
])
def test_reading_a_line_that_is_not_a_record_names_the_file_and_line(tmp_path, line, match):
    results = tmp_path / "r.jsonl"
    ok = b'{"key": "k", "config": {"width": 16}, "status": "ok"}\n'
    for content, lineno in ((ok + line + b"\n" + ok, 2), (ok + line, 2)):
        results.write_bytes(content)
        with pytest.raises(ValueError, match=rf"results: .*r\.jsonl: line {lineno} .*{match}|results: .*r\.jsonl: "
                                             rf"line {lineno} {match}"):
            read_records(results)
        with pytest.raises(ValueError, match=rf"line {lineno}"):
            ml.load_results(results)
        with pytest.raises(ValueError, match=rf"results: .*r\.jsonl: line {lineno}"):
            ml.sweep(SMALL, results=results, steps=2, executor="serial", progress=False)
        assert results.read_bytes() == content


# ---------------------------------------------------------------- two sweeps, one file
TWO_SWEEPS = """
import json, sys, mupso_lite as ml
sweep_module, ran = sys.modules["mupso_lite.sweep"], []
real = sweep_module.run_config
def counted(cfg, device="cpu"):
    ran.append(cfg["width"])
    return real(cfg, device)
sweep_module.run_config = counted
grid = {"width": [16, 24, 32, 40, 48, 56, 64, 72], "lr": [0.05], "optimizer": ["kfac"], "dataset": ["teacher"]}
if __name__ == "__main__":
    ml.sweep(grid, results=sys.argv[1], steps=20, executor="serial", progress=False)
    print(json.dumps(ran))
"""


def test_two_sweeps_on_one_file_run_each_config_once(tmp_path):
    script, results = tmp_path / "run.py", tmp_path / "r.jsonl"
    script.write_text(textwrap.dedent(TWO_SWEEPS))
    procs = [subprocess.Popen([sys.executable, str(script), str(results)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], outs
    ran = [w for out, _ in outs for w in json.loads(out.splitlines()[-1])]
    assert sorted(ran) == [16, 24, 32, 40, 48, 56, 64, 72], "each config ran in one of the two sweeps only"
    keys = [r["key"] for r in read_records(results)]  # every line is a valid record
    assert len(keys) == len(set(keys)) == 8, "each config finished exactly once"
    assert sorted(json.loads(k)["width"] for k in keys) == [16, 24, 32, 40, 48, 56, 64, 72]
    assert sorted(os.listdir(tmp_path)) == ["r.jsonl", "run.py"]  # the last one out removed r.jsonl.lock


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


LOAD_RESULTS_MODULE = """
import importlib.util, os, sys, time
spec = importlib.util.spec_from_file_location("results", sys.argv[3])  # alone: no torch import, fast start
results = importlib.util.module_from_spec(spec)
spec.loader.exec_module(results)
"""
APPENDER = LOAD_RESULTS_MODULE + """
f = results.ResultsFile(sys.argv[1]).open()
for i in range(150):
    f.append({"key": f"{sys.argv[2]}-{i}", "config": {"i": i}, "status": "ok", "curve": [0.5] * 50})
"""
REPAIRER = LOAD_RESULTS_MODULE + """
while not os.path.exists(sys.argv[2]):
    results.ResultsFile(sys.argv[1]).open().close()  # what every sweep does first: check and repair
    time.sleep(0.002)
"""


def test_repairs_running_alongside_appends_lose_no_line(tmp_path):
    module = str(Path(ml.__file__).with_name("results.py"))
    results, stop = tmp_path / "r.jsonl", tmp_path / "stop"
    results.write_bytes(b'{"key": "cut-by-a-kill", "conf')  # so that every open has a fragment to consider
    repairers = [subprocess.Popen([sys.executable, "-c", REPAIRER, str(results), str(stop), module]) for _ in range(2)]
    try:
        writers = [subprocess.Popen([sys.executable, "-c", APPENDER, str(results), name, module]) for name in "ab"]
        assert [w.wait(timeout=120) for w in writers] == [0, 0]
    finally:
        stop.touch()
        for p in repairers:
            p.wait(timeout=60)
    keys = [r["key"] for r in read_records(results)]
    assert len(keys) == len(set(keys)) == 300 and results.read_bytes().endswith(b"\n")


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


# ---------------------------------------------------------------- progress
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
