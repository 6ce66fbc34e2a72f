"""One-off probes: each answers one question (benchmarks/NOTES.md has the index)."""
