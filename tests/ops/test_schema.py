"""The op schemas: one text for every backend, written once, with the mutated arguments marked."""

import pytest
import torch

from tdds_kernels.ops import registry, schema

from helpers import backend_cases


@pytest.mark.parametrize("pair", backend_cases())
def test_schemas_identical_across_backends(pair):
    device, backend = pair
    b = registry.resolve(backend, torch.device(device))
    assert schema.schema_of(b.update.default) == schema.UPDATE_SCHEMA
    assert schema.schema_of(b.epoch_step.default) == schema.EPOCH_STEP_SCHEMA


def test_mutated_arguments_are_marked():
    args = torch.ops.tdds.update.default._schema.arguments
    assert [a.name for a in args if a.alias_info is not None and a.alias_info.is_write] == [
        "prev",
        "seen",
        "ring",
        "counters",
        "row_stats",
    ]
    args = torch.ops.tdds.epoch_step.default._schema.arguments
    assert [a.name for a in args if a.alias_info is not None and a.alias_info.is_write] == ["ring", "score", "counters"]


@pytest.mark.parametrize("pair", backend_cases())
def test_topk_schema_identical_across_backends(pair):
    device, backend = pair
    if registry.unavailable_reason(backend, torch.device(device), topk=True) is not None:
        pytest.skip(f"{backend} has no compressed-row kernel on {device}")
    b = registry.resolve(backend, torch.device(device), topk=True)
    assert schema.schema_of(b.update.default) == schema.UPDATE_TOPK_SCHEMA
    assert schema.schema_of(b.epoch_step.default) == schema.EPOCH_STEP_SCHEMA
    args = b.update.default._schema.arguments
    assert [a.name for a in args if a.alias_info is not None and a.alias_info.is_write] == [
        "prev_val",
        "prev_idx",
        "prev_rest",
        "seen",
        "ring",
        "counters",
        "row_stats",
    ]
