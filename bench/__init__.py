"""Benchmarks: scripts that print and write JSON under bench/results/. Run each as `python -m bench.<name>`."""
