#!/usr/bin/env python
"""Thin entry point: ``python run_benchmark.py [options]`` is ``medad run [options]``."""

from medad.cli import run_benchmark_main

if __name__ == "__main__":
    raise SystemExit(run_benchmark_main())
