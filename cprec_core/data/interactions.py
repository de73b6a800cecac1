"""Stage 2: clean, filter, index and split the raw interactions (DuckDB SQL).

Order of operations, each recorded:
  1. titles normalised (cprec_core.data.titles);
  2. duplicates (same user, item and domain) dropped, the earliest kept;
  3. per-domain k-core: users with fewer than ``user_core`` and items with fewer than
     ``item_core`` interactions *in that domain* are dropped, repeated until stable;
  4. users and items re-indexed (``user_idx`` global, ``item_idx`` per (domain, item_id));
  5. leave-one-out per (user, domain): last = test, second last = valid, rest = train
     (a user with fewer than 3 interactions in a domain keeps all of them in train);
  6. the sparse-target setting (``data.target_train_share`` below 1): of each user's train
     history in a target domain only the most recent share is kept.
Every dropped row goes to ``filtered_interactions`` with its reason, so
``raw_interactions = interactions + filtered_interactions`` row for row.

Domain roles: the profile names its source and target domains. A domain that only files
from the landing folder bring (cprec_core.data.landing), and that the profile does not name, is a
*new target*: it never enters the CPT corpus, and it becomes a target (a ``domain``
partition) once it has ``min_target_items`` items and ``min_target_users`` test users after
filtering; until then its role is ``unused`` and the report says which limit it misses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa

from cprec_core.config import DataConfig
from cprec_core.data.db import atomic
from cprec_core.data.landing import landed_only_domains
from cprec_core.data.raw import raw_data_version
from cprec_core.data.titles import normalise_title
from cprec_core.reporting import query_table

SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class DataError(ValueError):
    """The data cannot support the configured experiment (e.g. a target domain too small)."""


def domain_slug(domain: str) -> str:
    """A partition key for a domain name: ``Children's`` -> ``childrens``, ``Sci-Fi`` ->
    ``sci-fi``, ``Café`` -> ``cafe``. A name with no Latin letter or digit left (another
    script, only punctuation) gets ``d-`` and 8 hex digits of its SHA-256, so every name has a
    key and the same name always the same one."""
    ascii_name = unicodedata.normalize("NFKD", domain).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower().replace("'", "")).strip("-")[:64]
    if not SLUG.match(slug):
        slug = "d-" + hashlib.sha256(domain.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return slug


def domain_names(counts: dict[str, int], configured: tuple[str, ...]) -> dict[str, str]:
    """Each raw domain name -> the domain it is loaded as. Names with the same partition key
    (``drama`` next to ``Drama``, ``Sci Fi`` next to ``Sci-Fi``) are one domain spelt two
    ways, so their rows are merged under one name: the configured name if the profile names
    one of them, else the spelling with the most rows (``counts``), ties broken by sort
    order."""
    groups: dict[str, list[str]] = {}
    for name in sorted(counts):
        groups.setdefault(domain_slug(name), []).append(name)
    mapping = {}
    for group in groups.values():
        named = [n for n in group if n in configured]
        canonical = named[0] if named else min(group, key=lambda n: (-counts[n], n))
        mapping.update({n: canonical for n in group})
    return mapping


@dataclass(frozen=True)
class InteractionsReport:
    raw_rows: int
    kept_rows: int
    filtered: dict[str, int]
    users: int
    items: int
    kcore_rounds: int
    landed_domains: dict[str, str] = field(default_factory=dict)  # new domain -> its role and why
    merged_domains: dict[str, str] = field(default_factory=dict)  # raw spelling -> domain

    @property
    def reconciled(self) -> bool:
        return self.raw_rows == self.kept_rows + sum(self.filtered.values())


def _titles(con: duckdb.DuckDBPyConnection, max_chars: int) -> None:
    raw = [r[0] for r in con.execute("SELECT DISTINCT title FROM raw_interactions").fetchall()]
    table = pa.table({"raw": raw, "clean": [normalise_title(t, max_chars) for t in raw]})
    con.register("_titles_arrow", table)
    con.execute("CREATE OR REPLACE TEMP TABLE _titles AS SELECT * FROM _titles_arrow")
    con.unregister("_titles_arrow")


def _kcore(con: duckdb.DuckDBPyConnection, user_core: int, item_core: int) -> int:
    """Drop below-threshold users/items per domain until nothing changes; returns rounds."""
    rounds = 0
    while True:
        rounds += 1
        changed = 0
        for key, k in (("user_id", user_core), ("item_id", item_core)):
            what = "user" if key == "user_id" else "item"
            reason = f"k-core: {what} has fewer than {k} interactions in its domain"
            (n,) = con.execute(
                f"""
                UPDATE _work w SET drop_reason = ?
                FROM (SELECT domain, {key} FROM _work WHERE drop_reason IS NULL
                      GROUP BY ALL HAVING count(*) < ?) s
                WHERE w.drop_reason IS NULL AND w.domain = s.domain AND w.{key} = s.{key}
                """,
                [reason, k],
            ).fetchall()[0]
            changed += n
        if changed == 0 or rounds > 100:
            return rounds


def _domain_map(con: duckdb.DuckDBPyConnection, cfg: DataConfig) -> dict[str, str]:
    """The ``_domain_names`` table (raw name -> domain, see ``domain_names``); returns the
    names that were merged into another spelling."""
    counts = dict(con.execute("SELECT domain, count(*) FROM raw_interactions GROUP BY ALL").fetchall())
    mapping = domain_names(counts, (*cfg.source_domains, *cfg.target_domains))
    con.execute("CREATE OR REPLACE TEMP TABLE _domain_names (raw VARCHAR, domain VARCHAR)")
    con.executemany("INSERT INTO _domain_names VALUES (?, ?)", sorted(mapping.items()))
    return {raw: name for raw, name in mapping.items() if raw != name}


def _roles(con: duckdb.DuckDBPyConnection, cfg: DataConfig, names: dict[str, str]) -> set[str]:
    """The ``_roles`` table; returns the new domains of landed files (tentative targets)."""
    present = set(names.values())
    missing = [d for d in (*cfg.source_domains, *cfg.target_domains) if d not in present]
    if missing:
        raise DataError(f"configured domain(s) {missing} not in the data; present: {sorted(present)}")
    landed_raw = landed_only_domains(con)
    landed = ({names[d] for d in landed_raw} - {names[d] for d in set(names) - landed_raw}
              - set(cfg.source_domains) - set(cfg.target_domains))
    sources = set(cfg.source_domains) or (present - set(cfg.target_domains) - landed)
    rows = []
    for d in sorted(present):
        role = ("target" if d in cfg.target_domains or d in landed
                else "source" if d in sources else "unused")
        rows.append((d, domain_slug(d), role))
    con.execute("CREATE OR REPLACE TEMP TABLE _roles (domain VARCHAR, slug VARCHAR, role VARCHAR)")
    con.executemany("INSERT INTO _roles VALUES (?, ?, ?)", rows)
    return landed


def _settle_landed(con: duckdb.DuckDBPyConnection, cfg: DataConfig, landed: set[str]) -> dict[str, str]:
    """New landed domains too small to be targets become ``unused`` (for now)."""
    out = {}
    for domain, items, test in con.execute(
            "SELECT domain, items, test FROM domains WHERE role = 'target' ORDER BY domain").fetchall():
        if domain not in landed:
            continue
        short = [f"{items} items < min_target_items={cfg.min_target_items}"] * (
            items < cfg.min_target_items)
        short += [f"{test} test users < min_target_users={cfg.min_target_users}"] * (
            test < cfg.min_target_users)
        if short:
            con.execute("UPDATE domains SET role = 'unused' WHERE domain = ?", [domain])
            con.execute("UPDATE interactions SET role = 'unused' WHERE domain = ?", [domain])
            out[domain] = "unused until it qualifies: " + "; ".join(short)
        else:
            out[domain] = "target (new domain from landed files)"
    return out


def build_interactions(con: duckdb.DuckDBPyConnection, cfg: DataConfig) -> InteractionsReport:
    """Clean, filter, index and split ``raw_interactions`` into ``users``, ``items``,
    ``interactions``, ``filtered_interactions`` and ``domains``, all in one transaction with
    the checks (targets large enough, no leak across the leave-one-out split): a failed
    check, an error or a killed process leaves the previous tables whole, never one table
    new beside another old (cprec_core.data.db.atomic)."""
    with atomic(con):
        report = _build_interactions(con, cfg)
        found = leaks(con)
        if found:
            raise DataError(f"leave-one-out split check failed for (user, domain) {found[:5]}:"
                            " their validation and test items are not their last two by time")
    return report


def _build_interactions(con: duckdb.DuckDBPyConnection, cfg: DataConfig) -> InteractionsReport:
    (raw_rows,) = con.execute("SELECT count(*) FROM raw_interactions").fetchall()[0]
    if raw_rows == 0:
        raise DataError("raw_interactions is empty: every input row was rejected or no file was read"
                        " (see rejected_rows and source_files)")
    names = {r[0]: r[0] for r in con.execute("SELECT DISTINCT domain FROM raw_interactions").fetchall()}
    merged = _domain_map(con, cfg)
    names.update(merged)
    landed = _roles(con, cfg, names)
    _titles(con, cfg.max_title_chars)
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _work AS
        SELECT r.source_file, r.line, r.user_id, r.item_id, t.clean AS title, r.ts, n.domain,
               r.rating,
               CASE WHEN row_number() OVER (PARTITION BY n.domain, r.user_id, r.item_id
                                            ORDER BY r.ts, r.source_file, r.line) > 1
                    THEN 'duplicate: same user, item and domain seen earlier' END AS drop_reason
        FROM raw_interactions r JOIN _titles t ON t.raw = r.title
        JOIN _domain_names n ON n.raw = r.domain
        """
    )
    rounds = _kcore(con, cfg.user_core, cfg.item_core)
    con.execute(
        """
        CREATE OR REPLACE TABLE filtered_interactions AS
        SELECT source_file, line, user_id, item_id, domain, ts, drop_reason AS reason
        FROM _work WHERE drop_reason IS NOT NULL ORDER BY source_file, line;

        CREATE OR REPLACE TABLE users AS
        SELECT (row_number() OVER (ORDER BY user_id) - 1)::INTEGER AS user_idx, user_id
        FROM (SELECT DISTINCT user_id FROM _work WHERE drop_reason IS NULL);

        CREATE OR REPLACE TABLE items AS
        SELECT (row_number() OVER (ORDER BY domain, item_id) - 1)::INTEGER AS item_idx,
               domain, item_id, arg_max(title, ts) AS title, count(*) AS interactions
        FROM _work WHERE drop_reason IS NULL GROUP BY domain, item_id;

        CREATE OR REPLACE TABLE interactions AS
        WITH ordered AS (
            SELECT u.user_idx, i.item_idx, w.user_id, w.item_id, i.title, w.domain, w.ts,
                   w.rating, w.source_file, w.line,
                   row_number() OVER (PARTITION BY w.user_id, w.domain
                                      ORDER BY w.ts, w.source_file, w.line)::INTEGER AS pos,
                   count(*) OVER (PARTITION BY w.user_id, w.domain)::INTEGER AS n_in_domain
            FROM _work w
            JOIN users u USING (user_id)
            JOIN items i USING (domain, item_id)
            WHERE w.drop_reason IS NULL)
        SELECT o.*, r.role,
               CASE WHEN n_in_domain >= 3 AND pos = n_in_domain THEN 'test'
                    WHEN n_in_domain >= 3 AND pos = n_in_domain - 1 THEN 'valid'
                    ELSE 'train' END AS split
        FROM ordered o JOIN _roles r USING (domain)
        ORDER BY user_idx, domain, pos;
        """
    )
    if cfg.target_train_share < 1:
        _thin_target_train(con, cfg.target_train_share)
    con.execute(
        """
        CREATE OR REPLACE TABLE domains AS
        SELECT r.domain, r.slug, r.role,
               count(DISTINCT i.user_idx) AS users, count(DISTINCT i.item_idx) AS items,
               count(i.item_idx) AS interactions,
               count(*) FILTER (WHERE split = 'train') AS train,
               count(*) FILTER (WHERE split = 'valid') AS valid,
               count(*) FILTER (WHERE split = 'test') AS test
        FROM _roles r LEFT JOIN interactions i USING (domain)
        GROUP BY ALL ORDER BY interactions DESC, domain;
        """
    )
    landed_roles = _settle_landed(con, cfg, landed)
    _check_targets(con, cfg)
    filtered = dict(con.execute(
        "SELECT reason, count(*) FROM filtered_interactions GROUP BY ALL ORDER BY 2 DESC"
    ).fetchall())
    (kept,) = con.execute("SELECT count(*) FROM interactions").fetchall()[0]
    (users,) = con.execute("SELECT count(*) FROM users").fetchall()[0]
    (items,) = con.execute("SELECT count(*) FROM items").fetchall()[0]
    return InteractionsReport(raw_rows, kept, filtered, users, items, rounds, landed_roles,
                              merged)


SPARSE_REASON = "target train share"


def _thin_target_train(con: duckdb.DuckDBPyConnection, share: float) -> None:
    """The sparse-target setting: of each user's train history in a target domain only the
    most recent ``ceil(share * n)`` interactions stay (at least one); validation and test
    items, the source domains and the item and user indices are unchanged. The others go to
    ``filtered_interactions`` with their reason, so raw = kept + filtered still holds."""
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _thinned AS
        SELECT source_file, line FROM (
            SELECT source_file, line,
                   row_number() OVER (PARTITION BY user_idx, domain ORDER BY pos DESC) AS back,
                   count(*) OVER (PARTITION BY user_idx, domain) AS n_train
            FROM interactions WHERE role = 'target' AND split = 'train')
        WHERE back > greatest(1, ceil(? * n_train))""", [share])
    con.execute("""
        INSERT INTO filtered_interactions
        SELECT source_file, line, user_id, item_id, domain, ts, ?
        FROM interactions JOIN _thinned USING (source_file, line)""", [SPARSE_REASON])
    con.execute("""
        DELETE FROM interactions
        WHERE (source_file, line) IN (SELECT (source_file, line) FROM _thinned)""")


def _check_targets(con: duckdb.DuckDBPyConnection, cfg: DataConfig) -> None:
    rows = con.execute(
        "SELECT domain, role, users, items, test FROM domains WHERE role IN ('source', 'target')"
    ).fetchall()
    # A data set of target domains only (a public benchmark, genre_rule whole) has no source
    # domain at all: CPT can read only the targets' train split (variant wsa_target)
    sources = [r for r in rows if r[1] == "source"]
    if sources and not any(r[3] > 0 for r in sources):
        raise DataError("no source domain has interactions left after filtering: nothing to pre-train on")
    for domain, role, _users, items, test in rows:
        if role != "target":
            continue
        if items < cfg.min_target_items:
            raise DataError(
                f"target domain {domain!r} has {items} items after filtering; candidate sets need"
                f" at least min_target_items={cfg.min_target_items}. Lower user_core/item_core,"
                " choose another target, or change the genre rule"
            )
        if test < cfg.min_target_users:
            raise DataError(
                f"target domain {domain!r} has {test} users with a test item after filtering;"
                f" min_target_users={cfg.min_target_users}"
            )


def leaks(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    """(user, domain) groups whose valid/test rows are not their last two by time."""
    return con.execute(
        """
        SELECT user_idx, domain FROM interactions GROUP BY ALL
        HAVING max(n_in_domain) >= 3 AND (
            count(*) FILTER (WHERE split = 'test') != 1
            OR count(*) FILTER (WHERE split = 'valid') != 1
            OR max(ts) FILTER (WHERE split = 'train') > min(ts) FILTER (WHERE split = 'valid')
            OR max(ts) FILTER (WHERE split = 'valid') > min(ts) FILTER (WHERE split = 'test'))
        LIMIT 20
        """
    ).fetchall()


def interactions_version(con: duckdb.DuckDBPyConnection, cfg: DataConfig) -> str:
    """A function of the raw files and the data settings: what the split was built from."""
    return hashlib.sha256(json.dumps([raw_data_version(con), dataclasses.asdict(cfg)],
                                     default=str).encode()).hexdigest()[:16]


def target_slugs(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Partition keys of the target domains."""
    return [r[0] for r in con.execute(
        "SELECT slug FROM domains WHERE role = 'target' ORDER BY slug").fetchall()]


def interactions_previews(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    return {"domains": query_table(con, "SELECT * FROM domains ORDER BY role, interactions DESC"),
            "preview": query_table(con, "SELECT * FROM interactions LIMIT 10")}


def row_balance(con: duckdb.DuckDBPyConnection) -> tuple[int, int, int]:
    """(raw rows, kept interactions, filtered rows): the first is the sum of the others."""
    return con.execute(
        "SELECT (SELECT count(*) FROM raw_interactions), (SELECT count(*) FROM interactions),"
        " (SELECT count(*) FROM filtered_interactions)").fetchall()[0]
