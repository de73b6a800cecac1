import dataclasses
import json

import torch

from cprec_core.config import SASRecConfig
from cprec_core.data.domain_users import DomainData
from cprec_core.layout import NextItemFiles
from cprec_core.metrics import rank_metrics
from cprec_core.models.sasrec import SASRec, SASRecShape, left_pad
from cprec_core.models.gru4rec import GRU4Rec, GRU4RecShape
from cprec_core.training.next_item import (epoch_batches, evaluate, load_next_item_model,
                                           train_next_item, trim_padding)

FAST = SASRecConfig(max_len=10, batch_size=32, max_epochs=60, patience=5, lr=5e-3, dropout=0.1)


def cyclic_domain(n_items=12, users=60) -> DomainData:
    """Every user walks the items in a fixed cycle from a random start: the next item is
    fully determined by the last one (global ids 100.. to check the re-indexing)."""
    g = torch.Generator().manual_seed(0)
    histories, valid, test = [], [], []
    for _ in range(users):
        start, length = int(torch.randint(0, n_items, (1,), generator=g)), 8
        walk = [100 + (start + k) % n_items for k in range(length + 2)]
        histories.append(walk[:length])
        valid.append(walk[length])
        test.append(walk[length + 1])
    # history items are excluded from the ranking, so keep walks shorter than the cycle
    return DomainData("Cycle", [100 + i for i in range(n_items)], histories, valid, test)


def test_sasrec_learns_a_deterministic_next_item(tmp_path):
    manifest = train_next_item(cyclic_domain(), FAST, NextItemFiles(tmp_path / "m"), log=lambda *_: None)
    assert manifest["valid"]["hr@10"] == 1.0  # 4 candidates left after history: trivially in top 10
    assert manifest["valid"]["ndcg@10"] > 0.95
    assert manifest["epochs"] <= FAST.max_epochs and manifest["best_epoch"] <= manifest["epochs"]
    assert json.loads(NextItemFiles(tmp_path / "m").item_index.read_text())[0] == 100


def test_save_and_load_give_the_same_scores(tmp_path):
    data = cyclic_domain()
    train_next_item(data, dataclasses.replace(FAST, max_epochs=3), NextItemFiles(tmp_path / "m"),
                    log=lambda *_: None)
    model, index = load_next_item_model(NextItemFiles(tmp_path / "m"))
    local = {item: i + 1 for i, item in enumerate(index)}
    histories = [[local[i] for i in h] for h in data.histories]
    a = evaluate(model, histories, [local[v] for v in data.valid], FAST.max_len)
    manifest = json.loads(NextItemFiles(tmp_path / "m").manifest.read_text())
    assert a == manifest["valid"]


# the public benchmark's settings (profile ml1m-bench), scaled to the tiny cycle
BENCH = dataclasses.replace(FAST, block="original", ffn_hidden=16, activation="relu",
                            negatives=4, temperature=0.1, l2_norm=True, beta2=0.98)


def test_the_benchmark_settings_learn_and_reload_as_cosine_scores(tmp_path):
    data = cyclic_domain()
    manifest = train_next_item(data, BENCH, NextItemFiles(tmp_path / "m"), log=lambda *_: None)
    assert manifest["valid"]["ndcg@10"] > 0.9
    assert manifest["shape"]["block"] == "original" and manifest["shape"]["l2_norm"]
    assert manifest["parameters"] > 0
    model, index = load_next_item_model(NextItemFiles(tmp_path / "m"))
    local = {item: i + 1 for i, item in enumerate(index)}
    histories = [[local[i] for i in h] for h in data.histories]
    assert evaluate(model, histories, [local[v] for v in data.valid], BENCH.max_len) == (
        manifest["valid"])
    with torch.no_grad():
        scores = model.scores(left_pad(histories, BENCH.max_len))
    assert scores.abs().max() <= 1 + 1e-5  # cosine similarities


def test_refit_trains_the_chosen_epochs_on_train_and_validation(tmp_path):
    """Validation picks the epochs; the files then hold the same seed trained that long on
    every item before the test one, and the manifest's test is that model's."""
    data = cyclic_domain()
    cfg = dataclasses.replace(BENCH, refit=True, max_epochs=8, patience=2)
    manifest = train_next_item(data, cfg, NextItemFiles(tmp_path / "m"), log=lambda *_: None)
    refit = manifest["refit"]
    assert refit["epochs"] == manifest["best_epoch"] and refit["sequences"] == len(data.histories)
    assert set(refit["test_selected_model"]) == {"hr@10", "ndcg@10"}
    model, index = load_next_item_model(NextItemFiles(tmp_path / "m"))
    local = {item: i + 1 for i, item in enumerate(index)}
    test_hist = [[local[i] for i in h] + [local[v]] for h, v in zip(data.histories, data.valid)]
    assert evaluate(model, test_hist, [local[t] for t in data.test], cfg.max_len) == (
        manifest["test"])
    plain = train_next_item(data, dataclasses.replace(cfg, refit=False),
                            NextItemFiles(tmp_path / "p"), log=lambda *_: None)
    assert plain["refit"] is None and plain["test"] == refit["test_selected_model"]


def test_sampled_softmax_drawing_every_item_is_the_full_softmax(monkeypatch):
    """With every item drawn once per sequence, the target's draw masked out, the sampled
    loss sees exactly the full softmax's competitors: the two losses agree."""
    torch.manual_seed(0)
    model = SASRec(SASRecShape(n_items=9, max_len=6, l2_norm=True, block="original")).eval()
    seq = left_pad([[1, 2, 3], [4, 5, 6, 7, 8]], 6)
    targets = left_pad([[2, 3, 9], [5, 6, 7, 8, 1]], 6)
    full = model.loss(seq, targets, negatives=0, temperature=0.2)
    every = torch.arange(1, 10).expand(2, 9)
    monkeypatch.setattr(torch, "randint", lambda low, high, size, **kw: every[:, :size[1]])
    sampled = model.loss(seq, targets, negatives=9, temperature=0.2)
    torch.testing.assert_close(sampled, full)


def test_both_blocks_are_causal():
    """A later item never changes an earlier item's state (the ``original`` block's
    query-only LayerNorm included); padding positions, whose keys are all masked, are
    never read."""
    for block in ("pre_norm", "original"):
        model = SASRec(SASRecShape(n_items=20, max_len=8, block=block)).eval()
        a, b = left_pad([[3, 4, 5, 6]], 8), left_pad([[3, 4, 5, 19]], 8)
        with torch.no_grad():
            torch.testing.assert_close(model(a)[:, 4:-1], model(b)[:, 4:-1])
            assert not torch.allclose(model(a)[:, -1], model(b)[:, -1])


def test_cutting_shared_padding_changes_nothing_but_the_cost():
    """Positions count from the right edge, so a batch cut to its longest history scores
    as at full width, for both encoders and both SASRec blocks."""
    torch.manual_seed(0)
    seqs = left_pad([[1, 2, 3], [4, 5], [6, 7, 8, 9]], 12)
    targets = left_pad([[2, 3, 4], [5, 6], [7, 8, 9, 1]], 12)
    cut, cut_targets = trim_padding(seqs, targets)
    assert cut.shape == (3, 4) and torch.equal(cut_targets, targets[:, -4:])
    models = [SASRec(SASRecShape(n_items=9, max_len=12, block=b)) for b in ("pre_norm",
                                                                            "original")]
    for model in [*models, GRU4Rec(GRU4RecShape(n_items=9, max_len=12))]:
        model.eval()
        with torch.no_grad():
            torch.testing.assert_close(model(cut)[cut != 0], model(seqs)[seqs != 0])
            torch.testing.assert_close(model.loss(cut, cut_targets), model.loss(seqs, targets))


def test_length_buckets_cover_every_row_once_in_batches_of_like_lengths():
    lengths = torch.randint(1, 200, (1000,), generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(0)
    plain = epoch_batches(lengths, 100, g)
    buckets = epoch_batches(lengths, 100, g, buckets=True)
    again = epoch_batches(lengths, 100, g, buckets=True)
    for batches in (plain, buckets):
        assert sorted(torch.cat(batches).tolist()) == list(range(1000))
    def spread(batches):
        return sum(int(lengths[b].max() - lengths[b].min()) for b in batches) / len(batches)
    assert spread(buckets) < 0.3 * spread(plain)  # like lengths together
    assert [b.tolist() for b in buckets] != [b.tolist() for b in again]  # re-drawn per epoch


def test_heavily_padded_histories_give_finite_scores_in_eval():
    """Regression: with -inf masks, all-padding rows turned into NaN in eval and every
    NaN score counted as a hit."""
    model = SASRec(SASRecShape(n_items=20, max_len=30)).eval()
    with torch.no_grad():
        scores = model.scores(left_pad([[1], [2, 3], []], 30))
    assert torch.isfinite(scores).all()


def test_rank_metrics():
    scores = torch.tensor([[0.9, 0.1, 0.5], [0.1, 0.2, 0.3]])
    out = rank_metrics(scores, torch.tensor([0, 0]), k=2)
    assert out["hr@2"] == 0.5 and abs(out["ndcg@2"] - 0.5) < 1e-6
