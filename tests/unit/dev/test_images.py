"""The local image builder's tags are hashes of the build inputs: a changed Dockerfile, copied
file, build arg, parent image or wheelhouse gives a new tag; anything the build does not copy
(another folder, a file .dockerignore leaves out) does not. No building here."""

from __future__ import annotations

from pathlib import Path

import pytest

from alpaca_dev.images import (
    REPO,
    TARGETS,
    Wheelhouse,
    context_files,
    copied_sources,
    ignore_rules,
    input_hash,
    is_ignored,
    torch_containerfile,
)

DOCKERFILE = """\
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE} AS build
COPY pyproject.toml ./
# a comment between instructions
COPY --chown=1000:1000 app ./app
COPY ["data/one.txt", "data/two.txt", "/opt/data/"]
RUN pip install --no-cache-dir \\
    .
FROM ${BASE_IMAGE}
COPY --from=build /opt/venv /opt/venv
"""


@pytest.fixture
def context(tmp_path: Path) -> Path:
    (tmp_path / "app" / "pkg").mkdir(parents=True)
    (tmp_path / "app" / "pkg" / "__init__.py").write_text("VERSION = 1\n")
    (tmp_path / "app" / "pkg" / "__pycache__").mkdir()
    (tmp_path / "app" / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "one.txt").write_text("one\n")
    (tmp_path / "data" / "two.txt").write_text("two\n")
    (tmp_path / "data" / "three.txt").write_text("not copied\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.md").write_text("not copied\n")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (tmp_path / "Dockerfile").write_text(DOCKERFILE)
    (tmp_path / ".dockerignore").write_text("# caches\n**/__pycache__\n")
    return tmp_path


def tag(
    context: Path,
    build_args: dict[str, str] | None = None,
    parent: str = "sha256:aa",
    wheels: str = "w1",
) -> str:
    args = build_args if build_args is not None else {"BASE_IMAGE": "localhost/base:1"}
    return input_hash(context, context / "Dockerfile", args, parent, wheels)


def test_copied_sources_from_the_build_context_only():
    assert copied_sources(DOCKERFILE) == [
        "pyproject.toml",
        "app",
        "data/one.txt",
        "data/two.txt",
    ]


def test_context_files_walk_folders_and_leave_out_ignored_ones(context):
    assert context_files(context, copied_sources(DOCKERFILE)) == [
        "app/pkg/__init__.py",
        "data/one.txt",
        "data/two.txt",
        "pyproject.toml",
    ]


def test_same_inputs_same_tag(context):
    assert tag(context) == tag(context)


def test_a_changed_dockerfile_changes_the_tag(context):
    before = tag(context)
    (context / "Dockerfile").write_text(DOCKERFILE.replace("--no-cache-dir", "--no-compile"))
    assert tag(context) != before


@pytest.mark.parametrize("path", ["app/pkg/__init__.py", "data/two.txt", "pyproject.toml"])
def test_a_changed_copied_file_changes_the_tag(context, path):
    before = tag(context)
    (context / path).write_text("changed\n")
    assert tag(context) != before


def test_a_new_file_in_a_copied_folder_changes_the_tag(context):
    before = tag(context)
    (context / "app" / "pkg" / "new.py").write_text("")
    assert tag(context) != before


def test_a_copied_file_turning_executable_changes_the_tag(context):
    before = tag(context)
    (context / "data" / "one.txt").chmod(0o755)
    assert tag(context) != before


@pytest.mark.parametrize(
    "path",
    ["docs/notes.md", "data/three.txt", "README.md", "app/pkg/__pycache__/mod.cpython-311.pyc"],
)
def test_a_file_the_build_does_not_copy_leaves_the_tag(context, path):
    before = tag(context)
    (context / path).write_text("changed\n")
    assert tag(context) == before


@pytest.mark.parametrize(
    "override",
    [
        {"build_args": {"BASE_IMAGE": "localhost/base:2"}},
        {"build_args": {"BASE_IMAGE": "localhost/base:1", "ACCELERATOR": "cpu"}},
        {"parent": "sha256:bb"},
        {"wheels": "w2"},
    ],
)
def test_build_args_parent_and_wheelhouse_change_the_tag(context, override):
    assert tag(context, **override) != tag(context)


@pytest.mark.parametrize(
    ("path", "ignored"),
    [
        ("operator/alpaca_operator/__pycache__", True),
        ("operator/alpaca_operator/__pycache__/cli.cpython-311.pyc", True),
        ("operator/alpaca_operator/cli.py", False),
        ("alpaca_operator.egg-info/PKG-INFO", True),
        ("operator/Dockerfile", True),
        ("weights/alpaca_weights/contract.py", False),
        ("serving/requirements-cpu.txt", False),
    ],
)
def test_the_repository_dockerignore(path, ignored):
    assert is_ignored(path, ignore_rules(REPO)) is ignored


def test_a_negated_pattern_brings_a_file_back(tmp_path):
    (tmp_path / ".dockerignore").write_text("*.md\n!KEEP.md\n")
    rules = ignore_rules(tmp_path)
    assert is_ignored("NOTES.md", rules)
    assert not is_ignored("KEEP.md", rules)


def test_every_dockerfile_copies_only_what_exists():
    for target in TARGETS.values():
        text = (REPO / target.dockerfile).read_text()
        files = context_files(REPO, copied_sources(text))
        assert "pyproject.toml" in files
        assert not [f for f in files if "__pycache__" in f or f.endswith("Dockerfile")]


def test_wheelhouse_key_follows_the_pins():
    one = Wheelhouse({"torch": "2.13.0", "ray": "2.60.0"})
    same = Wheelhouse({"ray": "2.60.0", "torch": "2.13.0"})
    other = Wheelhouse({"torch": "2.13.1", "ray": "2.60.0"})
    assert one.key == same.key != other.key
    assert one.version("Torch") == "2.13.0"


def test_torch_layer_installs_the_pinned_torch():
    assert "torch==2.13.0" in torch_containerfile("localhost/alpaca-base:x", "2.13.0")
