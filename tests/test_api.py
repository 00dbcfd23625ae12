from __future__ import annotations

import importlib
import subprocess
from pathlib import Path
import sys

import puvae_defense


def test_all_names_exist() -> None:
    for name in puvae_defense.__all__:
        assert hasattr(puvae_defense, name), name
    changelog = (Path(__file__).parent.parent / "CHANGELOG.md").read_text()
    assert f"## [{puvae_defense.__version__}] - " in changelog  # every version has its release notes


def test_import_does_not_import_triton_or_the_hub_client() -> None:
    code = "import sys, puvae_defense; print('triton' in sys.modules, 'huggingface_hub' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_py_typed_marker_is_shipped() -> None:
    spec = importlib.util.find_spec("puvae_defense")
    assert spec is not None and spec.origin is not None
    from pathlib import Path

    assert (Path(spec.origin).parent / "py.typed").is_file()
