# The two commands of the README: `make demo` (set up + main job) and `make test` (set up + tests).
.PHONY: setup demo demo-quick test lint

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/epg demo

demo-quick: setup
	.venv/bin/epg demo --quick

test: setup
	.venv/bin/python -m pytest -q tests

lint: setup
	.venv/bin/ruff check src tests benchmarks
