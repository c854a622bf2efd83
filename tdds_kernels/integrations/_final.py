"""A complete tracker's checkpoint without the N x C recording state (for the trainer callbacks)."""

from __future__ import annotations

from ..core.config import TrackerConfig
from ..core.state import RECORDING as _RECORDING_STATE
from ..core.state import initial_values


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
    fresh = initial_values(TrackerConfig.from_dict(sd["config"]))
    out = {k: v for k, v in sd.items() if k != "final"}
    out.update({name: fresh[name] for name in _RECORDING_STATE if name in fresh})
    return out
