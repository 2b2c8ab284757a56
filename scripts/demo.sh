#!/usr/bin/env bash
# `make demo`: the whole job on the bundled sample.
#   1. a SmartDiet-like mongodump (examples/gen_dump.rs, 200 users) and a few Matomo tables in
#      the test MariaDB (tests/fixtures/matomo/*.sql),
#   2. `etl run` (extract -> transform -> load) into a fresh database of the test PostgreSQL,
#   3. a change to the dump and a second, incremental `etl run`,
#   4. `etl status` and a look at the target.
set -euo pipefail
cd "$(dirname "$0")/.."
etl=$PWD/target/release/etl
work=$(mktemp -d /tmp/etl-demo.XXXXXX)
db=etl_demo

echo "== sample data in $work"
cargo run -q --release --example gen_dump -- "$work/dump" 200 >/dev/null
mariadb -h "$MATOMO_HOST" -P "$MATOMO_PORT" -u "$MATOMO_USER" -p"$MATOMO_PASSWORD" -e "DROP DATABASE IF EXISTS etl_demo; CREATE DATABASE etl_demo"
cat tests/fixtures/matomo/schema.sql tests/fixtures/matomo/rows.sql |
    mariadb -h "$MATOMO_HOST" -P "$MATOMO_PORT" -u "$MATOMO_USER" -p"$MATOMO_PASSWORD" etl_demo
psql "$ETL_TEST_POSTGRES_URL" -X -q -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"

export DATABASE_URL="${ETL_TEST_POSTGRES_URL%/*}/$db" MATOMO_DATABASE=etl_demo
cp -r config "$work/config"
repo=$PWD
cd "$work"

echo; echo "== etl run (first load)"
"$etl" run --source all --dump "$work/dump/smartdiet"

echo; echo "== 5 users change (a target removed, events emptied); etl run again (incremental)"
(cd "$repo" && cargo run -q --release --example gen_dump -- "$work/dump" 200 5 >/dev/null)
"$etl" run --source all --dump "$work/dump/smartdiet"

echo; echo "== etl status"
"$etl" status

echo; echo "== the target"
psql "$DATABASE_URL" -X -c "SELECT (SELECT count(*) FROM users) AS users, (SELECT count(*) FROM users_targets) AS users_targets, (SELECT count(*) FROM users_logbook) AS users_logbook, (SELECT count(*) FROM matomo_log_link_visit_action) AS matomo_actions"
echo "staged runs and rejects are under $work/staging"
