"""GRU4Rec: learns a deterministic sequence, ignores left padding, saves and loads through
the shared trainer."""

import dataclasses
import json

import torch

from cprec_core.config import GRU4RecConfig
from cprec_core.layout import NextItemFiles
from cprec_core.models.gru4rec import GRU4Rec, GRU4RecShape
from cprec_core.models.sasrec import left_pad
from cprec_core.training.next_item import evaluate, load_next_item_model, train_next_item
from tests.core.models.test_sasrec import cyclic_domain

FAST = GRU4RecConfig(max_len=10, batch_size=32, max_epochs=60, patience=5, lr=1e-2, dropout=0.1)


def test_gru4rec_learns_a_deterministic_next_item(tmp_path):
    manifest = train_next_item(cyclic_domain(), FAST, NextItemFiles(tmp_path / "m"), log=lambda *_: None)
    assert manifest["model"] == "gru4rec"
    assert manifest["valid"]["ndcg@10"] > 0.95
    assert manifest["epochs"] <= FAST.max_epochs and manifest["best_epoch"] <= manifest["epochs"]


def test_left_padding_does_not_change_the_scores():
    """The GRU reads only the real items: the same history scores the same however much
    padding is in front of it, and an empty history gives finite scores."""
    torch.manual_seed(0)
    model = GRU4Rec(GRU4RecShape(n_items=20, max_len=30)).eval()
    histories = [[1], [2, 3, 4], [5, 6, 7, 8, 9], []]
    with torch.no_grad():
        short, long = model.scores(left_pad(histories, 6)), model.scores(left_pad(histories, 30))
        alone = model.scores(left_pad([[2, 3, 4]], 3))
    assert torch.allclose(short, long, atol=1e-6)
    assert torch.allclose(alone[0], short[1], atol=1e-6)
    assert torch.isfinite(short).all()


def test_training_loss_ignores_padding_positions():
    torch.manual_seed(0)
    model = GRU4Rec(GRU4RecShape(n_items=10, max_len=8, dropout=0.0))
    seqs, targets = left_pad([[1, 2, 3]], 4), left_pad([[2, 3, 4]], 4)
    wider = model.loss(left_pad([[1, 2, 3]], 8), left_pad([[2, 3, 4]], 8))
    assert torch.allclose(model.loss(seqs, targets), wider, atol=1e-6)


def test_save_and_load_give_the_same_scores(tmp_path):
    data = cyclic_domain()
    train_next_item(data, dataclasses.replace(FAST, max_epochs=3), NextItemFiles(tmp_path / "m"),
                  log=lambda *_: None)
    model, index = load_next_item_model(NextItemFiles(tmp_path / "m"))
    assert isinstance(model, GRU4Rec)
    local = {item: i + 1 for i, item in enumerate(index)}
    histories = [[local[i] for i in h] for h in data.histories]
    a = evaluate(model, histories, [local[v] for v in data.valid], FAST.max_len)
    assert a == json.loads(NextItemFiles(tmp_path / "m").manifest.read_text())["valid"]
