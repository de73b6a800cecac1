"""The data stage without Dagster: raw logs -> interactions -> sequences -> CPT corpus.

    python -m cprec_core.data.build --profile demo [--config my.yaml] [--data-dir data]

Same functions as the Dagster assets, in the same order, printing the summary at the end.
"""

from __future__ import annotations

import argparse
import sys
import time

from cprec_core.cli import add_profile_arguments, profile_from_args
from cprec_core.config import ConfigError
from cprec_core.data.corpus import build_corpus_snapshot, corpus_leaks
from cprec_core.data.db import DatabaseBusy, connect
from cprec_core.data.interactions import DataError, build_interactions, leaks
from cprec_core.data.raw import load_raw_interactions
from cprec_core.data.sequences import build_domain_sequences, build_mixed_sequences
from cprec_core.data.sources import SourceError
from cprec_core.models.tokenizer import ModelLoadError
from cprec_core.reporting import corpus_summary


def main(argv: list[str] | None = None) -> int:
    parser = add_profile_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    args = parser.parse_args(argv)
    try:
        profile = profile_from_args(args)
        layout = profile.layout
        with connect(layout.database) as con:  # waits while another process writes it
            started = time.perf_counter()
            raw = load_raw_interactions(con, profile.data.sources, layout.cache_dir, log=print)
            print(f"raw: {raw.total('rows_loaded'):,} loaded, {raw.total('rows_rejected'):,} rejected")
            report = build_interactions(con, profile.data)
            print(f"interactions: {report.kept_rows:,} kept, {sum(report.filtered.values()):,} filtered")
            if leaks(con):
                raise DataError("leave-one-out split check failed")
            build_domain_sequences(con, profile.corpus)
            build_mixed_sequences(con, profile.corpus)
            build_corpus_snapshot(con, profile)
            found = corpus_leaks(con)
            if any(found.values()):
                raise DataError(f"leakage into the CPT corpus: {found}")
            print(f"done in {time.perf_counter() - started:.1f} s -> {layout.database}\n")
            print(corpus_summary(con))
    except (ConfigError, SourceError, DataError, ModelLoadError, DatabaseBusy) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
