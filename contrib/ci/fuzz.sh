#!/usr/bin/env bash
# make fuzz: run every fuzz target (func FuzzXxx in a *_test.go outside _ directories)
# for FUZZTIME each, and fail if any target did not actually fuzz. go test exits 0 and
# prints "testing: warning: no fuzz tests to fuzz" when -fuzz matches nothing, so the
# exit status alone cannot tell a fuzzed target from a skipped one: the output must
# show the fuzzing engine's "fuzz: elapsed:" progress lines.
set -uo pipefail
cd "$(dirname "$0")/../.."
GO=${GO:-go}
FUZZTIME=${FUZZTIME:-10s}
FUZZMINIMIZE=${FUZZMINIMIZE:-1s}
MINEXECS=${MINEXECS:-100}
out=$(mktemp)
trap 'rm -f "$out"' EXIT

targets=$(grep -rHo --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*' . | grep -v '/_' | sed 's/:func /:/' | sort)
[ -n "$targets" ] || { echo "fuzz: no fuzz targets found" >&2; exit 1; }
failed=()
n=0
for hit in $targets; do
	pkg=$(dirname "${hit%%:*}")
	name=${hit##*:}
	n=$((n + 1))
	echo "fuzz $pkg $name ($FUZZTIME)"
	# -fuzzminimizetime: minimizing each new interesting input may otherwise take the
	# whole FUZZTIME for a target whose input is a few KiB and costs milliseconds (seen:
	# FuzzParseToken ran 5 inputs in 10 s, all spent minimizing).
	if ! "$GO" test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" -fuzzminimizetime "$FUZZMINIMIZE" "$pkg" >"$out" 2>&1; then
		cat "$out"
		failed+=("$pkg $name: go test failed")
		continue
	fi
	tail -n 3 "$out"
	if grep -q 'no fuzz tests to fuzz' "$out" || ! grep -q '^fuzz: elapsed:' "$out"; then
		failed+=("$pkg $name: did not fuzz")
		continue
	fi
	# A target that ran a handful of inputs did not fuzz either.
	execs=$(grep -o 'execs: [0-9]*' "$out" | tail -n 1 | tr -dc 0-9)
	if [ "${execs:-0}" -lt "$MINEXECS" ]; then
		failed+=("$pkg $name: only ${execs:-0} inputs in $FUZZTIME (fewer than $MINEXECS)")
	fi
done
if [ ${#failed[@]} -gt 0 ]; then
	printf 'fuzz: FAIL: %s\n' "${failed[@]}" >&2
	exit 1
fi
echo "fuzz: all $n targets fuzzed for $FUZZTIME each"
