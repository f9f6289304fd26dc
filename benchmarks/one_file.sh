#!/usr/bin/env bash
# Runs a device-call script with its results in one archive: OUT=<dir> bash benchmarks/one_file.sh
# benchmarks/<name>.sh [its arguments] runs it with OUT=<dir>/<name>, then packs that folder into
# <dir>/<name>.tgz (and removes it), so that a machine that hands back only a few files of $OUT hands back
# all of them; the script's exit status is kept. `tar xzf <name>.tgz` unpacks <name>/.
set -u
OUT=${OUT:?set OUT to a folder for the results}
script=${1:?usage: OUT=<dir> bash benchmarks/one_file.sh benchmarks/<name>.sh [arguments]}
shift
name=$(basename "$script" .sh)
mkdir -p "$OUT/$name"
OUT="$OUT/$name" bash "$script" "$@"
status=$?
tar czf "$OUT/$name.tgz" -C "$OUT" "$name" && rm -rf "${OUT:?}/$name"
exit $status
