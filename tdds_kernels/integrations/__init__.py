"""Trainer integrations: ``lightning.TDDSCallback`` (needs pytorch-lightning, the ``lightning``
extra), ``hf.TDDSCallback`` / ``hf.TDDSTrainer`` for the Hugging Face Trainer and ``accelerate``
(``make_tracker``, ``TrackerState`` for ``save_state``) (both need the ``hf`` extra), and ``loop``
helpers for plain PyTorch and torchrun/DDP loops."""
