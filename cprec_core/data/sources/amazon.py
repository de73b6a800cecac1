"""Amazon Reviews 2018 and 2023: one JSON object per line, one file pair per category.

2018 (McAuley lab): ``<Category>.json[.gz]`` (reviewerID, asin, overall, unixReviewTime,
reviewTime) + ``meta_<Category>.json[.gz]`` (asin, title, ...). The 5-core files
``<Category>_5.json.gz`` work too.
2023 (McAuley lab): ``<Category>.jsonl[.gz]`` (user_id, parent_asin, asin, rating, timestamp
in ms) + ``meta_<Category>.jsonl[.gz]`` (parent_asin, title, main_category). Items are
``parent_asin`` (variants of one product are one item), as the 2023 benchmark scripts do.

The domain of every row is the category named by its file pair.

``SourceConfig.timestamp_unit`` applies to ``unixReviewTime`` (2018) and ``timestamp`` (2023):
``auto`` (the default) reads numbers above 1e11 as milliseconds and others as seconds, which
reads both published layouts right (2018 in seconds, 2023 in ms) and a 2023-style export in
seconds too; ``s`` or ``ms`` force the unit. ``reviewTime`` ("09 13, 2009") has no unit.
Ids are text or integers and titles text (rules in cprec_core.data.sources.base); a meta row
whose title is unusable rejects every review of that item with the meta row's reason.
"""

from __future__ import annotations

import html
from datetime import datetime, timezone
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from cprec_core.config import SourceConfig
from cprec_core.data.sources.base import (
    DEFAULT_LIMITS,
    Accepted,
    FileRead,
    FileTimes,
    ReadLimits,
    Record,
    Rejected,
    RowProblem,
    SourceError,
    category_from_filename,
    check_chars,
    check_ms_range,
    json_rows,
    parse_rating,
    raw_text,
    read_limits,
    read_sha256,
    require_text,
    show,
    title_text,
)


@dataclass(frozen=True)
class Layout:
    version: str
    extensions: tuple[str, ...]
    item_key: str
    user_key: str
    rating_key: str
    time_keys: tuple[str, ...]


AMAZON_2018 = Layout("amazon2018", (".json", ".json.gz"), "asin", "reviewerID", "overall",
                     ("unixReviewTime", "reviewTime"))
AMAZON_2023 = Layout("amazon2023", (".jsonl", ".jsonl.gz"), "parent_asin", "user_id", "rating",
                     ("timestamp",))


def find_pairs(folder: Path, layout: Layout, categories: tuple[str, ...]) -> list[tuple[str, Path, Path]]:
    """(category, reviews file, meta file) for each complete pair in ``folder``."""
    if not folder.is_dir():
        raise SourceError(
            f"{folder}: folder not found; expected {layout.version} files "
            f"<Category>{layout.extensions[0]}[.gz] and meta_<Category>{layout.extensions[0]}[.gz]"
        )
    pairs: dict[str, tuple[str, Path, Path]] = {}
    for reviews in sorted(folder.iterdir()):
        if reviews.name.startswith("meta_") or not reviews.name.endswith(layout.extensions):
            continue
        category = category_from_filename(reviews)
        if categories and category not in categories and reviews.name.split(".")[0] not in categories:
            continue
        stem = reviews.name.removesuffix(".gz").removesuffix(layout.extensions[0])
        stem = stem.removesuffix("_5")
        metas = [folder / f"meta_{stem}{layout.extensions[0]}{gz}" for gz in ("", ".gz")]
        meta = next((m for m in metas if m.is_file()), None)
        if meta is None:
            raise SourceError(f"{reviews}: no metadata file next to it; expected {metas[0].name}"
                              f" or {metas[1].name} ({layout.version} format)")
        if category in pairs:
            raise SourceError(
                f"{reviews}: category {category!r} already comes from {pairs[category][1].name};"
                " keep one review file per category (full or 5-core, plain or .gz) in the folder"
            )
        pairs[category] = (category, reviews, meta)
    if not pairs:
        raise SourceError(
            f"{folder}: no {layout.version} review files found; expected <Category>"
            f"{layout.extensions[0]}[.gz] with meta_<Category>{layout.extensions[0]}[.gz]"
            + (f" for categories {list(categories)}" if categories else "")
        )
    return list(pairs.values())


def clean_title(value: str) -> str:
    return " ".join(html.unescape(value).split())


def _read_meta(path: Path, layout: Layout, limits: ReadLimits = DEFAULT_LIMITS
               ) -> tuple[dict, list[Record]]:
    """item -> (title or None, meta line, why there is no title). Defective meta rows are
    returned as records."""
    items: dict[str, tuple[str | None, int, str]] = {}
    records: list[Record] = []
    rows = 0
    for number, raw, obj in json_rows(path, limits):
        rows += 1
        try:
            if isinstance(obj, RowProblem):
                raise obj
            key = layout.item_key if layout.item_key in obj else "asin"
            item_id = require_text(obj, key, f"{layout.item_key}")
            if item_id in items:
                raise RowProblem(key, f"duplicate item {show(item_id)}, first at line {items[item_id][1]}")
            try:
                title = _title(obj.get("title"))
            except RowProblem as p:  # the item is known, without a title
                items[item_id] = (None, number, p.reason)
                raise
            items[item_id] = (title, number, "")
        except RowProblem as p:
            records.append(Rejected(str(path), number, p.field, p.reason, raw_text(raw)))
    records.append(FileRead(str(path), "items", layout.version, rows, read_sha256(path)))
    return items, records


def _title(value: object) -> str:
    """A meta title: text, HTML entities decoded, whitespace collapsed."""
    title = clean_title(title_text(value))
    if not title:  # e.g. only "&nbsp;"
        raise RowProblem("title", "item without title")
    return check_chars(title, "title")  # entities may decode to control characters


def _timestamp(obj: dict, layout: Layout, times: FileTimes, line: int) -> int:
    for key in layout.time_keys:
        value = obj.get(key)
        if value is None or value == "":
            continue
        if key == "reviewTime":  # "09 13, 2009"
            try:
                if not isinstance(value, str):
                    raise ValueError
                dt = datetime.strptime(value, "%m %d, %Y").replace(tzinfo=timezone.utc)
            except ValueError:
                raise RowProblem(key, f"unparseable time {show(value)}") from None
            return check_ms_range(dt.timestamp() * 1000, value, key)
        return times.parse(value, line, key)
    raise RowProblem(layout.time_keys[0], "missing timestamp")


def read_pair(category: str, reviews_path: Path, meta_path: Path, layout: Layout,
              unit: str = "auto", limits: ReadLimits = DEFAULT_LIMITS) -> Iterator[Record]:
    """One category: its meta file (item titles), then its review file. ``unit``: the
    ``timestamp_unit`` of the numeric time key (see the module docstring)."""
    items, meta_records = _read_meta(meta_path, layout, limits)
    yield from meta_records
    source = str(reviews_path)
    times = FileTimes(unit)
    rows = 0
    for number, raw, obj in json_rows(reviews_path, limits):
        rows += 1
        try:
            if isinstance(obj, RowProblem):
                raise obj
            user_id = require_text(obj, layout.user_key)
            key = layout.item_key if obj.get(layout.item_key) else "asin"
            item_id = require_text(obj, key, layout.item_key)
            ts_ms = _timestamp(obj, layout, times, number)
            rating = parse_rating(obj.get(layout.rating_key))
            if item_id not in items:
                raise RowProblem(key, f"item {show(item_id)} not in {meta_path.name}")
            title, meta_line, why = items[item_id]
            if title is None:
                raise RowProblem("title", f"{why} ({meta_path.name} line {meta_line})")
            domain = check_chars(category, "domain")
            yield Accepted(source, number, user_id, item_id, title, ts_ms, domain, rating)
        except RowProblem as p:
            yield Rejected(source, number, p.field, p.reason, raw_text(raw))
    yield FileRead(source, "interactions", layout.version, rows, read_sha256(reviews_path))


def read_amazon(path: str | Path, cfg: SourceConfig, layout: Layout) -> Iterator[Record]:
    for category, reviews_path, meta_path in find_pairs(Path(path), layout, cfg.categories):
        yield from read_pair(category, reviews_path, meta_path, layout, cfg.timestamp_unit,
                             read_limits(cfg))


def read_amazon2018(path: str | Path, cfg: SourceConfig) -> Iterator[Record]:
    return read_amazon(path, cfg, AMAZON_2018)


def read_amazon2023(path: str | Path, cfg: SourceConfig) -> Iterator[Record]:
    return read_amazon(path, cfg, AMAZON_2023)
