from cprec_core.config import CorpusConfig
from cprec_core.data.interactions import build_interactions
from cprec_core.data.sequences import build_domain_sequences, build_mixed_sequences, unordered_sequences
from tests.conftest import data_config, load_rows


def items_of(con, table, extra=""):
    """Sequences as lists of original item ids, in table order."""
    rows = con.execute(f"SELECT seq_id, item_idxs {extra} FROM {table} ORDER BY seq_id").fetchall()
    ids = dict(con.execute("SELECT item_idx, item_id FROM items").fetchall())
    return [[ids[i] for i in r[1]] + list(r[2:]) for r in rows]


def interleaved():
    """u1 alternates between A and B in time; T is a target; U is unused. The last two items
    of each (user, domain) are held out, so the train parts are a1..a4, b1..b3."""
    rows = []
    for k in range(1, 7):  # A at t=10,30,50,..., B at t=20,40,...
        rows.append(("u1", f"a{k}", "A", 20 * k - 10))
    for k in range(1, 6):
        rows.append(("u1", f"b{k}", "B", 20 * k))
    rows += [("u1", f"t{k}", "T", 5 * k) for k in range(1, 5)]
    rows += [("u1", f"x{k}", "U", 7 * k) for k in range(1, 5)]
    # u2 only ever uses A: no mixed sequence
    rows += [("u2", f"a{k}", "A", 100 + k) for k in range(1, 7)]
    con = load_rows(rows)
    build_interactions(con, data_config(source_domains=("A", "B"), target_domains=("T",)))
    return con


def test_domain_sequences_are_train_only_source_only_and_time_ordered():
    con = interleaved()
    build_domain_sequences(con, CorpusConfig(max_items=20, min_len=3))
    seqs = items_of(con, "domain_sequences", ", domain, user_idx")
    assert [s[:-1] for s in seqs] == [
        ["a1", "a2", "a3", "a4", "A"],  # u1: a5, a6 held out
        ["b1", "b2", "b3", "B"],        # u1: b4, b5 held out
        ["a1", "a2", "a3", "a4", "A"],  # u2
    ]
    assert unordered_sequences(con, "domain_sequences") == 0


def test_mixed_sequences_interleave_domains_by_time():
    con = interleaved()
    report = build_mixed_sequences(con, CorpusConfig(max_items=20, min_len=3, min_domains=2))
    seqs = items_of(con, "mixed_sequences", ", item_domains, domains")
    assert seqs == [[
        "a1", "b1", "a2", "b2", "a3", "b3", "a4",
        ["A", "B", "A", "B", "A", "B", "A"], ["A", "B"],
    ]]
    assert report.users == 1  # u2 touches one source domain only
    assert unordered_sequences(con, "mixed_sequences") == 0


def test_long_histories_split_into_balanced_windows():
    rows = [("u1", f"a{k:02d}", "A", k) for k in range(1, 28)]  # 25 train items after holdout
    rows += [("u1", f"t{k}", "T", k) for k in range(1, 4)]
    con = load_rows(rows)
    build_interactions(con, data_config())
    build_domain_sequences(con, CorpusConfig(max_items=10, min_len=3))
    seqs = items_of(con, "domain_sequences", ", part")
    # ceil(25 / 10) = 3 windows of 9, 8, 8 items, consecutive and complete
    assert [len(s) - 1 for s in seqs] == [9, 8, 8]
    assert [s[-1] for s in seqs] == [0, 1, 2]
    flat = [i for s in seqs for i in s[:-1]]
    assert flat == [f"a{k:02d}" for k in range(1, 26)]


def test_short_sequences_and_single_domain_windows_are_dropped():
    rows = [("u1", "a1", "A", 1), ("u1", "a2", "A", 2), ("u1", "a3", "A", 3), ("u1", "a4", "A", 4),
            ("u1", "b1", "B", 5), ("u1", "b2", "B", 6), ("u1", "b3", "B", 7), ("u1", "b4", "B", 8),
            ("u1", "t1", "T", 1)]
    con = load_rows(rows)
    build_interactions(con, data_config())
    # train parts: a1, a2 and b1, b2 -> domain sequences of 2 items < min_len 3
    report = build_domain_sequences(con, CorpusConfig(min_len=3))
    assert report.sequences == 0 and report.dropped_windows == 2
    # mixed: a1 a2 b1 b2 with max_items 2 -> windows [a1 a2] [b1 b2], each one domain
    mixed = build_mixed_sequences(con, CorpusConfig(max_items=2, min_len=2, min_domains=2))
    assert mixed.sequences == 0 and mixed.dropped_windows == 2
    mixed = build_mixed_sequences(con, CorpusConfig(max_items=4, min_len=2, min_domains=2))
    assert items_of(con, "mixed_sequences") == [["a1", "a2", "b1", "b2"]]
