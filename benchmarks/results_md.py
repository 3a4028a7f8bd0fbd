"""Writing a benchmark's section into benchmarks/RESULTS.md: the one helper every bench_*.py uses."""

from __future__ import annotations

from pathlib import Path


def write_section(path: str | Path, text: str, begin: str, end: str, *, after_title: bool = False) -> None:
    """Replace the text from marker ``begin`` to marker ``end`` in ``path`` by ``text`` (which
    holds both markers), leaving the rest of the file alone; without the markers, append it, or
    with ``after_title`` put it right after the file's first line. A missing file is created."""
    path = Path(path)
    old = path.read_text() if path.is_file() else ("# Benchmarks\n" if after_title else "")
    if begin in old and end in old:
        new = old[:old.index(begin)] + text + old[old.index(end) + len(end):]
    elif after_title:
        title, _, rest = old.partition("\n")
        new = f"{title}\n\n{text}\n{rest}"
    else:
        new = old.rstrip("\n") + ("\n\n" if old else "") + text + "\n"
    path.write_text(new)
