# The README's two commands.
.PHONY: setup demo test
setup:
	./scripts/setup.sh

demo: setup
	.venv/bin/sfedge demo

test: setup
	.venv/bin/python -m pytest -q
