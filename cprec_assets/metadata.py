"""Turning the core's reports into Dagster metadata."""

import base64
from pathlib import Path

import dagster as dg

from cprec_core.reporting import md_table


def markdown(tables: dict[str, str]) -> dict[str, dg.MetadataValue]:
    """Each markdown text as a metadata entry the UI renders."""
    return {name: dg.MetadataValue.md(text) for name, text in tables.items()}


def table(columns: list[str], rows: list, max_cell: int = 80) -> dg.MetadataValue:
    """Rows as a markdown table; one "(none)" row where there are none."""
    filler = [("(none)", *[""] * (len(columns) - 1))]
    return dg.MetadataValue.md(md_table(columns, rows or filler, max_cell))


def png(path: Path, alt: str = "training curves") -> dg.MetadataValue:
    """A PNG inlined into markdown, so the UI shows it without a file server."""
    data = base64.b64encode(path.read_bytes()).decode()
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{data})")
