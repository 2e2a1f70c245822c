"""Benchmarks: each prints its figures beside a baseline measured in the same run.

Each one is a module run from the repository's root, e.g.
``.venv/bin/python -m bench.call_setup``; bench/README.md lists them.
"""
