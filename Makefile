# Two commands for a newcomer: `make demo` (the main job on a generated sample) and
# `make test` (the test suite against throwaway PostgreSQL + MariaDB servers it starts).
# Both first install what is missing (scripts/install-deps.sh; as root, or it says what to
# run with sudo).

CARGO ?= cargo
WITH_SERVICES = scripts/with-services.sh

.PHONY: demo test lint bench services-stop build deps

build:
	$(CARGO) build --release --bin etl

demo:
	scripts/install-deps.sh demo
	$(CARGO) build --release --bin etl
	$(WITH_SERVICES) scripts/demo.sh

# tests/mongo_live.rs runs against its own wire-protocol server, or a real MongoDB when
# ETL_TEST_MONGODB_URL is set; it prints which one.
test:
	scripts/install-deps.sh test
	$(WITH_SERVICES) $(CARGO) test --all-targets

deps:
	scripts/install-deps.sh ci

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

services-stop:
	scripts/services.sh stop

bench:
	$(WITH_SERVICES) scripts/bench.sh
