#!/usr/bin/env bash
# Runs a command with the test services' settings in the environment.
# When ETL_TEST_POSTGRES_URL is already set (CI started the services), runs it as is;
# otherwise starts the throwaway servers (idempotent) under ETL_SERVICES_DIR first.
set -euo pipefail
if [[ -z ${ETL_TEST_POSTGRES_URL:-} ]]; then
    dir=${ETL_SERVICES_DIR:-/tmp/etl-services}
    "$(dirname "$0")/services.sh" start "$dir"
    # shellcheck source=/dev/null
    source "$dir/env.sh"
fi
exec "$@"
