"""The README's example is code a newcomer will paste: it must run as printed."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README lost its Python example"
    script = tmp_path / "example.py"
    script.write_text(blocks[0])
    monkeypatch.chdir(tmp_path)
    names = runpy.run_path(str(script))
    assert len(names["cat"]) == 1
    assert names["ds"].sizes["time"] == 10
    assert len(names["hits"]) == 1
    names["cat"].close()
