"""Selection strategies on hand-made score vectors."""

import pytest
import torch

from tdds_kernels.core.selection import (
    STRATEGIES,
    ascending_order,
    ccs,
    class_balanced,
    descending_order,
    importance_weights,
    num_kept,
    random_subset,
    select,
    select_coreset,
    top,
)


# ---------------------------------------------------------------- the release's select and friends
def test_select_keeps_highest_sorted_by_index():
    s = torch.tensor([0.1, 0.9, 0.5, 0.7, 0.3])
    assert select(s, prune_fraction=0.4).tolist() == [1, 2, 3]
    assert select(s, keep_fraction=0.4).tolist() == [1, 3]
    assert top is select


def test_ties_break_toward_lower_index_and_orders_are_reverse():
    s = torch.tensor([1.0, 2.0, 1.0, 2.0])
    assert descending_order(s).tolist() == [1, 3, 0, 2]
    assert ascending_order(s).tolist() == [2, 0, 3, 1]
    assert select(s, keep_fraction=0.25).tolist() == [1]
    # Dropping the head of the ascending order keeps exactly select()'s set.
    assert sorted(ascending_order(s)[int(0.5 * 4) :].tolist()) == select(s, prune_fraction=0.5).tolist()


@pytest.mark.parametrize(
    "n, prune, keep, want",
    [
        (10, 0.0, None, 10),
        (10, 0.95, None, 1),
        (7, 0.5, None, 4),
        (1, 0.9, None, 1),
        (10, None, 1.0, 10),
        (10, None, 0.01, 1),
        (7, None, 0.5, 4),
    ],
)
def test_num_kept(n, prune, keep, want):
    assert num_kept(n, prune, keep) == want


@pytest.mark.parametrize(
    "prune, keep, match",
    [
        (None, None, "exactly one"),
        (0.5, 0.5, "exactly one"),
        (1.0, None, "prune_fraction"),
        (-0.1, None, "prune_fraction"),
        (None, 0.0, "keep_fraction"),
        (None, 1.5, "keep_fraction"),
    ],
)
def test_num_kept_errors(prune, keep, match):
    with pytest.raises(ValueError, match=match):
        num_kept(10, prune, keep)


@pytest.mark.parametrize("bad", [torch.tensor([]), torch.zeros(2, 2), torch.tensor([1.0, float("nan")])])
def test_bad_scores_raise(bad):
    with pytest.raises(ValueError, match="scores"):
        select(bad, prune_fraction=0.5)


def test_integer_and_list_scores_accepted():
    assert select([3, 1, 2], keep_fraction=0.34).tolist() == [0]
    assert select(torch.tensor([3, 1, 2]), prune_fraction=0.5).tolist() == [0, 2]


def test_importance_weights():
    w = importance_weights(torch.tensor([2.0, 4.0, 3.0]))
    assert w.tolist() == [0.0, 1.0, 0.5] and w.dtype == torch.float32
    assert importance_weights(torch.tensor([5.0, 5.0])).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError):
        importance_weights(torch.tensor([float("nan")]))


# ---------------------------------------------------------------- class_balanced
def test_class_balanced_keeps_class_shares():
    # Class 0 (6 samples) has all the high scores; top-k would keep only class 0.
    scores = torch.tensor([9.0, 8, 7, 6, 5, 4, 1, 0.5, 0.2, 0.1])
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
    assert select(scores, keep_fraction=0.5).tolist() == [0, 1, 2, 3, 4]
    kept = class_balanced(scores, labels, keep_fraction=0.5)
    assert kept.tolist() == [0, 1, 2, 6, 7]  # 3 of 6 and 2 of 4 (largest remainder: 3.0, 2.0)


def test_class_balanced_rounding_sums_to_budget():
    labels = torch.tensor([0] * 5 + [1] * 3 + [2] * 2)
    scores = torch.arange(10.0)
    for f in (0.1, 0.3, 0.5, 0.7, 0.9):
        kept = class_balanced(scores, labels, prune_fraction=f)
        assert kept.numel() == num_kept(10, f)
        assert kept.unique().numel() == kept.numel()
    # k=3 of 10: exact shares 1.5, 0.9, 0.6 -> floors 1, 0, 0, remainders to classes 1 and 2.
    kept = class_balanced(scores, labels, keep_fraction=0.3)
    assert torch.bincount(labels[kept], minlength=3).tolist() == [1, 1, 1]
    assert kept.tolist() == [4, 7, 9]  # the top of each class


def test_class_balanced_errors():
    with pytest.raises(ValueError, match="labels"):
        class_balanced(torch.rand(4), torch.tensor([0, 1]), keep_fraction=0.5)
    with pytest.raises(TypeError, match="labels"):
        class_balanced(torch.rand(2), torch.tensor([0.0, 1.0]), keep_fraction=0.5)


# ---------------------------------------------------------------- ccs
def test_ccs_cuts_the_hardest_then_covers_the_score_range():
    scores = torch.arange(100.0)  # higher = harder
    kept = ccs(scores, keep_fraction=0.2, hard_cut=0.1, bins=4, seed=0)
    assert kept.numel() == 20
    assert kept.max() < 90  # the hardest 10% are gone
    # 90 samples in 4 equal-width strata (23, 22, 22, 23): each gets 5.
    strata = torch.bucketize(kept.double(), torch.tensor([22.25, 44.5, 66.75]))
    assert torch.bincount(strata, minlength=4).tolist() == [5, 5, 5, 5]


def test_ccs_small_strata_are_kept_whole():
    # A sparse stratum (3 outliers at the bottom) is kept whole; the rest share the budget.
    rest = 10 + torch.rand(97, generator=torch.Generator().manual_seed(1))
    scores = torch.cat([torch.tensor([0.0, 0.1, 0.2]), rest])
    kept = ccs(scores, keep_fraction=0.1, hard_cut=0.0, bins=10, seed=3)
    assert kept.numel() == 10
    assert {0, 1, 2} <= set(kept.tolist())


def test_ccs_deterministic_given_seed_and_seed_matters():
    scores = torch.rand(500, generator=torch.Generator().manual_seed(0))
    a = ccs(scores, prune_fraction=0.9, seed=7)
    assert torch.equal(a, ccs(scores, prune_fraction=0.9, seed=7))
    assert not torch.equal(a, ccs(scores, prune_fraction=0.9, seed=8))
    assert a.numel() == 50 and a.unique().numel() == 50 and torch.equal(a, a.sort().values)


def test_ccs_cut_shrinks_when_budget_needs_it_and_constant_scores():
    scores = torch.arange(10.0)
    kept = ccs(scores, prune_fraction=0.05, hard_cut=0.5)  # keeps 10: no room for any cut
    assert kept.tolist() == list(range(10))
    assert ccs(scores, keep_fraction=0.6, hard_cut=0.5).tolist() == list(range(6))  # cut 4, keep all 6 left
    assert ccs(torch.ones(10), keep_fraction=0.3).numel() == 3


@pytest.mark.parametrize(
    "kw, exc, match",
    [
        (dict(hard_cut=1.0), ValueError, "hard_cut"),
        (dict(bins=0), ValueError, "bins"),
        (dict(seed=1.5), TypeError, "seed"),
    ],
)
def test_ccs_errors(kw, exc, match):
    with pytest.raises(exc, match=match):
        ccs(torch.rand(10), keep_fraction=0.5, **kw)


# ---------------------------------------------------------------- random / select_coreset
def test_random_subset():
    a = random_subset(100, prune_fraction=0.7, seed=1)
    assert a.numel() == 30 and a.unique().numel() == 30 and torch.equal(a, a.sort().values)
    assert torch.equal(a, random_subset(100, prune_fraction=0.7, seed=1))
    assert not torch.equal(a, random_subset(100, prune_fraction=0.7, seed=2))


def test_select_coreset_dispatch():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.7, 0.3, 0.2])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    assert torch.equal(select_coreset("top", scores, prune_fraction=0.5), select(scores, prune_fraction=0.5))
    assert torch.equal(
        select_coreset("class_balanced", scores, labels, keep_fraction=0.5),
        class_balanced(scores, labels, keep_fraction=0.5),
    )
    assert torch.equal(
        select_coreset("ccs", scores, keep_fraction=0.5, seed=2, bins=2), ccs(scores, keep_fraction=0.5, seed=2, bins=2)
    )
    assert torch.equal(
        select_coreset("random", labels=labels, prune_fraction=0.5, seed=4),
        random_subset(6, prune_fraction=0.5, seed=4),
    )
    for strategy in STRATEGIES:
        assert select_coreset(strategy, scores, labels, prune_fraction=0.5).numel() == 3


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda s, y: select_coreset("nope", s), ValueError, "strategy"),
        (lambda s, y: select_coreset("top", None, y, prune_fraction=0.5), ValueError, "scores"),
        (lambda s, y: select_coreset("class_balanced", s, prune_fraction=0.5), ValueError, "labels"),
        (lambda s, y: select_coreset("random", prune_fraction=0.5), ValueError, "size"),
        (lambda s, y: select_coreset("top", s, prune_fraction=0.5, bins=3), TypeError, "options"),
    ],
)
def test_select_coreset_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call(torch.rand(4), torch.tensor([0, 1, 0, 1]))
