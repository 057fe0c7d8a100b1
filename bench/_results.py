"""Shared by the bench scripts: replace one marked section of bench/RESULTS.md."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def replace_section(path: Path, key: str, body: str) -> None:
    """Replace the text between ``<!-- key:start -->`` and ``<!-- key:end -->`` (append if absent)."""
    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    text = path.read_text() if path.exists() else "# Benchmark results\n\nEvery table here was printed by a script under bench/ (or `python -m export.bench`), as measured.\n"
    block = f"{start}\n{body}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
