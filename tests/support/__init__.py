"""Code the tests share, so that no test module needs to import another one.

helpers      backends and (device, backend) cases read from the backend table, feeding epochs,
             state snapshots, op state, the example and torchrun runners
dense        an independent dense float64 restatement of TDDS (the trackers' oracle)
conformance  the op conformance suite's cases, fixtures and comparisons (tests/ops/test_conformance_*.py)
paths        the repository root and the release fixtures
lightning    a quiet one-device CPU Lightning Trainer
cli          the score command driven in-process, and its fails-cleanly check
commands     the examples run as subprocesses
dumps        release-format dumps written from batches

Imported as `tests.support.<module>` (pyproject.toml puts the repository root on pytest's path).
"""
