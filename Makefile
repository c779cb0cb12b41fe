# Two entry points for a fresh clone: `make demo` (set up, then the main job) and `make test` (set up, then the tests).
.PHONY: setup demo test test-all bench

setup:
	bash scripts/setup.sh

demo: setup
	bash examples/demo.sh

test: setup
	.venv/bin/python -m pytest -q

test-all:
	EXTRAS=dev,ray bash scripts/setup.sh
	.venv/bin/python -m pytest -q -m "slow or not slow"

bench: setup
	.venv/bin/python benchmarks/vs_timm.py
