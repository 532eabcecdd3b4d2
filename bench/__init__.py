"""Benchmarks: ``python -m bench NAME``. Each prints JSON lines and a final ``RESULT`` line.

Targets are checked as ratios against a baseline measured in the same run (these machines
are noisy), never as timed assertions in the test suite.
"""
