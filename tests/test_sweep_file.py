"""ml.sweep's results file is never destroyed: a file that is not a results file is refused
untouched, a line cut by a kill is the only thing dropped, two sweeps on one file run each config
once, and repairs beside appends lose no line."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import mupso_lite as ml
from mupso_lite.sweep import read_records

SMALL = {"width": [16, 32], "lr": [0.05], "optimizer": ["kfac"], "dataset": ["teacher"]}


def lines(path):
    return [line for line in Path(path).read_text().splitlines() if line.strip()]


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


# ---------------------------------------------------------------- repairs beside appends
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
