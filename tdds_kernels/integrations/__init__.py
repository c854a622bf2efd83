"""Trainer integrations: ``lightning.TDDSCallback`` (needs pytorch-lightning, the ``lightning``
extra) and ``loop`` helpers for plain PyTorch and torchrun/DDP loops."""
