#!/usr/bin/env bash
# `make demo`: the SmartDiet schema into a fresh database of the test PostgreSQL.
# Extends as stages land: see README.md for what works.
set -euo pipefail
cd "$(dirname "$0")/.."
etl=target/release/etl
db=etl_demo
psql "$ETL_TEST_POSTGRES_URL" -X -q -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
url="${ETL_TEST_POSTGRES_URL%/*}/$db"
echo "== etl schema | psql  ($url)"
"$etl" schema | psql "$url" -X -q -v ON_ERROR_STOP=1
psql "$url" -X -c '\dt'
