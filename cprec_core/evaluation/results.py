"""Write docs/RESULTS.md from a profile's leaderboard (``make results``). Never hand-edit the
output: it states the data, model, profile, sizes, hardware and the command that made it.

    python -m cprec_core.evaluation.results --profile study --out docs/RESULTS.md

Every report table lives here: ``render`` (the results file) and ``summary`` (what `make
demo` prints when done) are built from the same table functions.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

import duckdb

from cprec_core.cli import add_profile_arguments, profile_from_args, run_tool
from cprec_core.config import DPOConfig, Profile
from cprec_core.data.db import connect
from cprec_core.evaluation.evaluate import COST_HEADER, scoring_costs
from cprec_core.layout import RunManifest
from cprec_core.evaluation.leaderboard import (build_leaderboard, leaderboard_chart,
                                               leaderboard_markdown, leaderboard_rows,
                                               log_leaderboard, require_evaluation)
from cprec_core.provenance import git_revision, processor
from cprec_core.recommend.batch import recommendation_sample
from cprec_core.recommend.full_ranking import full_ranking_markdown
from cprec_core.reporting import corpus_summary, md_table
from cprec_core.systems import SHUFFLES, lora_init
from cprec_core.training.next_item import trained_next_item_models
from cprec_core.training.residual import PARTNERS


def _dirty(outputs: tuple[Path, ...] = ()) -> str:
    """The suffix " (plus uncommitted changes)" when tracked files other than this command's own
    outputs (the markdown file and the chart it rewrites) differ from the commit the code
    names: ``CPREC_GIT_REVISION`` where set (a copied checkout whose .git may be older than
    its files, as on a lent GPU machine), else HEAD."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    revision = os.environ.get("CPREC_GIT_REVISION") or "HEAD"
    exclude = [f":(exclude){p.resolve()}" for p in outputs if p.resolve().is_relative_to(root)]
    try:
        diff = subprocess.run(["git", "diff", "--name-only", revision, "--", ".", *exclude],
                              capture_output=True, text=True, timeout=10, cwd=root)
    except (OSError, subprocess.SubprocessError):
        return ""
    if diff.returncode != 0:  # no git, or a revision this .git does not hold
        return " (tree not checked against git)" if revision != "HEAD" else ""
    return " (plus uncommitted changes)" if diff.stdout.strip() else ""


def hardware() -> str:
    import torch

    gpu = processor("cuda:0") if torch.cuda.is_available() else "none"
    return f"{os.cpu_count()} CPU cores ({processor()}), GPU: {gpu}, torch {torch.__version__}"


def compute_summary(con: duckdb.DuckDBPyConnection, cpt: list[RunManifest],
                    sft: list[RunManifest]) -> str:
    """What the study cost, part by part: training time from the CPT and SFT manifests, LLM
    scoring time from ``evaluation_costs``, per domain whose LLM systems were scored. Not
    counted: data, SASRec/GRU4Rec, classic scoring and run start-ups (minutes in all)."""
    costs = scoring_costs(con)
    train = {"CPT": sum(m.train_seconds for m in cpt) / 60,
             "SFT": sum(m.train_seconds for m in sft) / 60}
    evaluated = [d for (d,) in con.execute("SELECT DISTINCT domain FROM evaluation_results"
                                           " WHERE split = 'test' AND family != 'ranking'"
                                           " ORDER BY domain").fetchall()]
    scoring: dict[str, float] = {}  # minutes per domain with a recorded cost
    for cost in costs:
        scoring[cost.domain] = scoring.get(cost.domain, 0.0) + cost.minutes
    parts = [f"{name} {minutes:.0f} min" for name, minutes in train.items()]
    parts += [f"LLM scoring {domain} " + (f"{scoring[domain]:.0f} min" if domain in scoring
                                          else "not recorded") for domain in evaluated]
    total = sum(train.values()) + sum(scoring.values())
    missing = len(scoring) < len(evaluated)
    lines = [f"Recorded: {', '.join(parts)}; {total / 60:.2f} hours"
             f" {'without the scoring not recorded' if missing else 'in all'}."]
    if costs:
        lines += ["", "LLM scoring per system (s/case: scoring alone, mean over seeds; minutes:"
                  " loading and scoring, all seeds; answers decoded: greedy answers that left"
                  " the candidate titles and were decoded step by step, the rest were read off"
                  " the likelihood forward)", "", md_table(COST_HEADER, costs)]
    if missing:
        lines += ["", "Not recorded: LLM scoring evaluated before scoring times were stored"
                  " (rerun the domain's `evaluation` asset to record them)."]
    return "\n".join(lines)


def trained_manifests(profile: Profile) -> tuple[list[RunManifest], list[RunManifest]]:
    """The manifests of every finished CPT run, and of every SFT and DPO run."""
    cpt = [r.read_manifest() for r in profile.layout.trained_cpt_adapters()]
    sft = [r.read_manifest() for r in profile.layout.trained_sft_runs()]
    return cpt, sft


def cpt_table(cpt: list[RunManifest]) -> str:
    """The CPT runs: model, size, schedule, final loss, speed, dtype and time."""
    if not cpt:
        return "(no CPT)"
    return md_table(["CPT variant", "model", "tokens", "steps", "warmup/stable/anneal",
                     "final loss", "tokens/s", "dtype", "hours"],
                    [(m.variant, m.base_model, m.tokens, m.steps,
                      "/".join(str(m.phase_steps[p]) for p in ("warmup", "stable", "anneal")),
                      m.final_loss, m.tokens_per_second, m.dtype or "",
                      round(m.train_seconds / 3600, 2)) for m in cpt])


def sft_table(sft: list[RunManifest]) -> str:
    """The SFT and DPO runs: objective (ntp = LLaRA's recipe, rank = candidate-aware, dpo),
    size, steps with the hybrid prompt, final loss, speed, LoRA init and time."""
    if not sft:
        return "(no SFT)"
    return md_table(["domain", "SFT system", "seed", "objective", "samples", "epochs", "steps",
                     "hybrid", "final loss", "tokens/s", "LoRA init", "minutes"],
                    [(m.domain, m.system, m.seed or 0, m.objective, m.samples, m.epochs or 1,
                      m.steps, "" if m.hybrid_steps is None else m.hybrid_steps, m.final_loss,
                      m.tokens_per_second or "", lora_init(m.system),
                      round(m.train_seconds / 60, 1)) for m in sft])


def next_item_table(profile: Profile, domains: list[str]) -> str:
    """Every trained next-item model of ``domains`` (SASRec, GRU4Rec and the text systems):
    its size, training and its scores, full ranking over the domain's items."""
    rows = []
    for key in domains:
        for name, seed, files in trained_next_item_models(profile, key):
            m = json.loads(files.manifest.read_text())
            rows.append((m["domain"], name, seed, (m.get("item_embeddings") or {}).get(
                "source", ""), m["users"], m["shape"]["n_items"], m["epochs"], m["seconds"],
                m["valid"]["ndcg@10"], m["test"]["hr@10"], m["test"]["ndcg@10"]))
    return md_table(["domain", "model", "seed", "text", "users", "items", "epochs", "seconds",
                     "valid NDCG@10", "test HR@10", "test NDCG@10"], rows)


def embeddings_section(profile: Profile) -> list[str]:
    """The LLM item embeddings the text systems read; empty when none were made."""
    layout = profile.layout
    embedded = [json.loads(layout.item_embeddings(source).manifest.read_text())
                for source in profile.item_text.sources()
                if layout.item_embeddings(source).exists()]
    if not embedded:
        return []
    return ["LLM item embeddings (every item's title, one forward each; the text systems"
            " read them)",
            md_table(["source", "model", "items", "dim", "pooling", "seconds", "items/s",
                      "dtype", "device"],
                     [(m["source"], m["model"], m["items"], m["dim"], m["pooling"],
                       m["seconds"], m["items_per_second"], m["dtype"], m["device"])
                      for m in embedded]), ""]


def validation_section(sft: list[RunManifest]) -> list[str]:
    """The SFT runs' validation scores (the weights kept) and what their injected vectors
    carry before and after training; empty for runs trained before these were recorded."""
    rows = [m for m in sft if m.validation and m.injection]
    if not rows:
        return []
    ln20 = "3.00"
    return [
        "SFT on the validation cases (the weights kept; loss per answer: cross-entropy over"
        " the candidates of the summed likelihoods divided by the learned temperature T,"
        f" {ln20} for a blind guess among 20; T and MRR for runs that recorded them) and"
        " the injected vectors (item-specific share of a vector's norm, mean cosine of two"
        " items' vectors), before and after training:", "",
        md_table(["domain", "SFT system", "seed", "cases", "kept step", "HR@1 sum",
                  "HR@1 mean", "MRR sum", "MRR mean", "T", "loss per answer", "scoring",
                  "specific before", "after", "cosine before", "after"],
                 [(m.domain, m.system, m.seed or 0, m.validation.get("cases", ""),
                   m.validation["step"], m.validation["hr@1 (sum)"],
                   m.validation["hr@1 (mean)"], m.validation.get("mrr (sum)", ""),
                   m.validation.get("mrr (mean)", ""), m.validation.get("temperature", ""),
                   m.validation["loss per answer"], m.scoring,
                   m.injection["before"]["item_specific_share"],
                   m.injection["after"]["item_specific_share"],
                   m.injection["before"]["mean_pairwise_cosine"],
                   m.injection["after"]["mean_pairwise_cosine"]) for m in rows]), ""]


def residual_section(sft: list[RunManifest]) -> list[str]:
    """The residual runs (cprec_core.training.residual): partner, gate learned, gate kept and
    why; empty without them."""
    rows = [m for m in sft if m.residual]
    if not rows:
        return []
    return [
        "Residual systems: z(classic partner) + gate x z(summed likelihood), the gate learned"
        " from 0 in the candidate loss and kept only where the residual ranking's validation"
        " MRR beats the partner's alone by more than one standard error:", "",
        md_table(["domain", "system", "seed", "partner", "partners' validation MRR",
                  "gate learned", "gate kept", "validation MRR residual / partner alone"],
                 [(m.domain, m.system, m.seed or 0, m.residual["partner"],
                   ", ".join(f"{k} {v:.3f}" for k, v in
                             m.residual.get("partner_valid_mrr", {}).items()),
                   m.residual.get("learned_gate", m.residual["gate"]), m.residual["gate"],
                   " / ".join(f"{m.residual['valid_mrr'][k]:.3f}" for k in ("residual", "classic"))
                   if "valid_mrr" in m.residual else "") for m in rows]), ""]


DPO_TABLE_HEADER = ("domain", "system", "seed", "from", "pairs", "SFT HR@1 on windows",
                    "steps", "first loss", "final loss", "margin", "accuracy",
                    "validation HR@1 sum/mean", "its SFT's")


def dpo_table(profile: Profile) -> list[tuple]:
    """One row per finished DPO run of the profile (``DPO_TABLE_HEADER``): its pairs, the
    loss from the first step to the last (ln 2 = 0.693 at the start), the last step's reward
    margin and accuracy, and its validation HR@1 beside the SFT run it started from."""
    rows = []
    for run in profile.layout.trained_sft_runs():
        m = run.read_manifest()
        if m.objective != "dpo":
            continue
        log = [json.loads(x) for x in run.train_log.read_text().splitlines()]
        sft = profile.layout.sft_run(m.sft_system, m.partition, m.seed)
        before = sft.read_manifest().validation if sft.manifest.is_file() else None

        def hr1(v: dict | None) -> str:
            return f"{v['hr@1 (sum)']:.3f}/{v['hr@1 (mean)']:.3f}" if v else ""

        rows.append((m.domain, m.system, m.seed, m.sft_system, m.pair_summary["pairs"],
                     m.pair_summary["sft_hr@1 on windows"], m.steps, log[0]["loss"],
                     m.final_loss, log[-1]["margin"], log[-1]["accuracy"], hr1(m.validation),
                     hr1(before)))
    return rows


def dpo_section(profile: Profile) -> list[str]:
    """The DPO runs (``dpo_table``); empty when the profile has none."""
    rows = dpo_table(profile)
    if not rows:
        return []
    return ["DPO after SFT (docs/DPO.md): pairs mined by the SFT run named on fresh training"
            " windows (a hard negative, the SFT run's best-ranked wrong candidate, and a random"
            " one per window); loss from the first step to the last (ln 2 = 0.693 at the"
            " start); the last step's reward margin and accuracy (chosen above rejected);"
            " validation HR@1 of the weights kept beside the SFT run's:", "",
            md_table(DPO_TABLE_HEADER, rows), ""]


def leaderboard_section(con: duckdb.DuckDBPyConnection, profile: Profile) -> list[str]:
    """How the leaderboard ranks, the leaderboard (cprec_core.evaluation.leaderboard) and the
    full-ranking table (cprec_core.recommend.full_ranking)."""
    return [
        "HR@1 ranking: classic systems by their scores, LLM systems by likelihood of each"
        " candidate title, summed or mean per token as chosen on validation (`ranked by`);"
        " `fused`: the better of SASRec and GRU4Rec on validation, z-scored, plus lambda times"
        f" the z-scored `{profile.evaluation.fusion or 'none'}` likelihood, lambda picked on"
        " validation; `*_residual`: z(its classic partner) + the gate its training learned,"
        " where validation kept it (else 0: the partner alone), times z(summed likelihood);"
        " `(shuffled emb)`: the system scored again with every injected vector"
        " another item's, `(shuffled history emb)` / `(shuffled candidate emb)`: only the"
        " history's / only the candidates' (systems that read candidate vectors)."
        " Generation: greedy answer, valid iff it names exactly one candidate"
        " (the paper's ValidRatio and HR@1 over valid answers).",
        "",
        leaderboard_markdown(con),
        "",
        full_ranking_markdown(con, profile.evaluation.bootstrap),
    ]


def recommendations_section(con: duckdb.DuckDBPyConnection, profile: Profile,
                            domains: list[str]) -> list[str]:
    """Each exported domain's recommendations: the snapshot, and the top k of the users with
    the most recent activity, to judge by eye."""
    lines = []
    for key in domains:
        files = profile.layout.recommendation_files(key)
        if not files.current.is_file():
            continue
        info = json.loads(files.current.read_text())
        rerank = info["models"]["rerank"]
        lines += [f"Recommendations {info['domain']}: top {info['k']} for {info['users']:,} users"
                  f" ({info['reranked_users']:,} re-ranked by"
                  f" {rerank['system'] if rerank else 'no LLM'}), snapshot {info['version']}"
                  f" in {files.path} (`make serve` serves it); the most recent users:",
                  md_table(["user", "recent history (oldest first)", "recommended (best first)"],
                           recommendation_sample(con, info["domain"], users=3), max_cell=240),
                  ""]
    return lines


GOAL_P = 0.05  # a paired difference counts when McNemar's p is below this
DPO_VALID_RATIO_MARGIN = DPOConfig.valid_ratio_margin  # the 0.02, the check's default


def goals_section(con: duckdb.DuckDBPyConnection, sft: list[RunManifest]) -> list[str]:
    """The candidate-aware study's goals, each read off the leaderboard and the SFT
    manifests per target domain, and whether it is met: where one is not, the table says
    so. Empty when no domain has ``cprec_rank`` on the leaderboard."""
    hr = {(d, s): h for d, s, h in con.execute(
        'SELECT domain, system, "hr@1" FROM leaderboard').fetchall()}
    tests = {(d, a, b): (diff, p) for d, a, b, diff, p in con.execute(
        """SELECT domain, system_a, system_b, diff, p_value FROM leaderboard_tests
           WHERE family = 'ranking'""").fetchall()}
    domains = sorted({d for d, s in hr if s == "cprec_rank"})
    if not domains:
        return []

    def above(d: str, a: str, b: str) -> tuple[str, bool | None]:
        if (d, a, b) not in tests:
            return "not tested", None
        diff, p = tests[(d, a, b)]
        return f"{diff:+.3f}, p {p:.2g}", diff > 0 and p < GOAL_P

    def over_popularity(d: str) -> tuple[str, bool | None]:
        if (d, "popularity") not in hr:
            return "no popularity row", None
        return (f"{hr[(d, 'cprec_rank')]:.3f} vs {hr[(d, 'popularity')]:.3f}",
                hr[(d, "cprec_rank")] > hr[(d, "popularity")])

    def validation_loss(d: str) -> tuple[str, bool | None]:
        losses = [m.validation["loss per answer"] for m in sft
                  if m.system == "cprec_rank" and m.domain == d and m.validation]
        if not losses:
            return "not recorded", None
        return f"{min(losses):.2f}-{max(losses):.2f}", max(losses) < math.log(20)

    def partner_of(d: str, system: str) -> str | None:
        return next((b for (dd, a, b) in tests if dd == d and a == system
                     and b in PARTNERS), None)

    def over_partner(system: str, strict: bool):
        """``system`` against the classic model it builds on: above it at p < GOAL_P
        (``strict``), or not below it."""
        def check(d: str) -> tuple[str, bool | None]:
            partner = partner_of(d, system)
            if partner is None:
                return f"no {system} row", None
            text, met = above(d, system, partner)
            return f"vs {partner}: {text}", met if strict else tests[(d, system, partner)][0] >= 0
        return check

    def shuffle_drops(system: str):
        """``system`` above its candidate-vector shuffle (where it reads candidate vectors),
        else its every-vector shuffle."""
        def check(d: str) -> tuple[str, bool | None]:
            candidates = system + SHUFFLES["candidates"]
            return above(d, system, candidates if (d, system, candidates) in tests
                         else system + SHUFFLES["all"])
        return check

    def valid_ratio_kept(d: str) -> tuple[str, bool | None]:
        if (d, "cprec_dpo") not in ratios or (d, "cprec_rank") not in ratios:
            return ("no generation rows (generation off, or prompts that do not list the"
                    " candidates, so no answer can name one)"), None
        dpo, sft_ratio = ratios[(d, "cprec_dpo")], ratios[(d, "cprec_rank")]
        return f"{dpo:.3f} vs {sft_ratio:.3f}", dpo >= sft_ratio - DPO_VALID_RATIO_MARGIN

    ratios = {(d, s): r for d, s, r in con.execute(  # generation, beside the headline HR@1
        "SELECT domain, system, valid_ratio FROM leaderboard WHERE valid_ratio IS NOT NULL"
    ).fetchall()}
    # (goal, check per domain, "all": met on every domain / "any": on at least one)
    goals = [
        ("`cprec_rank` HR@1 above popularity", over_popularity),
        (f"`cprec_rank` above `cprec`, paired p < {GOAL_P}",
         lambda d: above(d, "cprec_rank", "cprec")),
        ("validation loss per answer of the kept `cprec_rank` weights below ln 20 = 3.00",
         validation_loss),
        # the candidates' vectors shuffled where it reads them, else every vector
        (f"`cprec_rank` above its shuffled-vector ablation, paired p < {GOAL_P}",
         shuffle_drops("cprec_rank")),
    ]
    goals = [(label, check, "all") for label, check in goals]
    if any(s == "cprec_residual" for _, s in hr):  # the residual ranker's (issue 35)
        goals += [
            ("`cprec_residual` not below its classic partner", over_partner("cprec_residual",
                                                                            False), "all"),
            (f"`cprec_residual` above its classic partner, paired p < {GOAL_P}, on one domain",
             over_partner("cprec_residual", True), "any"),
            (f"`cprec_residual` above its shuffled-vector ablation, paired p < {GOAL_P}",
             shuffle_drops("cprec_residual"), "all"),
            (f"`cprec_residual` above `llara_residual`, paired p < {GOAL_P} (reported)",
             lambda d: above(d, "cprec_residual", "llara_residual"), "all")]
    if any(s == "fused" for _, s in hr):  # post-hoc fusion: what learning the gate adds
        goals.append((f"`fused` above its classic system, paired p < {GOAL_P}",
                      over_partner("fused", True), "all"))
    if any(s == "cprec_dpo" for _, s in hr):  # the DPO stage's goals (docs/DPO.md)
        goals += [
            (f"`cprec_dpo` above `cprec_rank`, paired p < {GOAL_P}, on at least one domain",
             lambda d: above(d, "cprec_dpo", "cprec_rank"), "any"),
            (f"`cprec_dpo` ValidRatio within {DPO_VALID_RATIO_MARGIN} of `cprec_rank`'s",
             valid_ratio_kept, "all"),
            (f"`cprec_dpo` above `llara_dpo`, paired p < {GOAL_P} (reported)",
             lambda d: above(d, "cprec_dpo", "llara_dpo"), "all"),
        ]
    rows = []
    for label, check, need in goals:
        found = [check(d) for d in domains]
        met = [m for _, m in found]
        verdict = ("yes" if (all(met) if need == "all" else any(met))
                   else "not measured" if any(m is None for m in met) else "no")
        rows.append((label, *[t for t, _ in found], verdict))
    return ["## Goals of the candidate-aware study", "",
            "Each goal per target domain, read off the tables below; `met` is `yes` only"
            " where it holds on every domain (or on one, where the goal says so).", "",
            md_table(["goal", *domains, "met"], rows), ""]


def render(con: duckdb.DuckDBPyConnection, profile: Profile, command: str, chart: Path | None,
           outputs: tuple[Path, ...] = ()) -> str:
    cpt, sft = trained_manifests(profile)
    # what each domain's evaluation actually scored, against the test users it has (an
    # evaluation kept from an earlier run of the profile may cover fewer)
    cases = con.execute("""SELECT e.domain, count(DISTINCT e.user_idx), any_value(c.users)
                           FROM evaluation_cases e JOIN (
                               SELECT domain, count(*) AS users FROM candidate_sets
                               WHERE split = 'test' GROUP BY domain) c USING (domain)
                           WHERE e.split = 'test' GROUP BY e.domain
                           ORDER BY e.domain""").fetchall()
    has_revision = con.execute("""SELECT count(*) FROM information_schema.columns WHERE
                                  table_name = 'evaluation_results'
                                  AND column_name = 'git_revision'""").fetchall()[0][0]
    revision = "coalesce(git_revision, 'not recorded')" if has_revision else "'not recorded'"
    scored_at = con.execute(f"""SELECT domain, string_agg(DISTINCT {revision}, ', '
                                                          ORDER BY {revision})
                                FROM evaluation_results WHERE split = 'test'
                                GROUP BY domain ORDER BY domain""").fetchall()
    lines = [
        "# Results",
        "",
        "Written by `make results` (`python -m cprec_core.evaluation.results`) from the leaderboard in the"
        " profile's DuckDB database. Do not edit by hand: rerun the command.",
        "",
        f"- **Command:** `{command}`",
        f"- **Profile:** `{profile.name}`; git revision `{git_revision()}`{_dirty(outputs)};"
        f" written {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- **Trained at git revisions** (from the CPT and SFT manifests):"
        f" {', '.join(sorted({m.git_revision or '?' for m in cpt + sft}))}",
        f"- **Evaluated at git revisions:** {', '.join(f'{d} {r}' for d, r in scored_at)}",
        f"- **Trained on** (from the CPT and SFT manifests):"
        f" {', '.join(sorted({m.processor or 'not recorded' for m in cpt + sft}))};"
        " scored on: the Compute section's `device` column",
        f"- **Hardware** (the machine that wrote this file): {hardware()}",
        f"- **Model:** `{profile.model.name}`, LoRA r={profile.cpt.lora.r}"
        f" alpha={profile.cpt.lora.alpha} on {', '.join(profile.cpt.lora.target_modules)}",
        f"- **Evaluation:** {profile.sft.negatives + 1} fixed candidates per test case (target +"
        f" {profile.sft.negatives} never-touched items);"
        f" test cases per domain: {', '.join(f'{d} {n} of {total}' for d, n, total in cases)}"
        f" ({'all' if all(n == total for _, n, total in cases) else 'fewer than all: a seeded sample'});"
        f" greedy generation capped at {profile.evaluation.max_new_tokens} tokens;"
        f" {profile.evaluation.bootstrap} bootstrap resamples.",
        "",
        *goals_section(con, sft),
        "## Data",
        "",
        corpus_summary(con),
        "",
        "## Training sizes",
        "",
        cpt_table(cpt),
        "",
        sft_table(sft),
        "",
        *validation_section(sft),
        *residual_section(sft),
        *dpo_section(profile),
        "## Compute",
        "",
        compute_summary(con, cpt, sft),
        "",
        "## Leaderboard (test split)",
        "",
        *leaderboard_section(con, profile),
    ]
    if chart is not None:
        lines += ["", f"![HR@1 per system and domain]({chart.name})"]
    return "\n".join(lines) + "\n"


def sizes(profile: Profile) -> str:
    """The training and scoring sizes behind the tables, in one paragraph (the demo's are
    small so that it runs in minutes; the tables mean little at that size)."""
    cpt, sft, evaluation = profile.cpt, profile.sft, profile.evaluation
    llm_domains = ", ".join(sft.domains) if sft.domains else "every target domain"
    return (f"Profile {profile.name} ({profile.model.name}): CPT"
            f" {'the whole corpus' if not cpt.max_tokens else f'{cpt.max_tokens:,} tokens'}"
            f" per variant; LLM systems in {llm_domains}: SFT"
            f" {sft.max_samples or 'all'} windows (candidate-aware {sft.rank.max_samples or 'all'}"
            f" x {sft.rank.epochs} epochs), {sft.validation_cases or 'all'} validation cases,"
            f" DPO {profile.dpo.max_windows or 'all'} windows; scoring on"
            f" {evaluation.max_cases or 'all'} test cases per domain; full ranking of"
            f" {profile.recommend.full_ranking_cases or 'all'} cases; next-item models up to"
            f" {profile.sasrec.max_epochs} epochs.")


def summary(con: duckdb.DuckDBPyConnection, profile: Profile, domains: list[str]) -> str:
    """What `make demo` prints when done: the tables `make results` writes (the same
    functions), with the demo's own beside them (next-item models, item embeddings, a
    sample of the exported recommendations)."""
    cpt, sft = trained_manifests(profile)
    return "\n".join([
        sizes(profile),
        "",
        corpus_summary(con),
        "",
        "Next-item models per target domain: SASRec, GRU4Rec and the text systems (item"
        " table + LLM title embeddings); full ranking over the domain's items, history"
        " excluded",
        next_item_table(profile, domains),
        "",
        "SFT and DPO adapters (hybrid: steps with the hybrid prompt)",
        sft_table(sft),
        "",
        *validation_section(sft),
        *residual_section(sft),
        *dpo_section(profile),
        *embeddings_section(profile),
        "CPT adapters",
        cpt_table(cpt),
        "",
        "Leaderboard: test cases on the fixed 20-candidate sets.",
        "",
        *leaderboard_section(con, profile),
        "",
        *recommendations_section(con, profile, domains),
        "At this demo scale the simple baselines are expected to win (method.md section 3);"
        " `make results` writes these tables to docs/RESULTS.md.",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = add_profile_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--out", default="docs/RESULTS.md")
    args = parser.parse_args(argv)
    profile = profile_from_args(args)
    out = Path(args.out)

    def work() -> None:
        with connect(profile.layout.database) as con:  # waits while another process writes
            require_evaluation(con, profile.layout.database)
            build_leaderboard(con, profile.evaluation.bootstrap)
            chart = leaderboard_chart(con, out.with_name(f"results_{profile.name}.png"))
            command = "python -m cprec_core.evaluation.results " + " ".join(
                map(shlex.quote, argv or sys.argv[1:]))
            out.write_text(render(con, profile, command, chart, (out, chart)))
            rows, tests = leaderboard_rows(con)
        tracked = log_leaderboard(rows, tests, profile, f"results {out.name}", [out, chart],
                                  "results")  # the database closed
        print(f"wrote {out} and {chart}"
              + (f"; MLflow run {tracked['url']}" if tracked else ""))

    return run_tool(work, profile.layout.database)


if __name__ == "__main__":
    sys.exit(main())
