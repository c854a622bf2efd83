"""The op schemas: one text for every backend, written once, with the mutated arguments marked."""

import itertools
import re
from pathlib import Path

import pytest
import torch

from tdds_kernels.ops import registry, schema

from tests.support.helpers import CPU_BACKENDS, backend_cases


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


@pytest.mark.parametrize("spec", registry.BACKENDS, ids=lambda s: s.name)
def test_the_backend_table_matches_the_registered_kernels(spec):
    """ops/registry.py BACKENDS declares what each backend implements: a declared op that loads
    has a kernel for each declared device, and no kernel exists that the table leaves out."""
    for device, op in itertools.product(spec.devices, registry.OPS):
        reason = registry.op_reason(spec.name, op, device)
        qualname = op + spec.suffix
        if op not in spec.ops:
            assert reason is not None
            packet = getattr(torch.ops.tdds, qualname, None)
            assert packet is None or not packet.default.has_kernel_for_dispatch_key(device.upper()), qualname
        elif device == "cpu" and spec.name in CPU_BACKENDS:
            assert reason is None, reason


def test_only_the_schema_module_registers_kernels():
    """ops/schema.py implement() is the one way in: no module reaches into its library."""
    package = Path(registry.__file__).parents[1]
    users = [
        str(p.relative_to(package))
        for p in package.rglob("*.py")
        if p.name != "schema.py" and re.search(r"\b_lib\b|torch\.library\.(Library|impl)\(", p.read_text())
    ]
    assert users == []


def test_auto_order_comes_from_the_table():
    """docs/design.md §5: auto takes cpu then reference on CPU, triton then cuda then reference
    on CUDA; each backend it tries runs on that device type."""
    assert registry.AUTO_ORDER == {"cpu": ("cpu", "reference"), "cuda": ("triton", "cuda", "reference")}
    for spec in registry.BACKENDS:
        assert set(spec.auto) <= set(spec.devices), spec.name
