"""Checks of a PruningSampler state dict before anything is restored (all or nothing)."""

from __future__ import annotations

import torch

from .order import epoch_size, rank_length

FORMAT = "tdds-pruning-sampler-1"
KEYS = (
    "format",
    "num_samples",
    "num_replicas",
    "prune_fraction",
    "strategy",
    "epoch_length",
    "shuffle",
    "drop_last",
    "strategy_options",
    "seed",
    "epoch",
    "position",
    "finished",
    "kept",
    "scores",
)


SETTINGS = ("num_samples", "prune_fraction", "strategy", "epoch_length", "shuffle", "drop_last", "strategy_options")


def _bad(key: str, expected: str, got) -> ValueError:
    return ValueError(f"state_dict['{key}']: expected {expected}, got {got!r}")


def _int(sd: dict, key: str, low: int = 0) -> int:
    v = sd[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise _bad(key, f"an int >= {low}", v)
    return v


def check_state(sampler, sd) -> tuple:
    """(epoch, position, finished, seed, kept, scores) of a state dict that fits `sampler`, or a
    one-line ValueError naming the entry."""
    if not isinstance(sd, dict):
        raise TypeError(f"state_dict: expected a dict from PruningSampler.state_dict(), got {type(sd).__name__}")
    missing = [k for k in KEYS if k not in sd]
    if missing:
        raise ValueError(f"state_dict: expected a PruningSampler state, missing {', '.join(missing)}")
    if sd["format"] != FORMAT:
        raise _bad("format", repr(FORMAT), sd["format"])
    # Settings that decide which batches a run takes: a resumed run must use the same ones.
    for key in SETTINGS:
        if sd[key] != getattr(sampler, key):
            raise _bad(key, f"this sampler's {getattr(sampler, key)!r}", sd[key])
    epoch, position, replicas = _int(sd, "epoch"), _int(sd, "position"), _int(sd, "num_replicas", 1)
    seed, finished = sd["seed"], sd["finished"]
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise _bad("seed", "an int", seed)
    if not isinstance(finished, bool):
        raise _bad("finished", "a bool", finished)
    pruned = epoch >= sampler.switch_epoch
    length = rank_length(
        epoch_size(sampler.num_samples, sampler.num_kept, pruned, sampler.epoch_length), replicas, sampler.drop_last
    )
    if position > length:
        raise _bad("position", f"at most {length} (the epoch's samples per rank)", position)
    if replicas != sampler.num_replicas and 0 < position and not finished:
        raise ValueError(
            f"state_dict['num_replicas']: a mid-epoch state of {replicas} ranks resumes on {replicas} ranks, "
            f"got {sampler.num_replicas}; resume from an epoch-end state to change the world size"
        )
    kept, scores = sd["kept"], sd["scores"]
    if (kept is None) != (scores is None):
        raise _bad("kept", "a kept set exactly when there are scores", kept)
    if kept is None and pruned and (position > 0 or finished):
        raise _bad("kept", f"the kept set (epoch {epoch} is after the switch)", None)
    if kept is not None:
        n, k = sampler.num_samples, sampler.num_kept
        if not isinstance(kept, torch.Tensor) or kept.dtype != torch.int64 or kept.shape != (k,):
            raise _bad("kept", f"an int64 tensor of shape ({k},)", kept)
        if not isinstance(scores, torch.Tensor) or scores.dtype != torch.float32 or scores.shape != (n,):
            raise _bad("scores", f"a float32 tensor of shape ({n},)", scores)
        kept, scores = kept.to("cpu", copy=True), scores.to("cpu", copy=True)
        if k and (int(kept.min()) < 0 or int(kept.max()) >= n or not bool((kept[1:] > kept[:-1]).all())):
            raise _bad("kept", f"ascending distinct indices in [0, {n})", kept)
    return epoch, position, finished, seed, kept, scores
