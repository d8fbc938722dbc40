#!/usr/bin/env bash
# Install the Debian packages the tests need (contrib/ci/packages.txt) that are not
# installed yet. As root it runs apt-get; otherwise it prints the exact command to run
# and fails, so `make test` never runs with a peer silently missing.
set -euo pipefail
cd "$(dirname "$0")/.."
list=contrib/ci/packages.txt
mapfile -t pkgs < <(sed 's/#.*//' "$list" | tr -s ' \t' '\n' | grep -v '^$')
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
	echo "peers: all ${#pkgs[@]} packages of $list installed"
	exit 0
fi
cmd="apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ${missing[*]}"
if [ "$(id -u)" != 0 ]; then
	echo "peers: missing ${missing[*]}" >&2
	echo "peers: run as root: sh -c '$cmd'" >&2
	exit 1
fi
echo "peers: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
