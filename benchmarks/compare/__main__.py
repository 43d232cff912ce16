"""`python -m benchmarks.compare`: the comparison (benchmarks/compare/__init__.py says what it does)."""

from benchmarks.compare.main import main

main()
