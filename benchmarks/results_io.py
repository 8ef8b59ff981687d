"""Writing a benchmark's result: its table as Markdown and its data as JSON side by side, and the table printed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_results(stem: Path, text: str, data: Any) -> None:
    """`stem`.md ← the table, `stem`.json ← the data (indented), then print the table."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".md").write_text(text if text.endswith("\n") else text + "\n")
    stem.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    print(text)
