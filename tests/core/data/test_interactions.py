from datetime import datetime

import pytest

from cprec_core.data.interactions import DataError, build_interactions, domain_slug, leaks
from tests.conftest import data_config, load_rows


def rows_of(con, sql):
    return con.execute(sql).fetchall()


def test_leave_one_out_split_per_user_and_domain():
    con = load_rows([
        ("u1", "a1", "A", 10), ("u1", "a2", "A", 20), ("u1", "a3", "A", 30), ("u1", "a4", "A", 40),
        ("u1", "t1", "T", 15), ("u1", "t2", "T", 25), ("u1", "t3", "T", 35),
        ("u2", "a1", "A", 5), ("u2", "a2", "A", 6),  # only two: both stay in train
        ("u2", "b1", "B", 1), ("u2", "b2", "B", 2), ("u2", "b3", "B", 3),
        ("u3", "t1", "T", 1), ("u3", "t2", "T", 2), ("u3", "t3", "T", 3),
    ])
    report = build_interactions(con, data_config())
    assert report.reconciled and report.kept_rows == 15
    split = dict(((u, i), s) for u, i, s in rows_of(
        con, "SELECT user_id, item_id, split FROM interactions"))
    assert [split[("u1", f"a{k}")] for k in range(1, 5)] == ["train", "train", "valid", "test"]
    assert [split[("u1", f"t{k}")] for k in range(1, 4)] == ["train", "valid", "test"]
    assert split[("u2", "a1")] == split[("u2", "a2")] == "train"
    assert leaks(con) == []
    roles = dict(rows_of(con, "SELECT domain, role FROM domains"))
    assert roles == {"A": "source", "B": "source", "T": "target"}


def test_ties_in_time_keep_log_order():
    con = load_rows([("u1", "x", "A", 100), ("u1", "y", "A", 100), ("u1", "z", "A", 100),
                     ("u1", "t1", "T", 1), ("u1", "t2", "T", 2), ("u1", "t3", "T", 3)])
    build_interactions(con, data_config())
    order = rows_of(con, "SELECT item_id, split FROM interactions WHERE domain = 'A' ORDER BY pos")
    assert order == [("x", "train"), ("y", "valid"), ("z", "test")]


def test_duplicates_and_kcore_are_kept_with_reasons():
    rows = [("u1", "a1", "A", 1), ("u1", "a1", "A", 2),  # duplicate: the later one goes
            ("u1", "a2", "A", 3), ("u1", "a3", "A", 4),
            ("u2", "a1", "A", 5), ("u2", "a2", "A", 6), ("u2", "a3", "A", 7),
            ("u3", "a1", "A", 8),  # u3 has one A interaction: below user_core=2
            ("u1", "t1", "T", 1), ("u1", "t2", "T", 2), ("u2", "t1", "T", 3),
            ("u2", "t2", "T", 4)]
    con = load_rows(rows)
    report = build_interactions(con, data_config(user_core=2, item_core=2))
    assert report.reconciled
    filtered = rows_of(con, "SELECT line, reason FROM filtered_interactions ORDER BY line")
    assert filtered[0][0] == 2 and filtered[0][1].startswith("duplicate")
    assert (8, "k-core: user has fewer than 2 interactions in its domain") in filtered
    kept = rows_of(con, "SELECT ts FROM interactions WHERE user_id = 'u1' AND item_id = 'a1'")
    assert kept == [(datetime(1970, 1, 1, 0, 0, 1),)]  # the earliest duplicate is kept


def test_kcore_iterates_until_stable():
    # removing u3 (1 item) leaves item a3 with 1 user, which then goes too
    rows = [("u1", "a1", "A", 1), ("u1", "a2", "A", 2), ("u2", "a1", "A", 3), ("u2", "a2", "A", 4),
            ("u3", "a3", "A", 5), ("u4", "a3", "A", 6), ("u4", "a4", "A", 7),
            ("u1", "t1", "T", 1), ("u1", "t2", "T", 2), ("u2", "t1", "T", 3), ("u2", "t2", "T", 4)]
    con = load_rows(rows)
    report = build_interactions(con, data_config(user_core=2, item_core=2))
    assert report.kcore_rounds >= 2
    assert rows_of(con, "SELECT DISTINCT user_id FROM interactions WHERE domain = 'A' ORDER BY 1") == [
        ("u1",), ("u2",)]


def test_titles_are_normalised_and_items_reindexed():
    con = load_rows([("u1", "1", "A", 1, "Rock, The (1996)"), ("u1", "2", "A", 2, "Seven  (Se7en) (1995)"),
                     ("u1", "3", "T", 3, "City of Lost Children, The (Cité des enfants perdus, La) (1995)")])
    build_interactions(con, data_config())
    titles = [t for (t,) in rows_of(con, "SELECT title FROM items ORDER BY item_idx")]
    assert titles == ["The Rock (1996)", "Seven (Se7en) (1995)",
                      "The City of Lost Children (Cité des enfants perdus, La) (1995)"]
    assert rows_of(con, "SELECT min(item_idx), max(item_idx) FROM items") == [(0, 2)]


def test_target_too_small_is_a_clear_error():
    con = load_rows([("u1", "a1", "A", 1), ("u1", "t1", "T", 2)])
    with pytest.raises(DataError, match="target domain 'T' has 1 items.*min_target_items=20"):
        build_interactions(con, data_config(min_target_items=20))


def test_a_data_set_of_one_target_domain_builds_but_an_emptied_source_does_not():
    """The public benchmark is one target domain and no source at all; a configured source
    domain that filtering emptied is still the nothing-to-pre-train-on error."""
    con = load_rows([("u1", "t1", "T", 1), ("u1", "t2", "T", 2), ("u1", "t3", "T", 3)])
    report = build_interactions(con, data_config())
    assert report.reconciled and rows_of(con, "SELECT domain, role FROM domains") == [
        ("T", "target")]
    con = load_rows([("u1", "a1", "A", 9), ("u1", "t1", "T", 1), ("u1", "t2", "T", 2),
                     ("u1", "t3", "T", 3)])
    with pytest.raises(DataError, match="no source domain has interactions left"):
        build_interactions(con, data_config(user_core=2))


def test_unknown_configured_domain_names_what_exists():
    con = load_rows([("u1", "a1", "A", 1), ("u1", "t1", "T", 2)])
    with pytest.raises(DataError, match=r"\['Nope'\] not in the data; present: \['A', 'T'\]"):
        build_interactions(con, data_config(target_domains=("Nope",), source_domains=("A",)))


def test_domain_slugs_are_safe_partition_keys():
    assert domain_slug("Sci-Fi") == "sci-fi"
    assert domain_slug("Children's") == "childrens"
    assert domain_slug("Clothing, Shoes and Jewelry") == "clothing-shoes-and-jewelry"
    assert domain_slug("Café") == "cafe"
    # no Latin letter left: a stable hashed key instead of a failed build
    assert domain_slug("ドラマ") == domain_slug("ドラマ") != domain_slug("???")
    assert domain_slug("ドラマ").startswith("d-") and len(domain_slug("???")) == 10


def test_a_domain_without_a_latin_name_is_built_under_its_hashed_key():
    con = load_rows([("u1", "a1", "A", 1), ("u1", "a2", "A", 2),
                     ("u1", "x1", "ドラマ", 1), ("u1", "x2", "ドラマ", 2), ("u1", "x3", "ドラマ", 3)])
    report = build_interactions(con, data_config(target_domains=("ドラマ",)))
    assert report.reconciled and report.kept_rows == 5
    assert rows_of(con, "SELECT slug, role FROM domains WHERE domain = 'ドラマ'") == [
        (domain_slug("ドラマ"), "target")]


def test_spellings_of_one_partition_key_merge_under_one_name():
    rows = [("u1", "a1", "Drama", 1), ("u1", "a2", "drama", 2), ("u2", "a1", "drama", 3),
            ("u2", "a3", "DRAMA", 4),
            ("u1", "t1", "T", 1), ("u1", "t2", "T", 2), ("u1", "t3", "T", 3)]
    report = build_interactions(load_rows(rows), data_config())
    # nothing configured: the most frequent spelling names the domain
    assert report.merged_domains == {"Drama": "drama", "DRAMA": "drama"}
    con = load_rows(rows)
    report = build_interactions(con, data_config(source_domains=("DRAMA",)))
    assert report.reconciled and report.merged_domains == {"Drama": "DRAMA", "drama": "DRAMA"}
    assert rows_of(con, "SELECT domain, slug, items FROM domains WHERE role = 'source'") == [
        ("DRAMA", "drama", 3)]
    assert rows_of(con, "SELECT DISTINCT domain FROM filtered_interactions") == []


def test_sparse_target_setting_keeps_the_most_recent_share_of_target_train():
    rows = [("u1", f"t{k}", "T", k) for k in range(1, 13)]  # 10 train, valid t11, test t12
    rows += [("u1", f"a{k}", "A", k) for k in range(1, 8)]
    rows += [("u2", f"t{k}", "T", 20 + k) for k in (1, 2, 3)]  # one train item: kept
    full_con, sparse_con = load_rows(rows), load_rows(rows)
    full = build_interactions(full_con, data_config())
    sparse = build_interactions(sparse_con, data_config(target_train_share=0.2))
    assert sparse.reconciled and sparse.kept_rows == full.kept_rows - 8
    kept = rows_of(sparse_con, "SELECT user_id, item_id, split FROM interactions"
                               " WHERE domain = 'T' ORDER BY user_id, ts")
    assert kept == [("u1", "t9", "train"), ("u1", "t10", "train"), ("u1", "t11", "valid"),
                    ("u1", "t12", "test"), ("u2", "t1", "train"), ("u2", "t2", "valid"),
                    ("u2", "t3", "test")]
    # the source domain and the indices are those of the full setting
    for sql in ("SELECT user_id, item_id, split FROM interactions WHERE domain = 'A'"
                " ORDER BY ts", "SELECT * FROM items ORDER BY item_idx",
                "SELECT * FROM users ORDER BY user_idx"):
        assert rows_of(sparse_con, sql) == rows_of(full_con, sql)
    assert rows_of(sparse_con, "SELECT count(*), any_value(reason) FROM filtered_interactions"
                               " WHERE reason = 'target train share'") == [(8, "target train share")]
    assert rows_of(sparse_con, "SELECT train FROM domains WHERE domain = 'T'") == [(3,)]
    assert leaks(sparse_con) == []
    with pytest.raises(ValueError, match="target_train_share"):
        data_config(target_train_share=0.0)
