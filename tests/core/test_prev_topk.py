"""prev_topk=K in the tracker: config, state tensors, checkpoints, the final (complete) state,
and the shard layout's split/merge (docs/design.md §2.1)."""

import numpy as np
import pytest
import torch

import tdds_kernels as tk
from tdds_kernels.core import state
from tdds_kernels.core.config import TrackerConfig
from tdds_kernels.distributed.layout import ShardLayout
from tdds_kernels.integrations._final import expand_final_state, final_state

from tests.support.helpers import assert_same_state, feed, random_epochs, snapshot

pytestmark = pytest.mark.filterwarnings("ignore:tdds_kernels. using the reference backend")
CFG = {"num_samples": 11, "num_classes": 6, "window": 3, "trajectory_len": 6}


def _tracker(**kw):
    return tk.TDDSTracker(**(CFG | kw))


@pytest.mark.parametrize(
    "value,kind,match",
    [
        (0, ValueError, "prev_topk: expected an int >= 1, got 0"),
        (True, TypeError, "prev_topk"),
        (2.0, TypeError, "prev_topk"),
    ],
)
def test_config_rejects_bad_k(value, kind, match):
    with pytest.raises(kind, match=match):
        TrackerConfig(10, 5, prev_topk=value)


def test_config_k_at_least_c_is_full_rows_and_round_trips():
    assert TrackerConfig(10, 5, prev_topk=5).prev_topk is None
    assert TrackerConfig(10, 5, prev_topk=np.int64(4)).prev_topk == 4
    cfg = TrackerConfig(10, 5, prev_topk=2)
    assert TrackerConfig.from_dict(cfg.to_dict()) == cfg
    assert "prev_topk" not in TrackerConfig(10, 5).to_dict()  # full rows: the format-1 entries
    assert TrackerConfig.from_dict(TrackerConfig(10, 5).to_dict()).prev_topk is None


def test_state_tensors_follow_the_config():
    sd = _tracker(prev_topk=2, storage_dtype=torch.float16).state_dict()
    assert "prev" not in sd
    assert (sd["prev_val"].shape, sd["prev_val"].dtype) == ((11, 2), torch.float16)
    assert (sd["prev_idx"].shape, sd["prev_idx"].dtype) == ((11, 2), torch.int16)
    assert (sd["prev_rest"].shape, sd["prev_rest"].dtype) == ((11,), torch.float16)
    assert "prev_val" not in _tracker().state_dict()
    assert "prev_topk=2" in repr(_tracker(prev_topk=2))


def test_checkpoint_round_trip_and_resume(tmp_path):
    epochs = random_epochs(np.random.default_rng(0), 11, 6, 6, p_missing=0.2, p_dup=0.2)
    whole = _tracker(prev_topk=2)
    feed(whole, epochs)
    first = _tracker(prev_topk=2)
    feed(first, epochs[:3])
    first.save(tmp_path / "t.pt")
    back = tk.TDDSTracker.load(tmp_path / "t.pt")
    assert back.prev_topk == 2
    assert_same_state(snapshot(first), snapshot(back))
    feed(back, epochs[3:])
    assert_same_state(snapshot(whole), snapshot(back))


@pytest.mark.parametrize(
    "src,dst,match",
    [
        ({"prev_topk": 2}, {}, "prev_topk: tracker has None, state dict has 2"),
        ({"prev_topk": 2}, {"prev_topk": 3}, "prev_topk"),
    ],
)
def test_mismatched_k_is_refused_and_changes_nothing(src, dst, match):
    a, b = _tracker(**src), _tracker(**dst)
    feed(a, random_epochs(np.random.default_rng(1), 11, 6, 2))
    before = snapshot(b)
    with pytest.raises(ValueError, match=match):
        b.load_state_dict(a.state_dict())
    assert_same_state(before, snapshot(b))


def test_class_ids_out_of_range_are_refused():
    a = _tracker(prev_topk=2)
    sd = a.state_dict()
    sd["prev_idx"][3, 1] = 6
    with pytest.raises(ValueError, match=r"prev_idx: expected class ids in \[0, 6\)"):
        _tracker(prev_topk=2).load_state_dict(sd)


def test_repeated_class_ids_of_a_recorded_sample_are_refused():
    # Never-recorded samples hold zeros (K repeats of class 0) and pass; a recorded sample's ids
    # must be K distinct classes, in any chunk of the check (rows=4 makes sample 9 the third chunk).
    a = _tracker(prev_topk=3)
    feed(a, random_epochs(np.random.default_rng(3), 11, 6, 2))
    sd = a.state_dict()
    sd["seen"][:2] = -1
    sd["prev_idx"][:2] = 0
    b = _tracker(prev_topk=3)
    b.load_state_dict(sd)
    assert torch.equal(b.state_dict()["prev_idx"], sd["prev_idx"])
    sd["prev_idx"][9, 2] = sd["prev_idx"][9, 0]
    before = snapshot(b)
    with pytest.raises(ValueError, match="expected 3 distinct class ids per recorded sample, sample 9 repeats"):
        b.load_state_dict(sd)
    assert_same_state(before, snapshot(b))
    state.check_distinct_ids("sd", sd["prev_idx"][:8], sd["seen"][:8], rows=4)  # sample 9 outside: passes
    with pytest.raises(ValueError, match="sample 9 repeats"):
        state.check_distinct_ids("sd", sd["prev_idx"], sd["seen"], rows=4)


def test_final_state_drops_and_refills_the_compressed_row():
    a = _tracker(prev_topk=2)
    feed(a, random_epochs(np.random.default_rng(2), 11, 6, 6))
    small = final_state(a.state_dict())
    assert not {"prev_val", "prev_idx", "prev_rest"} & set(small)
    b = _tracker(prev_topk=2)
    b.load_state_dict(expand_final_state(small))
    assert b.complete and torch.equal(a.scores(), b.scores())


@pytest.mark.parametrize("world", [2, 3])
def test_layout_splits_and_merges_the_compressed_row(world):
    a = _tracker(prev_topk=2)
    feed(a, random_epochs(np.random.default_rng(3), 11, 6, 4, p_missing=0.2))
    sd = a.state_dict()
    layout = ShardLayout(11, world)
    shards = [layout.split_state(sd, r) for r in range(world)]
    for r, shard in enumerate(shards):
        assert shard["prev_idx"].shape == (layout.shard_size(r), 2) and "prev" not in shard
        local = tk.TDDSTracker(**(CFG | {"num_samples": layout.shard_size(r), "prev_topk": 2}))
        local.load_state_dict(shard)  # a shard is a loadable tracker state of its rows
    merged = layout.merge_states(shards)
    for key in ("prev_val", "prev_idx", "prev_rest", "seen", "ring", "score"):
        torch.testing.assert_close(merged[key], sd[key], rtol=0, atol=0, equal_nan=True, msg=key)
