"""Trainer integrations: ``lightning.TDDSCallback`` (needs pytorch-lightning, the ``lightning``
extra), ``hf.TDDSCallback`` / ``hf.TDDSTrainer`` for the Hugging Face Trainer and ``accelerate``
(``make_tracker``, ``TrackerState`` for ``save_state``) (both need the ``hf`` extra), and ``loop``
helpers for plain PyTorch and torchrun/DDP loops."""


def missing_extra(module: str, package: str, extra: str) -> ImportError:
    """The one-line error for an integration whose trainer package is not installed."""
    return ImportError(
        f"{module} needs {package}, which is not installed: install the {extra!r} extra "
        f'(pip install --no-build-isolation ".[{extra}]" in the clone, or pip install {package})'
    )
