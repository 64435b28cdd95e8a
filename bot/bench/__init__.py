"""`bot bench`: the hot path measured against a hand-written baseline (docs/benchmarks.md)."""
