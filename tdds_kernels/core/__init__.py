"""The tracker core: config, per-sample state, checkpoints, the tracker, baselines, selection.

Builds on tdds_kernels.ops (the op contract) and nothing above it.
"""
