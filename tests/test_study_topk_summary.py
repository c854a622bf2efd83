"""benchmarks/study_topk_summary.py computes what it claims: its flat summary is the package's
prev_topk row, every summary is exact where it should be, and its d → score path is the tracker's."""

import sys
from pathlib import Path

import pytest
import torch

import tdds_kernels as tk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
study = pytest.importorskip("study_topk_summary")

F32 = torch.float32
RULES = ("flat", "shape", "temper")


def _logits(n, c, epochs, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=g) * 3
    out = []
    for _ in range(epochs):
        x = x + torch.randn(n, c, generator=g)
        out.append(x)
    return out


def test_shape_summary_is_the_packages_topk_row():
    """(b) in float32 through the study's path gives the reference prev_topk tracker's scores (the
    package's form places ε on the tail's mean instead of on each class: a difference of ~ε / p)."""
    torch.set_num_threads(1)
    n, c, k, w, t = 40, 30, 5, 3, 6
    epochs = _logits(n, c, t)
    spec = study.Summary("b", k, k, rule="shape", store=F32)
    scores, truth, check = study.score_epochs(iter(epochs), c, n, w, [spec], t)
    tracker = tk.TDDSTracker(n, c, window=w, trajectory_len=t, backend="reference", prev_topk=k)
    for x in epochs:
        tracker.update(x, torch.arange(n))
        tracker.end_epoch()
    assert check == 0.0  # the study's full rows are the tracker's
    torch.testing.assert_close(torch.from_numpy(scores[spec.key]).float(), tracker.scores(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(tracker.scores().double(), torch.from_numpy(truth))  # K < C does differ


@pytest.mark.parametrize("rule", RULES)
def test_every_summary_is_exact_when_all_classes_are_fine(rule):
    old, new = (study.rows_of(x) for x in _logits(16, 12, 2))
    old = study.with_rank(old)
    d = study.summary_d(study.Summary(rule, 12, 12, rule=rule, store=F32), old, new)
    assert torch.equal(d, study.contribution(new[1], new[2], old[2]))


@pytest.mark.parametrize("rule", ("shape", "temper"))
def test_tail_models_are_exact_when_the_tail_only_rescales(rule):
    """Logits that move only on the old top K − 1 leave the tail's shape as it was: (b) and (d)
    recover the full row's d there, and (a)'s flat tail does not."""
    torch.set_num_threads(1)
    n, c, k = 16, 200, 8
    x_old = _logits(n, c, 1)[0]
    top = torch.softmax(x_old, 1).topk(k - 1, 1).indices
    x_new = x_old.scatter_add(1, top, torch.randn(n, k - 1, generator=torch.Generator().manual_seed(1)))
    old, new = study.with_rank(study.rows_of(x_old)), study.rows_of(x_new)
    full = study.contribution(new[1], new[2], old[2])
    fine = k - 1 if rule == "temper" else k
    d = study.summary_d(study.Summary(rule, k, fine, rule=rule, store=F32), old, new)
    torch.testing.assert_close(d, full, rtol=2e-3, atol=1e-5)
    flat = study.summary_d(study.Summary("a", k, k, store=F32), old, new)
    assert (flat - full).abs().max() > 0.05
