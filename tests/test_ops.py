"""The op schemas: one text for every backend, mutation marked, opcheck-clean."""
import pytest
import torch

import tdds_kernels  # noqa: F401
from tdds_kernels.ops import registry as backends
from tdds_kernels.ops import schema as _ops
from helpers import CPU_BACKENDS


def _state(n=6, c=5, w=3, storage=torch.float32):
    return (torch.zeros(n, c, dtype=storage), torch.full((n,), -1, dtype=torch.int32),
            torch.full((n, w - 1), float("nan")), torch.zeros(n), torch.zeros(_ops.NUM_SLOTS, dtype=torch.int64))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_schemas_identical_across_backends(backend):
    b = backends.resolve(backend, torch.device("cpu"))
    assert _ops.schema_of(b.update.default) == _ops.UPDATE_SCHEMA
    assert _ops.schema_of(b.epoch_step.default) == _ops.EPOCH_STEP_SCHEMA


def test_mutated_arguments_are_marked():
    args = torch.ops.tdds.update.default._schema.arguments
    mutated = [a.name for a in args if a.alias_info is not None and a.alias_info.is_write]
    assert mutated == ["prev", "seen", "ring", "counters"]
    args = torch.ops.tdds.epoch_step.default._schema.arguments
    assert [a.name for a in args if a.alias_info is not None and a.alias_info.is_write] == \
        ["ring", "score", "counters"]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("storage", [torch.float32, torch.bfloat16])
def test_opcheck(backend, storage):
    b = backends.resolve(backend, torch.device("cpu"))
    prev, seen, ring, score, counters = _state(storage=storage)
    logits = torch.randn(4, 5)
    index = torch.tensor([0, 2, 2, 5])
    torch.library.opcheck(b.update.default, (logits, index, prev, seen, ring, counters))
    torch.library.opcheck(b.epoch_step.default, (seen, ring, score, counters, 0.9))
    counters[_ops.EPOCH] = 1
    torch.library.opcheck(b.update.default, (logits, index, prev, seen, ring, counters))
    counters[_ops.EPOCH] = 2
    torch.library.opcheck(b.epoch_step.default, (seen, ring, score, counters, 0.9))


def test_reference_epoch_step_window_value():
    # W = 5: ring of 4 slots, the first window closes at epoch 4.
    seen = torch.tensor([3], dtype=torch.int32)
    ring = torch.tensor([[1.0, float("nan"), 3.0, 5.0]])
    score = torch.zeros(1)
    counters = torch.tensor([0, 0, 0, 0, 3])
    torch.ops.tdds.epoch_step(seen, ring, score, counters, 0.5)  # recorded at 3; no window yet
    assert score.item() == 0 and counters.tolist() == [0, 0, 0, 0, 4] and ring[0, 2] == 3.0
    # Missing at epoch 4: slot 3 becomes NaN; the window over the defined [1, 3] has mean 2 and
    # R = sqrt(1 + 1); S = β·R from S = 0.
    torch.ops.tdds.epoch_step(seen, ring, score, counters, 0.5)
    assert torch.isnan(ring[0, 3]) and counters.tolist() == [0, 1, 0, 0, 5]
    torch.testing.assert_close(score, torch.tensor([0.5 * 2.0 ** 0.5]))
