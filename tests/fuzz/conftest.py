"""Hypothesis keeps its caches (constants found in the source, Unicode tables) in the session's
temporary folder, not in a .hypothesis folder of the checkout: the fuzz tests keep no example
database either (derandomized, a fixed budget)."""

from __future__ import annotations

import pytest
from hypothesis.configuration import set_hypothesis_home_dir


@pytest.fixture(scope="session", autouse=True)
def _hypothesis_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    set_hypothesis_home_dir(tmp_path_factory.mktemp("hypothesis"))
