# Two commands for a newcomer: `make demo` (the main job on the bundled sample) and
# `make test` (the test suite against throwaway PostgreSQL + MariaDB servers it starts).

CARGO ?= cargo
WITH_SERVICES = scripts/with-services.sh

.PHONY: demo test lint bench services-stop build

build:
	$(CARGO) build --release

demo: build
	$(WITH_SERVICES) scripts/demo.sh

test:
	$(WITH_SERVICES) $(CARGO) test --all-targets
	@if [ -n "$$ETL_TEST_MONGODB_URL" ]; then $(CARGO) test --test mongo_live -- --ignored; \
	else echo "live MongoDB tests not run: ETL_TEST_MONGODB_URL is not set"; fi

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

services-stop:
	scripts/services.sh stop

bench:
	$(WITH_SERVICES) scripts/bench.sh
