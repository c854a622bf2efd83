"""One contract (issue 20): both trackers implement tdds_kernels.core.protocol.Tracker, with the
same method signatures, and callers check it instead of probing types."""

import inspect

import pytest
import torch.distributed as dist

import tdds_kernels as tk
from tdds_kernels.core.protocol import MEMBERS, Tracker, check_tracker


@pytest.fixture
def world_of_one(tmp_path):
    if dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    yield dist.group.WORLD
    dist.destroy_process_group()


def _methods():
    return [name for name in MEMBERS if inspect.isfunction(vars(Tracker).get(name))]


def test_the_protocol_declares_the_public_api():
    assert {"update", "end_epoch", "scores", "save", "full_state_dict", "load_full_state_dict"} <= set(_methods())
    assert {"rank", "world_size", "process_group", "epoch", "complete", "stats", "on_out_of_range"} <= set(MEMBERS)


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_both_trackers_implement_it(request, sharded):
    if sharded:
        pg = request.getfixturevalue("world_of_one")
        t = tk.make_tracker(5, 3, process_group=pg, backend="reference")
        assert isinstance(t, tk.ShardedTDDSTracker) and (t.rank, t.world_size, t.process_group) == (0, 1, pg)
    else:
        t = tk.make_tracker(5, 3, backend="reference")
        assert (t.rank, t.world_size, t.process_group) == (0, 1, None)
    check_tracker(t)
    for name in _methods():  # the same parameters, in the same order, as the protocol declares
        want = list(inspect.signature(getattr(Tracker, name)).parameters)[1:]
        assert list(inspect.signature(getattr(t, name)).parameters) == want, name


@pytest.mark.parametrize("not_a_tracker", [None, 3, object()])
def test_callers_refuse_what_is_not_a_tracker(tmp_path, not_a_tracker):
    from tdds_kernels.retrain import write_release_files

    with pytest.raises(TypeError, match=r"^tracker: expected a TDDSTracker or ShardedTDDSTracker .*\(without rank, "):
        write_release_files(not_a_tracker, tmp_path)
    assert not any(tmp_path.iterdir())
