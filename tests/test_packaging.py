"""The install files agree: pyproject.toml, environment.yml, Makefile, README and .ci/run."""
import re
import sys
from pathlib import Path

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


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


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
    # torch comes from the CPU index, and first
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines
    assert next(line for line in lines if not line.startswith("-")) == f"torch=={TORCH_PIN}"
    assert "python=3.11" in conda_env()["dependencies"]


def test_pyproject_layout():
    data = pyproject()
    project = data["project"]
    assert project["requires-python"] == ">=3.10"
    assert project["scripts"]["mupso-lite"] == "mupso_lite.cli:main"
    assert {"notebooks", "ray", "dev"} <= set(project["optional-dependencies"])
    pytest_cfg = data["tool"]["pytest"]["ini_options"]
    assert pytest_cfg["testpaths"] == ["tests"] and pytest_cfg["timeout"] == 900
    assert any(m.startswith("slow:") for m in pytest_cfg["markers"])
    dev = requirement_map(project["optional-dependencies"]["dev"])
    for extra in ("notebooks", "ray"):  # dev installs everything the other extras do
        assert requirement_map(project["optional-dependencies"][extra]).items() <= dev.items()


def test_makefile_installs_pinned_torch_before_the_package():
    makefile = (ROOT / "Makefile").read_text()
    assert all(re.search(rf"^{target}:", makefile, flags=re.M) for target in ("venv", "lab", "test"))
    torch_at = makefile.index(f"pip install torch=={TORCH_PIN}")
    assert torch_at < makefile.index('pip install -e ".[dev]"')
    assert "--ip=127.0.0.1" in makefile and "0.0.0.0" not in makefile


def readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```[^\n]*\n(.*?)```", readme, flags=re.S)
    commands = [line.strip() for block in blocks for line in block.splitlines() if line.strip() == "make test"]
    assert commands, "README.md needs a code block with the line `make test`"
    return commands[0]


def test_ci_runs_the_readme_test_command():
    script = (ROOT / ".ci" / "run").read_text().splitlines()
    assert script[0] == "#!/usr/bin/env bash"
    commands = [line.strip() for line in script if line.strip() and not line.lstrip().startswith("#")]
    assert commands[0] == "set -euo pipefail"
    assert commands[-1] == readme_test_command()
