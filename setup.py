"""Build script: the package itself is pure Python (pyproject.toml); the C++/CUDA extension
tdds_kernels._C is added here (see csrc/). Install without build isolation so the extension
builds against the torch you run: pip install -e . --no-build-isolation"""
from setuptools import setup

setup()
