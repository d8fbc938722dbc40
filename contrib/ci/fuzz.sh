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
	if ! "$GO" test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" "$pkg" >"$out" 2>&1; then
		cat "$out"
		failed+=("$pkg $name: go test failed")
		continue
	fi
	tail -n 3 "$out"
	if grep -q 'no fuzz tests to fuzz' "$out" || ! grep -q '^fuzz: elapsed:' "$out"; then
		failed+=("$pkg $name: did not fuzz")
	fi
done
if [ ${#failed[@]} -gt 0 ]; then
	printf 'fuzz: FAIL: %s\n' "${failed[@]}" >&2
	exit 1
fi
echo "fuzz: all $n targets fuzzed for $FUZZTIME each"
