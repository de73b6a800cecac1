"""LLM item embeddings and the text systems that read them, on the fixture with the tiny
model: every item embedded once, pooling over the title's tokens only, padding that changes
nothing, the vectors reaching SASRec's item table, and the text system taking part in the
evaluation and the full ranking like SASRec."""

import dataclasses
import json
from contextlib import nullcontext

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from cprec_core.data.domain_users import load_domain_data
from cprec_core.embeddings.item_embeddings import (EmbeddingError, ItemVectors, embed_items,
                                                   embed_titles, load_item_vectors,
                                                   tokenise_titles)
from cprec_core.evaluation.candidates import build_candidate_sets
from cprec_core.evaluation.evaluate import evaluate_domain
from cprec_core.layout import ItemEmbeddingFiles
from cprec_core.models.loader import load_base_model
from cprec_core.models.text_items import TextItems
from cprec_core.recommend.full_ranking import full_ranking_domain, full_ranking_tests
from cprec_core.recommend.pipeline import choose_retrieval
from cprec_core.training.next_item import (load_next_item_model, train_system,
                                           trained_next_item_models)


def test_every_item_is_embedded_once_by_the_base_model(con):
    con, profile = con
    lines = []
    m = embed_items(profile, "base", log=lines.append, every_s=0)
    files = profile.layout.item_embeddings("base")
    vectors = load_item_vectors(files)
    ids = [r[0] for r in con.execute("SELECT item_idx FROM items ORDER BY 1").fetchall()]
    assert vectors.item_idx.tolist() == ids and m["items"] == len(ids)
    assert vectors.embeddings.shape == (len(ids), 64) and torch.isfinite(vectors.embeddings).all()
    assert (m["source"], m["pooling"], vectors.pooling) == ("base", "mean", "mean")
    assert json.loads(files.manifest.read_text())["fingerprint"] == vectors.fingerprint
    assert any("items in" in x for x in lines)
    # rows() maps global ids to their vectors, and refuses an item it never saw
    torch.testing.assert_close(vectors.rows([ids[2], ids[0]]), vectors.embeddings[[2, 0]])
    with pytest.raises(EmbeddingError, match="materialise item_embeddings_base"):
        vectors.rows([max(ids) + 1])
    # the same weights and titles give the same vectors; last-token pooling others
    again = embed_items(profile, "base", pooling="last", log=lambda _: None,
                        files=ItemEmbeddingFiles(files.path.parent / "last"))
    assert again["pooling"] == "last" and again["version"] != m["version"]
    assert not torch.allclose(load_item_vectors(ItemEmbeddingFiles(
        files.path.parent / "last")).embeddings, vectors.embeddings)


def test_a_cpt_source_needs_its_adapter(con):
    _, profile = con
    with pytest.raises(EmbeddingError, match="no CPT adapter of variant 'wsa'"):
        embed_items(profile, "wsa", log=lambda _: None)


def test_pooling_reads_the_title_tokens_only_and_padding_changes_nothing(con):
    _, profile = con
    tokenizer = AutoTokenizer.from_pretrained(profile.layout.tokenizer_dir)
    model = load_base_model("tiny-random", profile.layout.cache_dir, torch.float32,
                            tokenizer).eval()
    titles = ["Fargo (1996)", "A much longer title of a film (1970)", "Heat (1995)"]
    ids, skip = tokenise_titles(tokenizer, titles)
    batched = embed_titles(model, ids, skip, "mean", 8, 0, torch.device("cpu"))
    for i, x in enumerate(ids):  # one title per forward: no padding at all
        with torch.no_grad():
            hidden = model.get_decoder()(input_ids=torch.tensor([x])).last_hidden_state[0]
        torch.testing.assert_close(batched[i], hidden[skip:].mean(0), atol=1e-5, rtol=1e-5)
        last = embed_titles(model, ids, skip, "last", 8, 0, torch.device("cpu"))[i]
        torch.testing.assert_close(last, hidden[-1], atol=1e-5, rtol=1e-5)


def test_shuffled_vectors_move_every_domain_item_and_no_other_row():
    vectors = ItemVectors(np.array([2, 5, 7, 9, 11]), torch.arange(10.0).reshape(5, 2), "base",
                          "f" * 16, "mean")
    for seed in range(20):
        moved = vectors.shuffled([9, 2, 11], seed=seed)
        assert not (moved.rows([2, 9, 11]) == vectors.rows([2, 9, 11])).all(1).any()
        assert sorted(moved.rows([2, 9, 11])[:, 0].tolist()) == [0.0, 6.0, 8.0]
        assert torch.equal(moved.rows([5, 7]), vectors.rows([5, 7]))
        assert moved.provenance()["shuffle_seed"] == seed
    assert "shuffle_seed" not in vectors.provenance()
    assert torch.equal(vectors.shuffled([2, 9, 11], 3).embeddings,
                       vectors.shuffled([11, 9, 2], 3).embeddings)  # reproducible
    with pytest.raises(EmbeddingError, match="no 'base' embedding"):
        vectors.shuffled([2, 3])


def test_the_text_table_adds_adapted_standardised_vectors_to_the_ids():
    torch.manual_seed(0)
    text = TextItems(n_items=3, text_dim=4, hidden=5, adapter_hidden=6, dropout=0.0,
                     text_only=False)
    raw = torch.randn(3, 4) * 10 + 3
    text.set_text(raw)
    assert torch.allclose(text.text[1:].mean(0), torch.zeros(4), atol=1e-5)
    assert torch.allclose(text.text[1:].std(0), torch.ones(4), atol=1e-5)
    ids = torch.randn(4, 5)
    table = text(ids)
    assert torch.equal(table[0], ids[0])  # padding: the ID row alone (zero in a model)
    torch.testing.assert_close(table[1:], ids[1:] + text.adapter(text.text[1:]))
    text.text_only = True
    torch.testing.assert_close(text(ids)[1:], text.adapter(text.text[1:]))
    assert not text(ids)[0].any()
    with pytest.raises(ValueError, match="shape"):
        text.set_text(torch.zeros(2, 4))


def test_a_text_system_trains_every_seed_and_joins_evaluation_and_full_ranking(con):
    con, profile = con
    profile = dataclasses.replace(profile, sasrec=dataclasses.replace(profile.sasrec,
                                                                      seeds=(0, 1)))
    embed_items(profile, "base", log=lambda _: None)
    build_candidate_sets(con, "crime", negatives=profile.sft.negatives, log=lambda _: None)
    data = load_domain_data(con, "crime")
    ids = train_system(profile, "sasrec", data, "crime", log=lambda _: None)
    texts = train_system(profile, "sasrec_text_base", data, "crime", log=lambda _: None)
    assert [m["seed"] for m in texts] == [0, 1] and len(ids) == 2
    assert texts[0]["item_embeddings"]["source"] == "base" and ids[0]["item_embeddings"] is None
    assert texts[0]["shape"]["text_dim"] == 64
    # the frozen vectors are in the weights file: the loaded model scores as the trained one
    files = profile.layout.next_item_model("sasrec_text_base", "crime", 1)
    model, index = load_next_item_model(files)
    vectors = load_item_vectors(profile.layout.item_embeddings("base")).rows(index)
    standard = (vectors - vectors.mean(0)) / vectors.std(0)
    torch.testing.assert_close(model.text.text[1:], standard, atol=1e-5, rtol=1e-4)
    found = [(n, s) for n, s, _ in trained_next_item_models(profile, "crime")]
    assert found == [("sasrec", 0), ("sasrec", 1), ("sasrec_text_base", 0),
                     ("sasrec_text_base", 1)]
    rows = evaluate_domain(lambda: nullcontext(con), profile, "crime", systems=(),
                           log=lambda _: None).rows.results
    seeds = {(r.system, r.seed) for r in rows if r.split == "test" and r.subset == "all"}
    assert {("sasrec_text_base", 0), ("sasrec_text_base", 1), ("sasrec", 1)} <= seeds
    subsets = {r.subset for r in rows if r.system == "sasrec_text_base"}
    assert {"all", "head", "tail"} <= subsets and subsets <= {
        "all", "sparse", "medium", "dense", "head", "torso", "tail"}
    summary = full_ranking_domain(lambda: nullcontext(con), profile, "crime", log=lambda _: None)
    assert summary["sasrec_text_base"]["seeds"] == 2
    retrieval = choose_retrieval(profile, "crime")
    best = max((json.loads(f.manifest.read_text())["valid"]["ndcg@10"], n, s)
               for n, s, f in trained_next_item_models(profile, "crime"))
    assert retrieval.valid_ndcg10 == best[0]
    header, tests = full_ranking_tests(con, resamples=20)
    assert ("Crime", "sasrec_text_base vs sasrec") in {(r[0], r[1]) for r in tests}
    assert np.isfinite(float(tests[0][3]))
    # the study's report reads the same rows: per-user seed means, tests, goals
    report = _text_study_report(profile, con)
    assert "## Goals" in report and "| Crime | sasrec_text_base vs sasrec | base text vs ID |" \
        in report
    assert "| Crime | sasrec_text_base | base | 2 |" in report  # source, seeds
    # the ablation arm reads the same vectors, each moved to another item of the domain
    (shuffled,) = train_system(dataclasses.replace(profile, sasrec=dataclasses.replace(
        profile.sasrec, seeds=(0,))), "sasrec_text_base_shuffled", data, "crime",
        log=lambda _: None)
    assert shuffled["item_embeddings"] == {**texts[0]["item_embeddings"], "shuffle_seed": 0}
    arm, index = load_next_item_model(
        profile.layout.next_item_model("sasrec_text_base_shuffled", "crime", 0))
    assert not (arm.text.text[1:] == model.text.text[1:]).all(1).any()
    torch.testing.assert_close(arm.text.text[1:].sort(0).values, model.text.text[1:].sort(0).values)


def _text_study_report(profile, con) -> str:
    from cprec_core.evaluation import text_study

    scores = {("Crime", n): text_study.per_user(con, "Crime", n)
              for n in ("sasrec", "sasrec_text_base")}
    setting = text_study.Setting("Full data", profile, con, ["Crime"],
                                 ["sasrec", "sasrec_text_base"], scores)
    return text_study.render(setting, None, "test", 20, ())
