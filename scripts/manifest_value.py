#!/usr/bin/env python3
"""Reads numbers from an etl stage manifest (manifest.json), for scripts/bench.sh.

    manifest_value.py FILE ENTRY FIELD    the FIELD of the entry named ENTRY
    manifest_value.py FILE '*' FIELD      FIELD summed over every entry
    manifest_value.py FILE --top N FIELD  the N entries with the largest FIELD: "name<TAB>value"

FIELD is a dotted path into an entry: rows, seconds, counts.inserted, ...
Exits 1 with a message when the entry or the field is absent.
"""
import json
import sys


def field(entry, path):
    value = entry
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            sys.exit(f"manifest_value.py: no field {path} in entry {entry.get('name')}")
        value = value[key]
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        sys.exit(f"manifest_value.py: {path} of {entry.get('name')} is not a number: {value!r}")
    return value


def main():
    if len(sys.argv) != 4 and not (len(sys.argv) == 5 and sys.argv[2] == "--top"):
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        entries = json.load(f)["entries"]
    if sys.argv[2] == "--top":
        n, path = int(sys.argv[3]), sys.argv[4]
        ranked = sorted(entries, key=lambda e: field(e, path), reverse=True)[:n]
        for e in ranked:
            print(f"{e['name']}\t{field(e, path)}")
        return
    name, path = sys.argv[2], sys.argv[3]
    if name == "*":
        print(sum(field(e, path) for e in entries))
        return
    found = [e for e in entries if e["name"] == name]
    if not found:
        sys.exit(f"manifest_value.py: no entry {name} in {sys.argv[1]}")
    print(field(found[0], path))


main()
