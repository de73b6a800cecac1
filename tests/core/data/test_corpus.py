import pytest

from cprec_core.config import ConfigError, CorpusConfig
from cprec_core.data.corpus import build_cpt_corpus, corpus_leaks, corpus_texts
from cprec_core.data.interactions import build_interactions
from cprec_core.data.sequences import build_domain_sequences, build_mixed_sequences
from cprec_core.models.tokenizer import load_tokenizer
from cprec_core.prompts import render_unified
from tests.conftest import data_config, load_rows


def test_unified_prompt_is_the_papers_template():
    text = render_unified(["The Rock (1996)", "Heat (1995)", "Fargo (1996)"], CorpusConfig())
    assert text == ("This user has bought The Rock (1996), Heat (1995) in the previous. "
                    "Please predict the next item this user will buy. Fargo (1996)")
    with pytest.raises(ValueError):
        render_unified(["Only one"], CorpusConfig())


def test_template_must_have_both_slots():
    with pytest.raises(ConfigError, match=r"\{next\}"):
        CorpusConfig(template="This user has bought {history}.")


def built_corpus(tmp_path):
    rows = []
    for u in range(1, 4):
        for k in range(1, 7):
            rows.append((f"u{u}", f"a{k}", "A", 10 * k + u, f"Alpha {k} (199{k})"))
            rows.append((f"u{u}", f"b{k}", "B", 10 * k + 5 + u, f"Beta {k}"))
            rows.append((f"u{u}", f"t{k}", "T", 10 * k + 7 + u, f"Target {k}"))
    con = load_rows(rows)
    build_interactions(con, data_config(source_domains=("A", "B")))
    cfg = CorpusConfig(max_items=5, min_len=3)
    build_domain_sequences(con, cfg)
    build_mixed_sequences(con, cfg)
    texts = [r[5] for r in corpus_texts(con, cfg)]
    tok = load_tokenizer("tiny-random", tmp_path, texts)
    report = build_cpt_corpus(con, cfg, tok, "tiny-random")
    return con, tok, report


def test_corpus_is_tokenised_with_eos_and_tagged(tmp_path):
    con, tok, report = built_corpus(tmp_path)
    assert set(report.documents) == {"domain", "mixed", "target"}
    rows = con.execute("SELECT kind, domains, text, input_ids, n_tokens FROM cpt_corpus"
                       " ORDER BY doc_id").fetchall()
    order = {"domain": 0, "mixed": 1, "target": 2}
    assert [order[r[0]] for r in rows] == sorted(order[r[0]] for r in rows)
    for kind, domains, text, ids, n in rows:
        assert ids[-1] == tok.eos_token_id and len(ids) == n
        assert tok.decode(ids[:-1]) == text
        # target titles only in the target domains' own documents
        assert ("Target" in text) == (kind == "target")
        assert (domains == ["A", "B"]) if kind == "mixed" else len(domains) == 1
    assert report.total_tokens == sum(r[4] for r in rows)
    assert corpus_leaks(con) == {"non_source_items": 0, "heldout_interactions": 0,
                                 "non_source_documents": 0, "target_items_outside_train": 0}


def test_target_sequences_hold_the_target_train_split_only(tmp_path):
    con, _, _ = built_corpus(tmp_path)
    # every item of a target sequence is a train interaction of that user in a target domain
    bad = con.execute("""
        SELECT count(*) FROM (SELECT user_idx, unnest(item_idxs) AS item_idx
                              FROM target_sequences) t
        WHERE NOT EXISTS (SELECT 1 FROM interactions i WHERE i.user_idx = t.user_idx
                          AND i.item_idx = t.item_idx AND i.split = 'train'
                          AND i.role = 'target')""").fetchone()[0]
    held = con.execute("SELECT count(*) FROM interactions WHERE role = 'target'"
                       " AND split != 'train'").fetchone()[0]
    assert bad == 0 and held > 0
    # a test item, or a source item, put into a target sequence is caught
    test_item, user = con.execute("SELECT item_idx, user_idx FROM interactions WHERE"
                                  " split = 'test' AND domain = 'T' LIMIT 1").fetchone()
    source_item = con.execute("SELECT item_idx FROM items WHERE domain = 'A'").fetchone()[0]
    con.execute("UPDATE target_sequences SET item_idxs = list_append(item_idxs, ?)"
                " WHERE seq_id = (SELECT min(seq_id) FROM target_sequences WHERE user_idx = ?)",
                [test_item, user])
    found = corpus_leaks(con)
    assert found["heldout_interactions"] == 1 and found["target_items_outside_train"] == 1
    con.execute("UPDATE target_sequences SET item_idxs = list_append(item_idxs, ?)"
                " WHERE seq_id = 0", [source_item])
    assert corpus_leaks(con)["target_items_outside_train"] == 2


def test_leakage_check_catches_heldout_and_target_items(tmp_path):
    con, _, _ = built_corpus(tmp_path)
    test_item, user = con.execute("SELECT item_idx, user_idx FROM interactions WHERE split = 'test'"
                                  " AND domain = 'A' LIMIT 1").fetchall()[0]
    target_item = con.execute("SELECT item_idx FROM items WHERE domain = 'T' LIMIT 1").fetchall()[0][0]
    con.execute("UPDATE domain_sequences SET item_idxs = list_append(item_idxs, ?)"
                " WHERE seq_id = (SELECT min(seq_id) FROM domain_sequences WHERE user_idx = ?)",
                [test_item, user])
    con.execute("UPDATE mixed_sequences SET item_idxs = list_append(item_idxs, ?) WHERE seq_id = 0",
                [target_item])
    found = corpus_leaks(con)
    assert found["heldout_interactions"] == 1 and found["non_source_items"] == 1


def test_the_snapshot_is_swapped_in_whole(tmp_path):
    import hashlib
    import json

    from cprec_core.data.corpus import export_snapshot
    from cprec_core.layout import Layout

    con, tok, _ = built_corpus(tmp_path)
    layout = Layout(tmp_path / "data", "demo")
    first = export_snapshot(con, layout, tok)
    # a run killed in the middle of an export left its staging folder behind
    stale = layout.corpus_dir.with_name(".corpus.new")
    stale.mkdir()
    (stale / "cpt_corpus.parquet").write_bytes(b"half a file")
    con.execute("DELETE FROM cpt_corpus WHERE doc_id % 2 = 0")
    second = export_snapshot(con, layout, tok)
    assert first["snapshot_sha256"] != second["snapshot_sha256"]
    assert sorted(p.name for p in layout.corpus_dir.parent.iterdir()) == ["corpus"]
    assert json.loads(layout.corpus_info.read_text()) == second
    digest = hashlib.sha256(layout.corpus_parquet.read_bytes()).hexdigest()[:16]
    assert digest == second["snapshot_sha256"] and layout.tokenizer_config.is_file()
