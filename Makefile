# Two commands for a newcomer: `make demo` (the main job on the bundled sample) and
# `make test` (the test suite against throwaway PostgreSQL + MariaDB servers it starts).

CARGO ?= cargo
WITH_SERVICES = scripts/with-services.sh

.PHONY: demo test lint bench services-stop build

build:
	$(CARGO) build --release

demo: build
	$(WITH_SERVICES) scripts/demo.sh

# tests/mongo_live.rs runs against its own wire-protocol server, or a real MongoDB when
# ETL_TEST_MONGODB_URL is set; it prints which one.
test:
	$(WITH_SERVICES) $(CARGO) test --all-targets

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

services-stop:
	scripts/services.sh stop

bench:
	$(WITH_SERVICES) scripts/bench.sh
