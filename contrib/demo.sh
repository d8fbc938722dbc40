#!/usr/bin/env bash
# make demo: on a Debian machine, as root (or with sudo), install what the demo needs,
# build diskcryptd statically, and boot a small QEMU server with a software TPM to show
# provisioning, an automatic unlock after reboot, the disk at rest, and a tampered boot
# that the TPM refuses. The transcript is the output of vmtests' TestDemo.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH

pkgs=(qemu-system-x86 swtpm busybox-static cryptsetup-bin)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
	echo "demo: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	$SUDO apt-get update -qq
	$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v go >/dev/null || { echo "demo: Go is not installed (see README)" >&2; exit 1; }

# bin/diskcryptd comes from `make static` (the demo target depends on it).
[ -x bin/diskcryptd ] || CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o bin/diskcryptd ./cmd/diskcryptd
CGO_ENABLED=0 go test -c -o bin/vmtests.test ./vmtests
echo "demo: first run downloads the Debian cloud kernel and busybox into vmtests/.cache"
cd vmtests
DISKCRYPTD_BIN=$PWD/../bin/diskcryptd exec ../bin/vmtests.test -test.run '^TestDemo$' -test.timeout 15m -vm -vm.demo
