"""Fixtures for the notebook runner's tests: notebooks built with nbformat in tmp dirs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nbformat
import pytest
from nbformat import v4

# A cell is "# markdown" text (starts with "md:") or Python source.
CellSpec = str
NotebookFactory = Callable[[Path, list[CellSpec]], Path]


def write_notebook(path: Path, cells: list[CellSpec]) -> Path:
    """Write a notebook whose cells are markdown when prefixed with ``md:``, else code."""
    nb = v4.new_notebook(
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}},
        cells=[
            v4.new_markdown_cell(spec[3:]) if spec.startswith("md:") else v4.new_code_cell(spec)
            for spec in cells
        ],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


@pytest.fixture
def notebook() -> NotebookFactory:
    return write_notebook
