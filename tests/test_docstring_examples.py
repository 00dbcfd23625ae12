"""Every example in the package's docstrings runs and prints what it says (doctest)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import puvae_defense

MODULES = sorted(info.name for info in pkgutil.walk_packages(puvae_defense.__path__, "puvae_defense."))


@pytest.mark.filterwarnings("ignore:the Hugging Face Hub could not be reached")
@pytest.mark.parametrize("name", ["puvae_defense", *MODULES])
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples in {name} failed (output above)"
