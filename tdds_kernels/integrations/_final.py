"""A complete tracker's checkpoint without the N x C recording state (for the trainer callbacks)."""

from __future__ import annotations

import torch

from ..core.state import RECORDING as _RECORDING_STATE


def final_state(sd: dict) -> dict:
    """A complete tracker's state dict without the recording state (a few bytes per sample)."""
    if not sd.get("complete"):
        raise ValueError("state_dict: only a complete tracker's state can drop its recording state")
    out = {k: v for k, v in sd.items() if k not in _RECORDING_STATE}
    out["final"] = True
    return out


def expand_final_state(sd: dict) -> dict:
    """A loadable state dict from final_state(): the recording state refilled with its initial
    values (unused by a complete tracker) as broadcast views, so loading allocates no N x C
    temporary; any other state dict is returned as it is."""
    if not isinstance(sd, dict) or not sd.get("final"):
        return sd
    cfg = sd["config"]
    n, c, w = cfg["num_samples"], cfg["num_classes"], cfg["window"]
    out = {k: v for k, v in sd.items() if k != "final"}
    out["prev"] = torch.zeros((), dtype=getattr(torch, cfg["storage_dtype"])).expand(n, c)
    out["ring"] = torch.tensor(float("nan")).expand(n, w - 1)
    out["seen"] = torch.tensor(-1, dtype=torch.int32).expand(n)
    return out
