"""Every Python block of the README runs as written (imports included)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_the_readme_is_a_short_page_with_code() -> None:
    assert len(README.read_text().splitlines()) <= 170 and len(BLOCKS) >= 4


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index: int, tmp_path, monkeypatch, mnist_root, capsys) -> None:
    monkeypatch.chdir(tmp_path)  # blocks that write files write them here
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="the Hugging Face Hub could not be reached")
        exec(compile(BLOCKS[index], f"README.md block {index + 1}", "exec"), {"__name__": "__readme__"})
    assert capsys.readouterr().out.strip() or index == len(BLOCKS) - 1  # the blocks print what they show
