"""What SASRec and GRU4Rec training reports while it runs (cprec_core.training.next_item):
batches within an epoch, then per epoch the loss, validation metrics, best so far,
patience and epochs left; throttled to one line per interval outside tests."""

import dataclasses
import re

from cprec_core.config import GRU4RecConfig
from cprec_core.layout import NextItemFiles
from cprec_core.training.next_item import train_next_item
from tests.core.models.test_sasrec import FAST, cyclic_domain

CFG = dataclasses.replace(FAST, batch_size=16, max_epochs=8, patience=2)  # 60 users: 4 batches


def test_every_line_with_no_interval(tmp_path):
    lines = []
    manifest = train_next_item(cyclic_domain(), CFG, NextItemFiles(tmp_path / "m"),
                               log=lines.append, every_s=0)
    assert lines[0] == ("SASRec Cycle: 60 training sequences (4 batches of 16), 12 items,"
                        " 60 validation users; up to 8 epochs, early stop after 2 without a"
                        " better validation NDCG@10")
    # within an epoch: batches done, running loss, time left in the epoch (not for the last)
    batches = [x for x in lines if x.startswith("SASRec Cycle epoch 1/8: ")]
    assert [x.split(": ")[1].split(",")[0] for x in batches] == [
        "1/4 batches", "2/4 batches", "3/4 batches"]
    assert all(re.search(r", loss \d+\.\d{4}, .+ each, about .+ left in this epoch$", x)
               for x in batches)
    # after each epoch: its loss and validation metrics, as the manifest's history has them
    epochs = [x for x in lines if x.startswith("SASRec Cycle: epoch ")]
    assert len(epochs) == manifest["epochs"] == len(manifest["history"])
    for line, row in zip(epochs, manifest["history"]):
        assert line.startswith(f"SASRec Cycle: epoch {row['epoch']}/8 in ")
        assert (f"loss {row['loss']:.4f}, valid NDCG@10 {row['ndcg@10']:.4f}"
                f" HR@10 {row['hr@10']:.4f}, ") in line
    # the best so far and the patience left; the epochs left, from the patience left to
    # max_epochs at most
    assert "new best, patience 2/2 left; 2 to 7 more epochs (about " in epochs[0]
    best = manifest["best_epoch"]
    after = epochs[best]  # the first epoch after the best one
    assert f"best NDCG@10 {manifest['history'][best - 1]['ndcg@10']:.4f} at epoch {best}" in after
    assert ", patience 1/2 left; 1 to " in after
    if manifest["epochs"] < 8:
        assert epochs[-1].endswith("; no better epoch in 2: stopping early")
    assert lines[-1].startswith(f"SASRec Cycle: {manifest['epochs']} epochs (best {best}) in ")


def test_throttled_to_the_first_and_last_epochs(tmp_path):
    """A run shorter than the interval: the plan, the first epoch (time per epoch and the
    estimate), the last one and the result; no batch lines."""
    lines = []
    manifest = train_next_item(cyclic_domain(), CFG, NextItemFiles(tmp_path / "m"),
                               log=lines.append, every_s=3600)
    assert len(lines) == 4 and manifest["epochs"] > 1
    assert lines[1].startswith("SASRec Cycle: epoch 1/8 in ")
    assert lines[2].startswith(f"SASRec Cycle: epoch {manifest['epochs']}/8 in ")


def test_gru4rec_reports_under_its_name(tmp_path):
    lines = []
    cfg = GRU4RecConfig(max_len=10, batch_size=32, max_epochs=2, patience=5)
    train_next_item(cyclic_domain(), cfg, NextItemFiles(tmp_path / "g"), log=lines.append,
                    every_s=0)
    assert lines[-2].startswith("GRU4Rec Cycle: epoch 2/2 in ")
    assert lines[-2].endswith("left; last epoch (max_epochs)")
