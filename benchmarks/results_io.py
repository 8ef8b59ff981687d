"""Writing a benchmark's result (its table as Markdown and its data as JSON side by side, the table printed), and the
`--no-start-after` check of the long benchmarks."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from epg.atomic import atomic_write_text


def write_results(stem: Path, text: str, data: Any) -> None:
    """`stem`.md ← the table, `stem`.json ← the data (indented), then print the table."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stem.with_suffix(".md"), text if text.endswith("\n") else text + "\n")
    write_json(stem.with_suffix(".json"), data)
    print(text)


def write_json(path: Path, data: Any) -> None:
    """`path` ← `data` as indented JSON, through the project's atomic writer (never a half-written file)."""
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def past_deadline(no_start_after: str, who: str) -> bool:
    """Whether it is past `--no-start-after HH:MM` (UTC; "" = never), said in one line when it is."""
    now = dt.datetime.now(dt.timezone.utc).strftime("%H:%M")
    if no_start_after and now >= no_start_after:
        print(f"{who}: {now} UTC is past --no-start-after {no_start_after}: no new training")
        return True
    return False
