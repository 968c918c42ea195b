#!/usr/bin/env bash
# Fuzzes every Go fuzz target in the repository for a bounded time each
# (default 10s; `scripts/fuzz.sh 1m` for longer). `go test` already runs
# each target's committed corpus (testdata/fuzz) as regression tests; this
# looks for new failures. A failing input is written to the package's
# testdata/fuzz/FuzzXxx/: commit it as a regression test once it is fixed.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${1:-10s}
n=0
for dir in $(git ls-files '*_test.go' ':!vendor' | xargs grep -l '^func Fuzz' | xargs -n1 dirname | sort -u); do
  for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go | cut -d' ' -f2 | sort -u); do
    echo "== fuzz ./$dir $target for $fuzztime" >&2
    if ! out=$(go test "./$dir" -run '^$' -fuzz "^$target\$" -fuzztime "$fuzztime" 2>&1); then
      echo "$out"
      # Go's fuzzing engine can stop a worker caught mid-input by its own
      # deadline and report "context deadline exceeded": that is no
      # finding (no failing input was written), so the target runs again.
      # A real finding writes its input under testdata/fuzz.
      if grep -q 'context deadline exceeded' <<<"$out" &&
        [ -z "$(git status --porcelain -- "$dir/testdata/fuzz")" ]; then
        echo "== fuzz: $target: the engine's deadline, no failing input: once more" >&2
        go test "./$dir" -run '^$' -fuzz "^$target\$" -fuzztime "$fuzztime"
      else
        exit 1
      fi
    else
      echo "$out" | tail -n 3
    fi
    n=$((n + 1))
  done
done
if [ "$n" = 0 ]; then
  echo "fuzz: no fuzz targets found" >&2
  exit 1
fi
echo "fuzz: $n targets fuzzed for $fuzztime each, nothing found" >&2
