"""Write docs/RESULTS-text.md: what LLM item embeddings, and continual pre-training in
them, buy a sequential recommender (``make study-text``).

    python -m cprec_core.evaluation.text_study --profile study-text \\
        --sparse-profile study-text-sparse --out docs/RESULTS-text.md

Read from the profiles' databases and files, never hand-edited: per setting (full data,
and the sparse-target setting where its profile is given) and target domain, each
next-item system's HR@1 on the fixed 20-candidate test sets and NDCG@10 over every item of
the domain, per user the mean over the system's seeds, with 95 % bootstrap intervals; the
paired tests the study is about (per user, A's seed mean minus B's: the bootstrap interval
of the mean difference and the Wilcoxon signed-rank p); the gap to the ID-only model in both
settings; HR@1 by the test item's popularity; the goals, read off those tables; and what each
part cost (CPT, embeddings, next-item training). The scaling curve's table is added where it
was run (cprec_core.training.cpt_scaling).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import shutil
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import numpy as np
from scipy.stats import wilcoxon

from cprec_core.cli import add_profile_arguments, profile_from_args
from cprec_core.config import ConfigError, Profile, load_profile
from cprec_core.evaluation.leaderboard import bootstrap_interval
from cprec_core.evaluation.results import _dirty, hardware
from cprec_core.provenance import git_revision
from cprec_core.recommend.full_ranking import ndcg_at_k
from cprec_core.reporting import md_table
from cprec_core.systems import system as registered
from cprec_core.training.next_item import trained_next_item_models

GOAL_P = 0.05
CLASSIC = ("sasrec", "gru4rec")
# (A, B): what each comparison says
TESTS = (("sasrec_text_cpt", "sasrec", "CPT text vs ID"),
         ("sasrec_text_cpt", "sasrec_text_base", "CPT vs base model's text"),
         ("sasrec_text_cpt", "sasrec_text_control", "CPT vs shuffled-behaviour control"),
         ("sasrec_text_base", "sasrec", "base text vs ID"),
         ("sasrec_text_base", "sasrec_text_base_shuffled", "titles vs shuffled vectors"),
         ("sasrec_text_cpt", "sasrec_text_base_shuffled", "CPT text vs shuffled vectors"),
         ("sasrec_text_cpt_target", "sasrec_text_cpt", "target train in CPT vs source-only"),
         ("sasrec_text_cpt_target", "sasrec", "CPT with target train, text vs ID"),
         ("gru4rec_text_cpt", "gru4rec", "CPT text vs ID (GRU4Rec)"),
         ("gru4rec_text_cpt", "gru4rec_text_base", "CPT vs base model's text (GRU4Rec)"),
         ("gru4rec_text_cpt", "gru4rec_text_control", "CPT vs control (GRU4Rec)"))


@dataclass(frozen=True)
class PerUser:
    """One system's per-user scores in a domain, each the mean over its seeds: HR@1 on the
    evaluation's cases and NDCG@10 on the full ranking's users (the same users where both
    score every test user), users in order."""

    users: np.ndarray
    hr1: np.ndarray  # 20 candidates
    ndcg_users: np.ndarray
    ndcg10: np.ndarray  # full ranking
    seeds: int


def per_user(con: duckdb.DuckDBPyConnection, domain: str, system: str) -> PerUser | None:
    hits = con.execute("""
        SELECT user_idx, avg(hit::INTEGER), count(*) FROM evaluation_cases
        WHERE domain = ? AND system = ? AND split = 'test' AND family = 'ranking'
        GROUP BY user_idx ORDER BY user_idx""", [domain, system]).fetchall()
    ranks = con.execute("""
        SELECT user_idx, list(rank ORDER BY seed) FROM full_ranking_cases
        WHERE domain = ? AND system = ? GROUP BY user_idx ORDER BY user_idx""",
                        [domain, system]).fetchall() if _has(con, "full_ranking_cases") else []
    if not hits or not ranks:
        return None
    return PerUser(np.asarray([h[0] for h in hits]), np.asarray([h[1] for h in hits], float),
                   np.asarray([r[0] for r in ranks]),
                   np.asarray([ndcg_at_k(np.asarray(r[1])).mean() for r in ranks]),
                   int(hits[0][2]))


def _has(con, table: str) -> bool:
    return bool(con.execute("SELECT count(*) FROM information_schema.tables"
                            " WHERE table_name = ?", [table]).fetchone()[0])


def paired(a: np.ndarray, b: np.ndarray, resamples: int) -> tuple[float, float, float, float]:
    """(mean difference, its 95 % bootstrap interval, Wilcoxon signed-rank p) of two
    systems' per-user scores on the same users."""
    if len(a) != len(b):
        raise ValueError(f"paired scores of {len(a)} and {len(b)} users")
    delta = a - b
    low, high = bootstrap_interval(delta, resamples)
    p = float(wilcoxon(delta).pvalue) if np.any(delta) else 1.0
    return float(delta.mean()), low, high, p


@dataclass
class Setting:
    label: str
    profile: Profile
    con: duckdb.DuckDBPyConnection
    domains: list[str]
    systems: list[str]  # next-item systems with results, registry order
    scores: dict[tuple[str, str], PerUser]


def load_setting(label: str, profile: Profile) -> Setting:
    con = duckdb.connect(str(profile.layout.database), read_only=True)
    domains = [r[0] for r in con.execute("SELECT domain FROM domains WHERE role = 'target'"
                                         " ORDER BY domain").fetchall()]
    names = [n for n in ("sasrec", "gru4rec", *profile.item_text.systems)]
    scores = {}
    for domain in domains:
        for name in names:
            found = per_user(con, domain, name)
            if found is not None:
                scores[(domain, name)] = found
    systems = [n for n in names if any((d, n) in scores for d in domains)]
    return Setting(label, profile, con, domains, systems, scores)


def leaderboard_table(s: Setting, resamples: int) -> str:
    rows = []
    for domain in s.domains:
        for name in s.systems:
            found = s.scores.get((domain, name))
            if found is None:
                continue
            h_low, h_high = bootstrap_interval(found.hr1, resamples)
            n_low, n_high = bootstrap_interval(found.ndcg10, resamples)
            entry = registered(name)
            source = entry.item_source or "none (IDs)"
            if entry.shuffled_vectors:
                source += ", shuffled among items"
            rows.append((domain, name, source, found.seeds,
                         len(found.users), f"{found.hr1.mean():.3f} [{h_low:.3f}, {h_high:.3f}]",
                         len(found.ndcg_users),
                         f"{found.ndcg10.mean():.4f} [{n_low:.4f}, {n_high:.4f}]"))
    return md_table(["domain", "system", "title embeddings", "seeds", "test users",
                     "HR@1, 20 candidates [95% CI]", "users", "NDCG@10, full ranking [95% CI]"],
                    rows)


def tests_table(s: Setting, resamples: int) -> tuple[str, dict]:
    """The paired tests as markdown, and {(domain, a, b, metric): (diff, p)}."""
    rows, found = [], {}
    for domain in s.domains:
        for a, b, what in TESTS:
            if (domain, a) not in s.scores or (domain, b) not in s.scores:
                continue
            sa, sb = s.scores[(domain, a)], s.scores[(domain, b)]
            cells = []
            for metric in ("hr1", "ndcg10"):
                diff, low, high, p = paired(getattr(sa, metric), getattr(sb, metric), resamples)
                found[(domain, a, b, metric)] = (diff, p)
                cells += [f"{diff:+.4f} [{low:+.4f}, {high:+.4f}]", f"{p:.3g}"]
            rows.append((domain, f"{a} vs {b}", what, len(sa.users), *cells))
    return md_table(["domain", "A vs B", "what it measures", "users", "HR@1 A - B [95% CI]",
                     "p", "NDCG@10 A - B [95% CI]", "p"], rows), found


def popularity_table(s: Setting) -> str:
    rows = s.con.execute("""
        SELECT domain, system, subset, max(cases), avg("hr@1") FROM evaluation_results
        WHERE split = 'test' AND family = 'ranking' AND subset IN ('head', 'torso', 'tail')
        AND list_contains(?, system) GROUP BY ALL""", [s.systems]).fetchall()
    cells = {(d, n, g): (c, hr) for d, n, g, c, hr in rows}
    out = []
    for domain in s.domains:
        cases = {g: max((c for (d, _, x), (c, _) in cells.items() if d == domain and x == g),
                        default=0) for g in ("head", "torso", "tail")}
        for name in s.systems:
            if any((domain, name, g) in cells for g in cases):
                out.append((domain, name, *[f"{cells[(domain, name, g)][1]:.3f}"
                                            if (domain, name, g) in cells else ""
                                            for g in cases]))
        out.append((domain, "(test cases)", *[cases[g] for g in ("head", "torso", "tail")]))
    return md_table(["domain", "system", "head", "torso", "tail"], out)


def cost_table(s: Setting) -> tuple[str, dict]:
    """Training time per next-item system (mean per model over domains and seeds), the
    embeddings per source, and the CPT runs."""
    seconds: dict[str, list[float]] = {}
    for slug in (r[0] for r in s.con.execute("SELECT slug FROM domains WHERE role = 'target'")
                 .fetchall()):
        for name, _, files in trained_next_item_models(s.profile, slug):
            m = json.loads(files.manifest.read_text())
            seconds.setdefault(name, []).append(m["seconds"])
    rows = [(name, len(v), f"{np.mean(v):.1f}", f"{np.mean(v) / np.mean(seconds['sasrec']):.2f}x"
             if "sasrec" in seconds and registered(name).next_item == "sasrec" else
             f"{np.mean(v) / np.mean(seconds['gru4rec']):.2f}x" if "gru4rec" in seconds else "")
            for name, v in seconds.items()]
    embedded = [json.loads(s.profile.layout.item_embeddings(src).manifest.read_text())
                for src in s.profile.item_text.sources()
                if s.profile.layout.item_embeddings(src).exists()]
    cpt = [r.read_manifest() for r in s.profile.layout.trained_cpt_adapters()]
    text = ["Next-item training per model (one domain, one seed; early stopping decides the"
            " epochs), and its ratio to the ID model of the same encoder:", "",
            md_table(["system", "models", "seconds (mean)", "vs ID"], rows), "",
            "Item embeddings (every item of every domain, one forward each):", "",
            md_table(["source", "items", "pooling", "seconds", "items/s", "model load s", "dtype",
                      "device"],
                     [(m["source"], m["items"], m["pooling"], m["seconds"], m["items_per_second"],
                       m["load_seconds"], m["dtype"], m["device"]) for m in embedded]), "",
            "CPT runs:", "",
            md_table(["variant", "tokens", "steps", "warmup/stable/anneal", "final loss",
                      "tokens/s", "minutes", "reused from"],
                     [(m.variant, m.tokens, m.steps,
                       "/".join(str(m.phase_steps[p]) for p in ("warmup", "stable", "anneal")),
                       m.final_loss, m.tokens_per_second, round(m.train_seconds / 60, 1),
                       m.reused_from or "") for m in cpt])]
    facts = {"embed_seconds": max((m["seconds"] for m in embedded), default=None),
             "ratio": {n: np.mean(v) / np.mean(seconds[registered(n).next_item])
                       for n, v in seconds.items() if registered(n).kind == "text"
                       and registered(n).next_item in seconds}}
    return "\n".join(text), facts


def _best_text(s: Setting, domain: str) -> str | None:
    """The text system with the best mean validation NDCG@10 over its seeds: the LLM
    system the goal compares is chosen on validation, never on test."""
    slug = s.con.execute("SELECT slug FROM domains WHERE domain = ?", [domain]).fetchone()[0]
    valid: dict[str, list[float]] = {}
    for name, _, files in trained_next_item_models(s.profile, slug):
        if registered(name).kind == "text" and not registered(name).shuffled_vectors:
            valid.setdefault(name, []).append(
                json.loads(files.manifest.read_text())["valid"]["ndcg@10"])
    return max(valid, key=lambda n: np.mean(valid[n])) if valid else None


def goals_section(full: Setting, sparse: Setting | None, tests: dict, sparse_tests: dict,
                  facts: dict, resamples: int) -> list[str]:
    rows = []

    def verdict(flags: list[bool | None]) -> str:
        return "not measured" if any(f is None for f in flags) else (
            "yes" if all(flags) else "no")

    for metric, label in (("hr1", "HR@1 (20 candidates)"), ("ndcg10", "full-ranking NDCG@10")):
        cells, flags = [], []
        for domain in full.domains:
            text = _best_text(full, domain)
            classic = max((c for c in CLASSIC if (domain, c) in full.scores), default=None,
                          key=lambda c: getattr(full.scores[(domain, c)], metric).mean())
            if text is None or classic is None:
                cells.append("not run")
                flags.append(None)
                continue
            diff, low, high, p = paired(getattr(full.scores[(domain, text)], metric),
                                        getattr(full.scores[(domain, classic)], metric),
                                        resamples)
            flags.append(diff > 0 and p < GOAL_P)
            cells.append(f"{text} vs {classic}: {diff:+.4f}, p {p:.3g}")
        rows.append((f"the text system chosen on validation above the best classic model on"
                     f" test, {label}, p < {GOAL_P}", *cells, verdict(flags)))
    def above(a: str, b: str, goal: str) -> None:
        """A row per metric: ``a`` above ``b`` on every domain, paired p < GOAL_P."""
        for metric, label in (("hr1", "HR@1"), ("ndcg10", "NDCG@10")):
            cells, flags = [], []
            for domain in full.domains:
                found = tests.get((domain, a, b, metric))
                flags.append(None if found is None else found[0] > 0 and found[1] < GOAL_P)
                cells.append("not run" if found is None else f"{found[0]:+.4f}, p {found[1]:.3g}")
            rows.append((f"{goal}, {label}, p < {GOAL_P}", *cells, verdict(flags)))

    for b in ("sasrec_text_base", "sasrec_text_control"):
        above("sasrec_text_cpt", b, f"`sasrec_text_cpt` above `{b}`")
    above("sasrec_text_base", "sasrec_text_base_shuffled",
          "(the check under the goals) the titles matter: `sasrec_text_base` above its vectors"
          " shuffled among items")
    if sparse is not None:
        for metric, label in (("hr1", "HR@1"), ("ndcg10", "NDCG@10")):
            cells, flags = [], []
            for domain in full.domains:
                a = tests.get((domain, "sasrec_text_cpt", "sasrec", metric))
                b = sparse_tests.get((domain, "sasrec_text_cpt", "sasrec", metric))
                if a is None or b is None:
                    cells.append("not run")
                    flags.append(None)
                    continue
                flags.append(b[0] > a[0])
                cells.append(f"sparse {b[0]:+.4f} vs full {a[0]:+.4f}")
            rows.append((f"gap `sasrec_text_cpt` - `sasrec` larger in the sparse setting, {label}",
                         *cells, verdict(flags)))
    seconds = facts.get("embed_seconds")
    rows.append(("embedding every item in under 60 s",
                 *[f"{seconds} s" if seconds is not None else "not run"] * len(full.domains),
                 verdict([None if seconds is None else seconds < 60])))
    ratios = facts.get("ratio", {})
    rows.append(("a text SASRec trains in at most 2x the ID SASRec's time",
                 *[", ".join(f"{n} {r:.2f}x" for n, r in ratios.items()
                             if n.startswith("sasrec"))] * len(full.domains),
                 verdict([r <= 2 for n, r in ratios.items() if n.startswith("sasrec")] or [None])))
    return ["## Goals", "",
            "Each goal per target domain, read off the tables below (full-data setting unless"
            " it says sparse); `met` is `yes` only where it holds on every domain.", "",
            md_table(["goal", *full.domains, "met"], rows, max_cell=200), ""]


def plot_copy(out: Path, profile: Profile) -> Path:
    """Where the report's copy of the scaling plot goes: beside the report."""
    return out.parent / f"results_{profile.name}_scaling.png"


def scaling_section(profile: Profile, resamples: int, copy: Path | None) -> list[str]:
    """The scaling curve's table (each point with intervals and its paired test against
    the base model's point) and its plot, copied to ``copy``, where ``cpt_scaling`` ran
    for the profile."""
    path = profile.layout.scaling_curve
    if not path.is_file():
        return ["## Scaling curve", "", "Not run for this profile (`make study-text-scaling`).",
                ""]
    curve = json.loads(path.read_text())
    trained = {t["label"]: t for t in curve.get("points_trained", [])}
    base = {r["domain"]: r for r in curve["points"] if r["label"] == "base"}
    rows = []
    for r in curve["points"]:
        hits, gains = np.asarray(r["hits"]), np.asarray(r["gains"])
        cells = []
        for values, key, digits in ((hits, "hits", 3), (gains, "gains", 4)):
            low, high = bootstrap_interval(values, resamples)
            cells.append(f"{values.mean():.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]")
            if r["label"] != "base" and r["domain"] in base:
                diff, _, _, p = paired(values, np.asarray(base[r["domain"]][key]), resamples)
                cells.append(f"{diff:+.{digits}f}, p {p:.2g}")
            else:
                cells.append("")
        t = trained.get(r["label"])
        speed = (round((t["stable_tokens"] + t["anneal_tokens"])
                       / max(t["stable_seconds"] + t["anneal_seconds"], 1e-9))
                 if t and "stable_tokens" in t else "")
        rows.append((r["label"], f"{r['tokens']:,}", r["domain"], r["seeds"], r["cases"],
                     *cells, r.get("train_minutes", ""), speed))
    plot = profile.layout.scaling_plot
    lines = ["## Scaling curve (CPT tokens -> text SASRec)", "", curve["description"], "",
             md_table(["point", "CPT tokens", "domain", "seeds", "test users",
                       "HR@1, 20 candidates [95% CI]", "vs base",
                       "NDCG@10, full ranking [95% CI]", "vs base",
                       "CPT minutes (stable since the previous point + its annealing)",
                       "tokens/s"], rows), "",
             "`vs base`: the point minus the base model's point, per user (mean over seeds),"
             " Wilcoxon signed-rank p.", ""]
    if plot.is_file() and copy is not None:
        shutil.copyfile(plot, copy)
        lines += [f"![scaling curve]({copy.name})", ""]
    return lines


def render(full: Setting, sparse: Setting | None, command: str, resamples: int,
           outputs: tuple[Path, ...]) -> str:
    full_tests_md, full_tests = tests_table(full, resamples)
    sparse_tests_md, sparse_tests = tests_table(sparse, resamples) if sparse else ("", {})
    costs, facts = cost_table(full)
    lines = [
        "# Results: LLM item embeddings in the sequential recommenders",
        "",
        "Written by `make study-text` (`python -m cprec_core.evaluation.text_study`) from the"
        " profiles' databases. Do not edit by hand: rerun the command.",
        "",
        f"- **Command:** `{command}`",
        f"- **Profiles:** `{full.profile.name}` (full data)"
        + (f", `{sparse.profile.name}` (sparse target: {sparse.profile.data.target_train_share:.0%}"
           " of each user's train history in the target domains)" if sparse else "")
        + f"; git revision `{git_revision()}`{_dirty(outputs)};"
        f" written {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- **Hardware:** {hardware()}",
        f"- **Model:** `{full.profile.model.name}`; item embeddings: {full.profile.item_text.pooling}"
        f" pooling of the last hidden layer over each title's tokens; adapter MLP"
        f" {full.profile.item_text.adapter_hidden} wide, added to the ID embeddings"
        f"{' (text only)' if full.profile.item_text.text_only else ''}",
        f"- **Evaluation:** every test user; HR@1 among the {full.profile.sft.negatives + 1}"
        " stored candidates and NDCG@10 over every item of the domain (history excluded); per"
        " user the mean over the system's seeds; intervals: 95 % bootstrap over users; paired"
        " tests: Wilcoxon signed-rank on the per-user differences.",
        "",
        *goals_section(full, sparse, full_tests, sparse_tests, facts, resamples),
    ]
    for setting, tests_md in ((full, full_tests_md), (sparse, sparse_tests_md)):
        if setting is None:
            continue
        lines += [f"## {setting.label}", "", leaderboard_table(setting, resamples), "",
                  "Paired tests:", "", tests_md, "",
                  "HR@1 by the test item's popularity (terciles of the domain's items by train"
                  " interactions), mean over seeds:", "", popularity_table(setting), ""]
    plot = plot_copy(outputs[0], full.profile) if outputs else None
    lines += [*scaling_section(full.profile, resamples, plot), "## Compute", "", costs, ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = add_profile_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--sparse-profile", help="the sparse-target setting's profile")
    parser.add_argument("--out", default="docs/RESULTS-text.md")
    args = parser.parse_args(argv)
    profile = profile_from_args(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        sparse_profile = (dataclasses.replace(load_profile(args.sparse_profile),
                                              data_dir=profile.data_dir)
                          if args.sparse_profile else None)
    except ConfigError as exc:
        print(f"error: --sparse-profile: {exc}", file=sys.stderr)
        return 2
    for p in (profile, *([sparse_profile] if sparse_profile else [])):
        if not p.layout.database.is_file():
            print(f"error: {p.layout.database} does not exist: run the study first",
                  file=sys.stderr)
            return 2
    full = load_setting("Full data", profile)
    sparse = (load_setting("Sparse target", sparse_profile) if sparse_profile else None)
    command = "python -m cprec_core.evaluation.text_study " + " ".join(
        map(shlex.quote, argv or sys.argv[1:]))
    out.write_text(render(full, sparse, command, profile.evaluation.bootstrap,
                          (out, plot_copy(out, profile))))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
