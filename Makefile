# One command each: `make demo` sets up and runs the main job, `make test` sets up and runs the tests.
.PHONY: setup demo test bench clean

setup:
	./scripts/setup.sh

demo: setup
	.venv/bin/gradhealth demo --out gallery

test: setup
	.venv/bin/python -m pytest -n 2 --dist loadfile

bench: setup
	.venv/bin/python -m benchmarks

clean:
	rm -rf .venv gallery build *.egg-info .pytest_cache
