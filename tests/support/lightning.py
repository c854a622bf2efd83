"""A quiet one-device CPU Lightning Trainer for the integration tests."""

from __future__ import annotations


def cpu_trainer(pl, epochs: int, root, callbacks, **kw):
    """`pl`: the pytorch_lightning module the test imported (or skipped without)."""
    return pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        callbacks=list(callbacks),
        **kw,
    )
