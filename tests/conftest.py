"""Shared fixtures: a small multi-genre MovieLens data set written in RecBole's atomic format
(the same format as the embedded ML-100K), and a profile config file pointing at it."""

from __future__ import annotations

import dataclasses
import random
import sys
from pathlib import Path

import duckdb
import pytest
import yaml

from cprec_core.config import DataConfig, SourceConfig
from cprec_core.data.raw import load_records
from cprec_core.data.sources.base import Accepted, FileRead

# the benchmarks' own modules (workload.py, naive_scorer.py) import as the scripts import them
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

GENRES = {"Drama": 14, "Comedy": 12, "Crime": 8, "Horror": 8}
TITLES = ["Usual Suspects, The", "Rock, The", "Seven (Se7en)", "Birdcage, The", "Heat", "Fargo",
          "Casino", "Scream", "Alien", "Babe", "Clueless", "Kids", "Jumanji", "Sabrina",
          "Nixon", "Othello", "Persuasion", "Copycat", "Powder", "Balto"]


def write_movielens(folder: Path, n_users: int = 40, seed: int = 7, bad_rows: bool = True,
                    stem: str = "fixture") -> Path:
    """A deterministic small data set: 4 genres, users rating 4-9 movies in each genre.

    With ``bad_rows`` it adds what real logs have: an item with an unknown genre, a rating of
    a movie missing from the item file, an unparseable timestamp and a short line.
    """
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    items, item_id = [], 1
    for genre, count in GENRES.items():
        for k in range(count):
            title = f"{TITLES[(item_id * 7) % len(TITLES)]} {genre} {k}"
            items.append((str(item_id), title, str(1980 + item_id % 20), f"{genre} Thriller"))
            item_id += 1
    items.append((str(item_id), "Mystery Film", "1990", "unknown"))
    unknown_item = str(item_id)
    by_genre = {g: [i for i in items if i[3].startswith(g)] for g in GENRES}
    lines = []
    for user in range(1, n_users + 1):
        t = 880_000_000 + user * 1000
        picks = []
        for genre in GENRES:
            picks += rng.sample(by_genre[genre], rng.randint(4, 8))
        rng.shuffle(picks)
        for item in picks:
            t += rng.randint(1, 500)
            lines.append(f"{user}\t{item[0]}\t{rng.randint(1, 5)}\t{t}")
    if bad_rows:
        lines += [f"1\t{unknown_item}\t3\t881000000", "2\t9999\t4\t881000001",
                  "3\t1\t4\tnot-a-time", "4\t2\t5"]
    (folder / f"{stem}.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        + "".join("\t".join(i) + "\n" for i in items))
    (folder / f"{stem}.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        + "".join(line + "\n" for line in lines))
    return folder


FIXTURE_DATA = {
    "sources": [{"kind": "movielens", "path": "", "genre_rule": "first"}],
    "source_domains": ["Drama", "Comedy"],
    "target_domains": ["Crime", "Horror"],
    "user_core": 3,
    "item_core": 3,
    "min_target_items": 5,
    "min_target_users": 10,
}


@pytest.fixture(autouse=True)
def no_tracking(monkeypatch):
    """MLflow tracking off (``CPREC_TRACKING=off``, inherited by the trainers' processes) and
    no tracking server from the shell: a test that tracks asks for ``tracked``."""
    monkeypatch.setenv("CPREC_TRACKING", "off")
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "CPREC_TRACKING_TAGS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def tracked(monkeypatch):
    """Tracking on: runs go to the local store under the profile's data folder."""
    monkeypatch.delenv("CPREC_TRACKING")


@pytest.fixture
def movielens_dir(tmp_path: Path) -> Path:
    return write_movielens(tmp_path / "ml-fixture")


@pytest.fixture
def fixture_config(tmp_path: Path, movielens_dir: Path) -> Path:
    """A YAML profile the way a user writes one: the demo profile pointed at other data."""
    data = dict(FIXTURE_DATA)
    data["sources"] = [dict(FIXTURE_DATA["sources"][0], path=str(movielens_dir))]
    config = {"profile": "demo", "name": "fixture", "data": data,
              "corpus": {"max_items": 10}, "model": {"name": "tiny-random"},
              "cpt": {"block_size": 128, "blocks_per_step": 4, "micro_batch": 2,
                      "checkpoint_every": 3, "lr": 1e-3, "max_tokens": 0, "dtype": "fp32"},
              "sasrec": {"max_epochs": 3, "max_len": 10},
              "gru4rec": {"max_epochs": 3, "max_len": 10},
              # 8 items per target domain: 2 negatives instead of 19
              "sft": {"negatives": 2, "batch_size": 2, "micro_batch": 1, "max_samples": 8,
                      "checkpoint_every": 2, "dtype": "fp32", "validation_cases": 6,
                      "domains": [],  # both target domains (the demo trains Crime only)
                      "rank": {"max_samples": 6, "select_every": 2}},
              "evaluation": {"shuffled_ablation": True, "max_cases": 50,  # every test case
                             "zero_shot": True},
              "recommend": {"k": 3, "retrieve": 5, "rerank_users": 0}}
    path = tmp_path / "fixture.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def data_config(**overrides) -> DataConfig:
    base = dict(sources=(SourceConfig(kind="table", path="unused"),), source_domains=(),
                target_domains=("T",), user_core=1, item_core=1, min_target_items=1,
                min_target_users=0)
    base.update(overrides)
    return DataConfig(**base)


def load_rows(rows: list[tuple]) -> duckdb.DuckDBPyConnection:
    """An in-memory database whose raw_interactions hold ``rows`` =
    (user, item, domain, ts_seconds[, title]); line numbers follow list order."""
    con = duckdb.connect()
    records = []
    for line, row in enumerate(rows, start=1):
        user, item, domain, ts = row[:4]
        title = row[4] if len(row) > 4 else f"Title {item}"
        records.append(Accepted("log.csv", line, user, item, title, ts * 1000, domain, None))
    records.append(FileRead("log.csv", "interactions", "csv", len(rows), "0" * 64))
    load_records(con, records)
    return con


@pytest.fixture
def con(tmp_path, fixture_config):
    """(connection, profile) of the fixture's database: corpus built, the Crime domain's users
    split (``candidate_sets`` not yet built)."""
    from cprec_core.config import load_config_file
    from cprec_core.data.build import main as build_corpus
    from cprec_core.data.domain_users import build_domain_users

    assert build_corpus(["--config", str(fixture_config), "--data-dir", str(tmp_path / "data")]) == 0
    profile = dataclasses.replace(load_config_file(fixture_config), data_dir=str(tmp_path / "data"))
    con = duckdb.connect(str(profile.layout.database))
    build_domain_users(con, "crime")
    yield con, profile
    con.close()
