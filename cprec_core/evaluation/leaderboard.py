"""The leaderboard: every target domain side by side, from ``evaluation_cases`` (test split).

Per domain and system:

* ``HR@1`` of the ranking (classic and fused systems: their scores; residual systems:
  theirs, cprec_core.training.residual; other LLM systems:
  likelihood, summed or mean per token as chosen on validation, ``evaluation_choices``, else
  the mean), the mean over seeds, the spread over seeds (sd, for systems with several seeds)
  and a 95 % bootstrap interval (cases resampled with replacement, each case's hit averaged
  over the seeds first), plus NDCG@5.
* Generation (LLM systems; the paper's protocol): ValidRatio, HR@1 over valid answers and
  HR@1 over all cases, means over seeds.
* CPRec against the best system that is not a CPRec variant (relative improvement of HR@1;
  negative when CPRec loses).

Paired tests on the same test cases (cprec_core.systems.PAIRED_TESTS, the fused and the
residual systems against their classic partners, each system against its shuffled-embedding ablation): the
(case, seed) pairs of both systems, pooled over the seeds both have (a classic system's one
seed is paired with each seed of the other); exact McNemar test on the discordant pairs
(two-sided binomial), and a 95 % bootstrap interval of the HR@1 difference resampling cases.
For the headline ranking and, where both generate, for generation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
from scipy.stats import binomtest

from cprec_core.data.db import atomic
from cprec_core.systems import (PAIRED_TESTS, TEXT_SYSTEM_NAMES, is_cprec, is_shuffled,
                                unshuffled,
                                leaderboard_rank, system as registered)

RANKING_FAMILY = {"llm": "likelihood (mean)", "classic": "ranking"}
# the systems whose HR@1 is set against the best system built without CPT, in the markdown
VERDICTS = (("cprec", "CPRec"), ("cprec_rank", "cprec_rank"),
            ("cprec_residual", "cprec_residual"), ("fused", "fused"))
# and the next-item models reading LLM item embeddings, against the best classic system
TEXT_VERDICTS = TEXT_SYSTEM_NAMES
SUBSET_COLUMNS = ("sparse", "medium", "dense", "head", "torso", "tail")


def _is_classic(name: str) -> bool:
    try:
        return registered(name).kind == "classic"
    except KeyError:
        return False

SCHEMA = """
CREATE OR REPLACE TABLE leaderboard (
    domain VARCHAR, system VARCHAR, family VARCHAR, seeds INTEGER, cases INTEGER, "hr@1" DOUBLE,
    "hr@1 sd" DOUBLE, "hr@1 low" DOUBLE, "hr@1 high" DOUBLE, "ndcg@5" DOUBLE,
    valid_ratio DOUBLE, "gen hr@1 (valid)" DOUBLE, "gen hr@1" DOUBLE);
CREATE OR REPLACE TABLE leaderboard_tests (
    domain VARCHAR, family VARCHAR, system_a VARCHAR, system_b VARCHAR, pairs INTEGER,
    "a_hr@1" DOUBLE, "b_hr@1" DOUBLE, a_only INTEGER, b_only INTEGER, diff DOUBLE,
    diff_low DOUBLE, diff_high DOUBLE, p_value DOUBLE);
"""


def bootstrap_interval(per_case: np.ndarray, resamples: int, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of the mean of ``per_case`` (cases resampled)."""
    if len(per_case) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(per_case), size=(resamples, len(per_case)))
    means = per_case[picks].mean(1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


@dataclass(frozen=True)
class PairedTest:
    pairs: int
    a_rate: float
    b_rate: float
    a_only: int
    b_only: int
    diff: float
    low: float
    high: float
    p_value: float


def paired_test(a: np.ndarray, b: np.ndarray, resamples: int, seed: int = 0) -> PairedTest:
    """``a``, ``b``: (cases, seeds) hits of two systems on the same cases, seed k paired with
    seed k. McNemar's exact test over all pooled pairs; bootstrap over cases."""
    a_only = int(np.sum(a & ~b))
    b_only = int(np.sum(b & ~a))
    p = binomtest(a_only, a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
    low, high = bootstrap_interval((a.astype(float) - b).mean(1), resamples, seed)
    return PairedTest(a.size, float(a.mean()), float(b.mean()), a_only, b_only,
                      float(a.mean() - b.mean()), low, high, float(p))


def _hits(con, domain: str, system: str, family: str) -> tuple[np.ndarray, list[int]]:
    """(cases, seeds) boolean hits, cases ordered by user."""
    rows = con.execute("""
        SELECT seed, list(hit ORDER BY user_idx) FROM evaluation_cases
        WHERE domain = ? AND split = 'test' AND system = ? AND family = ?
        GROUP BY seed ORDER BY seed""", [domain, system, family]).fetchall()
    if not rows:
        return np.zeros((0, 0), bool), []
    return np.asarray([r[1] for r in rows], bool).T, [r[0] for r in rows]


def headline_families(con, domain: str) -> dict[str, str]:
    """Per system, the family its headline HR@1 comes from: ``ranking`` for the classic and
    fused systems, else the likelihood family chosen on validation for most of its seeds
    (``evaluation_choices``), else the mean."""
    found: dict[str, set[str]] = {}
    for system, family in con.execute("""SELECT DISTINCT system, family FROM evaluation_cases
                                         WHERE domain = ? AND split = 'test'""", [domain]).fetchall():
        found.setdefault(system, set()).add(family)
    chosen = {}
    if "evaluation_choices" in {r[0] for r in con.execute("SHOW TABLES").fetchall()}:
        chosen = dict(con.execute("""SELECT system, mode(value) FROM evaluation_choices
                                     WHERE domain = ? AND choice = 'scoring' GROUP BY system""",
                                  [domain]).fetchall())
    out = {}
    for system, families in found.items():
        family = "ranking" if "ranking" in families else chosen.get(system, RANKING_FAMILY["llm"])
        if family in families:
            out[system] = family
    return out


def paired_hits(a: tuple[np.ndarray, list[int]], b: tuple[np.ndarray, list[int]],
                b_single: bool) -> tuple[np.ndarray, np.ndarray]:
    """(cases, seeds) hits of two systems, seed k paired with seed k; with ``b_single`` (a
    system of one seed, e.g. a classic one) b's one column is paired with each of a's."""
    (ha, sa), (hb, sb) = a, b
    if b_single and len(sb) == 1:
        return ha, np.repeat(hb, len(sa), axis=1)
    common = [s for s in sa if s in sb]
    return ha[:, [sa.index(s) for s in common]], hb[:, [sb.index(s) for s in common]]


def test_pairs(con, domain: str, systems) -> list[tuple[str, str]]:
    """The paired tests of a domain, among the systems it has."""
    pairs = list(PAIRED_TESTS)
    if "evaluation_choices" in {r[0] for r in con.execute("SHOW TABLES").fetchall()}:
        # the fused and residual systems against the classic model each builds on
        pairs += [(a, b) for a, b in con.execute(
            """SELECT system, mode(value) FROM evaluation_choices WHERE domain = ?
               AND choice = 'classic' GROUP BY system ORDER BY system""", [domain]).fetchall()
            if not is_shuffled(a)]
    pairs += [(unshuffled(s), s) for s in sorted(systems, key=leaderboard_rank)
              if is_shuffled(s)]
    return [(a, b) for a, b in pairs if a in systems and b in systems]


def require_evaluation(con: duckdb.DuckDBPyConnection, database) -> None:
    """A clear error where the database holds no evaluation to rank yet."""
    if "evaluation_cases" not in {r[0] for r in con.execute("SHOW TABLES").fetchall()}:
        raise ValueError(f"{database} has no evaluation: materialise `evaluation`")


def domain_rows(con: duckdb.DuckDBPyConnection, domain: str, resamples: int = 1000
                ) -> tuple[list[tuple], list[tuple]]:
    """The leaderboard's rows of one domain (the columns of ``leaderboard`` in SCHEMA) and
    its paired tests' rows (``leaderboard_tests``), computed without writing anything."""
    rows, tests = [], []
    headline = headline_families(con, domain)
    for system, family in headline.items():
        hits, seeds = _hits(con, domain, system, family)
        per_seed = hits.mean(0)
        low, high = bootstrap_interval(hits.mean(1), resamples)
        ndcg = con.execute("""
            SELECT avg("ndcg@5") FROM evaluation_results WHERE domain = ? AND split = 'test'
            AND system = ? AND family = ? AND subset = 'all'""",
            [domain, system, family]).fetchall()[0][0]
        gen = con.execute("""
            SELECT avg(valid_ratio), avg("hr@1 (valid)"), avg("hr@1") FROM evaluation_results
            WHERE domain = ? AND split = 'test' AND system = ? AND family = 'generation'
            AND subset = 'all'""", [domain, system]).fetchall()[0]
        rows.append((domain, system, family, len(seeds), hits.shape[0],
                     float(per_seed.mean()),
                     float(per_seed.std(ddof=1)) if len(seeds) > 1 else None, low, high,
                     ndcg, *gen))
    for system_a, system_b in test_pairs(con, domain, headline):
        for family in ("ranking", "generation"):
            fam_a = headline[system_a] if family == "ranking" else family
            fam_b = headline[system_b] if family == "ranking" else family
            a_found, b_found = (_hits(con, domain, system_a, fam_a),
                                _hits(con, domain, system_b, fam_b))
            if not (a_found[0].size and b_found[0].size):
                continue
            a, b = paired_hits(a_found, b_found, b_single=fam_b == "ranking")
            if a.size and a.shape == b.shape:
                t = paired_test(a, b, resamples)
                tests.append((domain, family, system_a, system_b, t.pairs, t.a_rate, t.b_rate,
                              t.a_only, t.b_only, t.diff, t.low, t.high, t.p_value))
    return rows, tests


def build_leaderboard(con: duckdb.DuckDBPyConnection, resamples: int = 1000) -> dict:
    """Compute both tables from ``evaluation_cases`` / ``evaluation_results`` and replace
    them in one transaction (a failure leaves the previous leaderboard whole)."""
    domains = [r[0] for r in con.execute("""SELECT DISTINCT domain FROM evaluation_cases
                                            WHERE split = 'test' ORDER BY domain""").fetchall()]
    rows, tests = [], []
    for domain in domains:
        found, paired = domain_rows(con, domain, resamples)
        rows += found
        tests += paired
    with atomic(con):
        con.execute(SCHEMA)
        if rows:
            con.executemany(f"INSERT INTO leaderboard VALUES ({', '.join('?' * 13)})", rows)
        if tests:
            con.executemany(f"INSERT INTO leaderboard_tests VALUES ({', '.join('?' * 13)})",
                            tests)
    return {"domains": len(domains), "rows": len(rows), "tests": len(tests)}


# the leaderboard's columns an MLflow run records per system, and of each paired test
TRACKED = {"cases": 4, "hr@1": 5, "hr@1 sd": 6, "hr@1 low": 7, "hr@1 high": 8, "ndcg@5": 9,
           "valid_ratio": 10, "gen hr@1": 12}
TRACKED_TESTS = {"pairs": 4, "diff": 9, "diff_low": 10, "diff_high": 11, "p_value": 12}


def tracked_metrics(rows: list[tuple], tests: list[tuple], with_domain: bool = False
                    ) -> dict[str, float]:
    """Leaderboard and test rows as MLflow metrics: ``<system>/hr@1``, its interval
    (``hr@1 low``/``high``), NDCG@5, ValidRatio, ...; ``<a> vs <b>/<family>/diff`` and
    its p-value; each prefixed by ``<domain>/`` when ``with_domain`` (names are made
    MLflow-safe by cprec_core.tracking)."""
    from cprec_core.tracking import metric_name

    out = {}
    for row in rows:
        prefix = f"{row[0]}/{row[1]}" if with_domain else row[1]
        out.update({metric_name(f"{prefix}/{k}"): float(row[i]) for k, i in TRACKED.items()
                    if row[i] is not None and np.isfinite(row[i])})
    for row in tests:
        prefix = f"{row[2]} vs {row[3]}/{row[1]}"
        prefix = f"{row[0]}/{prefix}" if with_domain else prefix
        out.update({metric_name(f"{prefix}/{k}"): float(row[i]) for k, i in TRACKED_TESTS.items()
                    if row[i] is not None and np.isfinite(row[i])})
    return out


def leaderboard_rows(con: duckdb.DuckDBPyConnection) -> tuple[list[tuple], list[tuple]]:
    """The rows of ``leaderboard`` and ``leaderboard_tests`` as built."""
    return (con.execute("SELECT * FROM leaderboard").fetchall(),
            con.execute("SELECT * FROM leaderboard_tests").fetchall())


def log_leaderboard(rows: list[tuple], tests: list[tuple], profile, name: str, artifacts,
                    kind: str, tags: dict | None = None, log=print) -> dict | None:
    """The leaderboard tables (``leaderboard_rows``) as one MLflow run of kind ``kind``
    (``leaderboard``, or ``results`` for ``make results``), every domain's systems and tests
    as metrics and ``artifacts`` (the markdown, the chart) beside them; its ids and link, or
    None where tracking is off or failed (cprec_core.tracking.log_run). Call it with the
    database closed: a slow server must not hold the lock."""
    from cprec_core import tracking

    return tracking.log_run(
        profile, name=name, tags={**tracking.run_tags(kind, profile=profile.name), **(tags or {})},
        metrics=tracked_metrics(rows, tests, with_domain=True),
        params=tracking.flatten({"evaluation": dataclasses.asdict(profile.evaluation)}),
        artifacts=artifacts, log=log)


def _fmt(x, digits: int = 3) -> str:
    return "" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def leaderboard_markdown(con: duckdb.DuckDBPyConnection) -> str:
    """The leaderboard as markdown: one table per domain, the CPRec verdicts, the tests."""
    out = []
    domains = [r[0] for r in con.execute("SELECT DISTINCT domain FROM leaderboard ORDER BY 1").fetchall()]
    for domain in domains:
        rows = con.execute("""SELECT system, family, seeds, cases, "hr@1", "hr@1 sd", "hr@1 low",
                              "hr@1 high", "ndcg@5", valid_ratio, "gen hr@1 (valid)", "gen hr@1"
                              FROM leaderboard WHERE domain = ?""", [domain]).fetchall()
        rows.sort(key=lambda r: leaderboard_rank(r[0]))
        rows = [(r[0], *r[2:], r[1]) for r in rows]  # the family last
        best = max((r for r in rows if not is_cprec(r[0]) and not is_shuffled(r[0])),
                   key=lambda r: r[3], default=None)
        out.append(f"### {domain} (test cases: {rows[0][2]})\n")
        out.append("| system | ranked by | seeds | HR@1 ranking | 95 % CI | NDCG@5 | ValidRatio |"
                   " HR@1 gen (valid) | HR@1 gen (all) |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        for s, seeds, _, hr, sd, lo, hi, ndcg, vr, hv, ha, family in rows:
            mark = " **best baseline**" if best and s == best[0] else ""
            hr_text = _fmt(hr) + (f" ± {_fmt(sd)}" if sd is not None else "")
            by = family.removeprefix("likelihood (").removesuffix(")")
            out.append(f"| {s}{mark} | {by} | {seeds} | {hr_text} | {_fmt(lo)}-{_fmt(hi)} |"
                       f" {_fmt(ndcg)} | {_fmt(vr, 2)} | {_fmt(hv)} | {_fmt(ha)} |")
        classic = max((r for r in rows if _is_classic(r[0])), key=lambda r: r[3], default=None)
        for name, label, against, what in (
                *((n, label, best, "the best baseline") for n, label in VERDICTS),
                *((n, n, classic, "the best classic system") for n in TEXT_VERDICTS)):
            found = next((r for r in rows if r[0] == name), None)
            if found and against:
                rel = (found[3] - against[3]) / against[3] if against[3] else float("nan")
                verdict = "beats" if found[5] > against[6] else "loses to" \
                    if found[6] < against[5] else "is not distinguishable from"
                out.append(f"\n{label} HR@1 {_fmt(found[3])} vs {what} ({against[0]})"
                           f" {_fmt(against[3])}: {rel:+.1%} relative; {label} {verdict} it"
                           " (95 % intervals).")
        out.append("")
        subsets = subset_table(con, domain)
        if subsets:
            out.append(subsets)
            out.append("")
    tests = con.execute("""SELECT domain, family, system_a, system_b, pairs, "a_hr@1", "b_hr@1",
                           a_only, b_only, diff, diff_low, diff_high, p_value
                           FROM leaderboard_tests ORDER BY domain, rowid""").fetchall()
    if tests:
        out.append("### Paired tests (same test cases, seeds pooled)\n")
        out.append("| domain | A vs B | family | pairs | A HR@1 | B HR@1 | only A hits |"
                   " only B hits | A - B (95 % CI) | McNemar p |")
        out.append("|---|---|---|---|---|---|---|---|---|---|")
        for d, fam, sa, sb, n, a, b, ao, bo, diff, lo, hi, p in tests:
            out.append(f"| {d} | {sa} vs {sb} | {fam} | {n} | {_fmt(a)} | {_fmt(b)} | {ao} | {bo} |"
                       f" {diff:+.3f} ({lo:+.3f} to {hi:+.3f}) | {p:.3g} |")
    return "\n".join(out)


def subset_table(con: duckdb.DuckDBPyConnection, domain: str) -> str:
    """HR@1 of each leaderboard system (its headline family, the mean over seeds) in each
    user-activity tercile and each popularity group of the test item (terciles of the
    domain's items by train interactions), with the cases of each group: where LLM item
    knowledge should matter most is the tail."""
    rows = con.execute(f"""
        SELECT l.system, r.subset, max(r.cases), avg(r."hr@1")
        FROM leaderboard l JOIN evaluation_results r ON r.domain = l.domain
            AND r.system = l.system AND r.family = l.family AND r.split = 'test'
        WHERE l.domain = ? AND r.subset IN ({", ".join("?" * len(SUBSET_COLUMNS))})
        GROUP BY ALL""", [domain, *SUBSET_COLUMNS]).fetchall()
    if not rows:
        return ""
    cells = {(system, subset): (n, hr) for system, subset, n, hr in rows}
    systems = sorted({r[0] for r in rows}, key=leaderboard_rank)
    cases = {subset: max((n for (_, g), (n, _) in cells.items() if g == subset), default=0)
             for subset in SUBSET_COLUMNS}
    lines = [f"HR@1 by user activity and by the test item's popularity ({domain}; cases in"
             " brackets)\n",
             "| system | " + " | ".join(f"{g} ({cases[g]})" for g in SUBSET_COLUMNS) + " |",
             "|---|" + "---|" * len(SUBSET_COLUMNS)]
    for system in systems:
        lines.append(f"| {system} | " + " | ".join(
            _fmt(cells[(system, g)][1]) if (system, g) in cells else "" for g in SUBSET_COLUMNS)
            + " |")
    return "\n".join(lines)


def leaderboard_chart(con: duckdb.DuckDBPyConnection, png_path: Path) -> Path:
    """HR@1 per system and domain with the 95 % intervals, as a grouped bar chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = con.execute("""SELECT domain, system, "hr@1", "hr@1 low", "hr@1 high" FROM leaderboard
                          ORDER BY domain""").fetchall()
    domains = sorted({r[0] for r in rows})
    systems = sorted({r[1] for r in rows}, key=leaderboard_rank)
    width = 0.8 / max(1, len(systems))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 + 0.35 * len(systems) * len(domains)), 4))
    cmap = plt.get_cmap("tab20")
    for k, system in enumerate(systems):
        xs, ys, err = [], [], [[], []]
        for i, domain in enumerate(domains):
            found = [r for r in rows if r[0] == domain and r[1] == system]
            if found:
                _, _, hr, lo, hi = found[0]
                xs.append(i + (k - (len(systems) - 1) / 2) * width)
                ys.append(hr)
                err[0].append(max(0.0, hr - lo))
                err[1].append(max(0.0, hi - hr))
        ax.bar(xs, ys, width, yerr=err, capsize=2, label=system, color=cmap(k % 20),
               edgecolor="black" if is_cprec(system) else None)
    ax.set_xticks(range(len(domains)), domains)
    ax.set_ylabel("HR@1 (test, 20 candidates)")
    ax.set_title("Leaderboard: HR@1 with 95 % bootstrap intervals")
    ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path


def main(argv: list[str] | None = None) -> int:
    """``python -m cprec_core.evaluation.leaderboard --profile study``: the leaderboard
    asset's tables and chart rebuilt from the evaluation rows, without Dagster."""
    import argparse

    from cprec_core.cli import add_profile_arguments, profile_from_args, run_tool
    from cprec_core.data.db import connect

    parser = add_profile_arguments(argparse.ArgumentParser(description="rebuild the leaderboard"))
    profile = profile_from_args(parser.parse_args(argv))

    def work() -> None:
        with connect(profile.layout.database) as con:
            require_evaluation(con, profile.layout.database)
            counts = build_leaderboard(con, profile.evaluation.bootstrap)
            png = leaderboard_chart(con, profile.layout.leaderboard_chart)
            print(leaderboard_markdown(con))
        print(f"leaderboard: {counts}; chart {png}")

    return run_tool(work, profile.layout.database)


if __name__ == "__main__":
    raise SystemExit(main())
