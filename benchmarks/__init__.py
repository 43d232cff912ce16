"""Benchmarks: scripts that print numbers, run from the repository root as `python -m benchmarks.<name>`.

A package of the repository, not of the wheel (pyproject.toml ships only msam_jax), so
that its modules import each other by name and measure this checkout's msam_jax.
"""
