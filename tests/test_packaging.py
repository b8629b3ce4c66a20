"""The install files agree: pyproject.toml, environment.yml, Makefile, README and .ci/run."""
import ast
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
TORCH_PIN = "2.13.0"
PLAYGROUND = "notebooks/00_playground.ipynb"
LAB_URL = f"/lab/tree/{PLAYGROUND}"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def extras():
    return pyproject()["project"]["optional-dependencies"]


def requirement_map(lines, python="3.11"):
    """{normalized name: specifier string} for requirements whose marker holds on ``python``."""
    out = {}
    for line in lines:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"python_version": python}):
            name = canonicalize_name(req.name)
            assert name not in out, f"{req.name} listed twice"
            out[name] = str(req.specifier)
    return out


def conda_env():
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def conda_pip_lines():
    pip = [d["pip"] for d in conda_env()["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip) == 1, "environment.yml needs exactly one pip section"
    return pip[0]


def test_environment_yml_matches_pyproject_runtime_and_dev():
    project = pyproject()["project"]
    expected = requirement_map(project["dependencies"] + project["optional-dependencies"]["dev"])
    lines = conda_pip_lines()
    got = requirement_map([line for line in lines if not line.startswith("-")])
    torch_spec = expected.pop("torch")
    assert got.pop("torch") == f"=={TORCH_PIN}"
    assert SpecifierSet(torch_spec).contains(TORCH_PIN), f"torch {TORCH_PIN} must satisfy {torch_spec}"
    assert got == expected
    for extra, reqs in extras().items():  # so the conda environment also has every extra, lab included
        missing = requirement_map(reqs).items() - got.items()
        assert not missing, f"environment.yml lacks the {extra} extra's {sorted(missing)}"
    # torch comes from the CPU index, and first
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines
    assert next(line for line in lines if not line.startswith("-")) == f"torch=={TORCH_PIN}"
    assert "python=3.11" in conda_env()["dependencies"]


def test_pyproject_layout():
    data = pyproject()
    project = data["project"]
    assert project["requires-python"] == ">=3.10"
    assert project["scripts"]["mupso-lite"] == "mupso_lite.cli:main"
    assert {"lab", "notebooks", "ray", "dev"} <= set(extras())
    pytest_cfg = data["tool"]["pytest"]["ini_options"]
    assert pytest_cfg["testpaths"] == ["tests", "notebooks"] and pytest_cfg["timeout"] == 900
    assert pytest_cfg["addopts"] == "--nbval-lax --nbval-current-env"   # the notebooks run through nbval
    assert any(m.startswith("slow:") for m in pytest_cfg["markers"])
    dev = requirement_map(extras()["dev"])
    for extra in ("lab", "notebooks", "ray"):  # dev installs everything the other extras do
        assert requirement_map(extras()[extra]).items() <= dev.items(), extra
    # the lab extra is the student install: none of the test, browser or cluster tools
    assert not {"pytest", "playwright", "ray", "asdfghjkl"} & set(requirement_map(extras()["lab"]))


# ---------------------------------------------------------------- Makefile: make lab / make test
STUB = '#!/bin/sh\necho "$(basename "$0") $*" >> "$MAKE_LOG"\n'


@pytest.fixture
def make_in(tmp_path):
    """Run the Makefile for real in a copy of the install files whose .venv/bin/python and
    jupyter only log their arguments; returns ``make(target) -> the lines logged``."""
    if shutil.which("make") is None:
        pytest.skip("needs GNU make")
    shutil.copy(ROOT / "Makefile", tmp_path)
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    os.utime(tmp_path / "pyproject.toml", (1e9, 1e9))  # older than any stamp make writes
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    for name in ("python", "jupyter"):
        (tmp_path / ".venv" / "bin" / name).write_text(STUB)
        (tmp_path / ".venv" / "bin" / name).chmod(0o755)
    log = tmp_path / "make.log"
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}

    def make(target):
        log.write_text("")
        subprocess.run(["make", "-s", target], cwd=tmp_path, env={**env, "MAKE_LOG": str(log)},
                       check=True, timeout=60)
        return log.read_text().splitlines()

    make.dir = tmp_path
    return make


def installs(lines):
    return [line for line in lines if " pip install " in line]


def test_make_lab_installs_the_lab_extra_and_opens_the_notebook(make_in):
    lines = make_in("lab")
    assert installs(lines) == [f"python -m pip install torch=={TORCH_PIN}", "python -m pip install -e .[lab]"]
    server = lines[-1].split()
    assert server[:2] == ["jupyter", "lab"]
    assert "--ip=127.0.0.1" in server and not any("0.0.0.0" in arg for arg in server)
    assert "--ServerApp.root_dir=." in server  # the file browser shows notebooks/ and docs/
    assert f"--LabApp.default_url={LAB_URL}" in server
    assert (ROOT / PLAYGROUND).is_file()


def test_make_test_installs_the_dev_extra_then_runs_pytest(make_in):
    lines = make_in("test")
    assert installs(lines) == [f"python -m pip install torch=={TORCH_PIN}", "python -m pip install -e .[dev]"]
    assert lines[-1] == "python -m pytest -q"


def test_make_stamps_test_then_lab_installs_once_lab_then_test_adds_dev(make_in):
    assert installs(make_in("test"))
    assert installs(make_in("lab")) == []  # the dev set contains the lab set
    for stamp in make_in.dir.glob(".venv/.installed*"):  # as if pyproject.toml were edited since
        os.utime(stamp, (1e9 - 100, 1e9 - 100))
    assert installs(make_in("lab"))[-1].endswith(".[lab]")
    assert installs(make_in("test"))[-1].endswith(".[dev]")  # lab, then test: adds the dev set
    assert installs(make_in("lab")) == []
    assert installs(make_in("test")) == []


def test_make_student_and_make_check_need_only_the_lab_extra(make_in):
    lines = make_in("student")
    assert installs(lines)[-1].endswith(".[lab]") and lines[-1] == "python notebooks/student.py"
    (make_in.dir / "notebooks").mkdir()
    for name in ("00_a.ipynb", "01_b.ipynb", "execute.py"):
        (make_in.dir / "notebooks" / name).write_text("")
    lines = make_in("check")
    assert lines == [f"jupyter nbconvert --to notebook --execute notebooks/{name} --output-dir build/check "
                     f"--ExecutePreprocessor.timeout=900" for name in ("00_a.ipynb", "01_b.ipynb")]
    recipe = (ROOT / "Makefile").read_text().split("\ncheck:")[1].split("\n\n")[0]
    assert "MUPSO_SIZE=ci $(BIN)/jupyter nbconvert" in recipe and "|| exit 1" in recipe


@pytest.mark.parametrize("target, extra, other",
                         [("lab", "lab", "dev"), ("test", "dev", "lab"), ("venv", "dev", "lab")])
def test_make_dry_run_installs_torch_before_the_package(target, extra, other):
    if shutil.which("make") is None:
        pytest.skip("needs GNU make")
    out = subprocess.run(["make", "-n", "-B", target], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=60).stdout  # -B: as on a fresh clone, whatever .venv holds
    assert out.index(f"pip install torch=={TORCH_PIN}") < out.index(f'pip install -e ".[{extra}]"')
    assert f'".[{other}]"' not in out


# ---------------------------------------------------------------- what the lab extra must provide
# Needed by the lab without an import statement in the notebooks or the package.
NEEDED_WITHOUT_IMPORT = {
    "jupyterlab": "the server `make lab` starts",
    "ipykernel": "the notebooks' kernel (kernelspec python3)",
    "anywidget": "plotly's FigureWidget, the dashboard's live figures",
}
# Imported by the package only inside a function, for a feature the lab does not need.
OPTIONAL_IMPORTS = {
    "ray": "sweep(executor='ray'): the ray extra",
    "mnist1d": "a dataset the dashboard offers only when it is installed",
}


def imported_names(tree, top_level_only=False):
    """The modules named by the absolute imports of ``tree`` (all, or its top-level statements only)."""
    nodes = tree.body if top_level_only else ast.walk(tree)
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
    return names


def module_path(module):
    path = ROOT / Path(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def package_imports(*modules):
    """Third-party top-level names imported by ``modules`` and every package module they import
    (at the top or inside a function); also the names imported at the top of a module."""
    seen, todo, external, top_level = set(), list(modules), set(), set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        tree = ast.parse(module_path(module).read_text())
        package = module if module_path(module).name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                if node.module:
                    todo.append(f"{base}.{node.module}")
                else:
                    todo += [f"{base}.{a.name}" for a in node.names]
        names = imported_names(tree)
        todo += [n for n in names if n.split(".")[0] == "mupso_lite"]
        external |= {n.split(".")[0] for n in names} - {"mupso_lite"}
        top_level |= {n.split(".")[0] for n in imported_names(tree, top_level_only=True)}
    stdlib = set(sys.stdlib_module_names)
    return external - stdlib, top_level - stdlib


def notebook_imports(path):
    nb = json.loads(path.read_text())
    names = set()
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            code = "\n".join(line for line in "".join(cell["source"]).splitlines()
                             if not line.lstrip().startswith(("%", "!")))
            names |= {n.split(".")[0] for n in imported_names(ast.parse(code))}
    return names - set(sys.stdlib_module_names)


def installed_closure(requirements):
    """Distribution names that installing ``requirements`` brings, read from the installed metadata."""
    todo, seen = list(requirements), set()
    while todo:
        req = Requirement(todo.pop())
        name = canonicalize_name(req.name)
        if name in seen or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        try:
            todo += importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            pass
    return seen


def distributions_of(import_names):
    dists = importlib.metadata.packages_distributions()
    return {name: {canonicalize_name(d) for d in dists.get(name, [name])} for name in import_names}


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_lab_extra_provides_what_the_notebook_imports(notebook):
    lab = pyproject()["project"]["dependencies"] + extras()["lab"]
    needed = notebook_imports(notebook) - {"mupso_lite"}
    if "mupso_lite" in notebook_imports(notebook):
        # the package, plus the layers it imports on first use: ml.Dashboard and ml.plots
        package, package_top_level = package_imports("mupso_lite", "mupso_lite.dashboard", "mupso_lite.plots")
        assert not package_top_level & set(OPTIONAL_IMPORTS), "an optional import moved to a module's top"
        needed |= package - set(OPTIONAL_IMPORTS)
    provided = installed_closure(lab)
    missing = {name: dists for name, dists in distributions_of(needed).items() if not dists & provided}
    assert not missing, f"`pip install -e .[lab]` does not bring {missing} ({notebook.name} imports them)"
    listed = set(requirement_map(lab))
    assert set(NEEDED_WITHOUT_IMPORT) <= listed, sorted(set(NEEDED_WITHOUT_IMPORT) - listed)


def test_dashboard_imports_are_all_seen():
    """The import scan above sees what the dashboard really needs (it is not vacuous)."""
    package, _ = package_imports("mupso_lite", "mupso_lite.dashboard")
    assert {"ipywidgets", "plotly", "IPython", "torch", "numpy", "sklearn"} <= package
    assert {"plotly"} <= notebook_imports(ROOT / PLAYGROUND)


# ---------------------------------------------------------------- README
def readme():
    return (ROOT / "README.md").read_text()


def readme_test_command():
    blocks = re.findall(r"```[^\n]*\n(.*?)```", readme(), flags=re.S)
    commands = [line.strip() for block in blocks for line in block.splitlines() if line.strip() == "make test"]
    assert commands, "README.md needs a code block with the line `make test`"
    return commands[0]


def test_ci_runs_the_readme_test_command():
    script = (ROOT / ".ci" / "run").read_text().splitlines()
    assert script[0] == "#!/usr/bin/env bash"
    commands = [line.strip() for line in script if line.strip() and not line.lstrip().startswith("#")]
    assert commands[0] == "set -euo pipefail"
    assert commands[-1] == readme_test_command()


def test_readme_and_docs_give_the_link_make_lab_prints():
    setup = readme().split("## One example")[0]
    assert re.search(r"```[^\n]*\nmake lab\n```", setup)
    for text in (setup, (ROOT / "docs" / "notebooks.md").read_text()):
        assert f"http://127.0.0.1:8888{LAB_URL}?token=" in text
        assert "Run → Run All Cells" in text
    assert '".[lab]"' in setup and '".[dev]"' in setup


def test_readme_is_a_front_page_whose_links_resolve():
    """README stays short (the manual is docs/guide.md and the book) and every local link exists."""
    text = readme()
    assert len(text.splitlines()) <= 200
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    assert "docs/guide.md" in links and "docs/teaching.md" in links
    assert not [link for link in links if not link.startswith("http") and not (ROOT / link).exists()]
    for command in ("make lab", "make test", "make student", "make book", "make check"):
        assert command in text


def test_guide_module_table_lists_every_module_once():
    guide = (ROOT / "docs" / "guide.md").read_text()
    table = guide.split("| module | the one idea it holds |")[1].split("\n\n")[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    listed = []
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        module = re.fullmatch(r"`([\w/]+\.py)`", cells[0])
        assert module, f"one module per line: {row}"
        assert cells[1], f"no description: {row}"
        listed.append(module.group(1))
    files = sorted(p.relative_to(ROOT / "mupso_lite").as_posix() for p in (ROOT / "mupso_lite").rglob("*.py"))
    assert len(listed) == len(set(listed)), "a module is listed twice"
    assert sorted(listed) == files
