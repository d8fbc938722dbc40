# diskcryptd — see README.md.
GO        ?= go
BIN       := bin/diskcryptd
PKGS      := ./...
FUZZTIME  ?= 10s
export CGO_ENABLED ?= 0

.PHONY: deb bench-boot
.PHONY: all build static test peers unit race purego fuzz vmtest bench bench-xts bench-tang bench-reencrypt bench-kms lint generate demo clean

all: build

build:
	$(GO) build -trimpath -o $(BIN) ./cmd/diskcryptd

# A static binary for the initramfs and the VM tests.
static:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o $(BIN) ./cmd/diskcryptd

# The one command CI and the README run: lint, unit and peer tests (race), the purego
# build, short fuzzing, and the VM scenarios. It first installs the Debian packages the
# tests talk to (contrib/ci/packages.txt), as root; otherwise it prints the command.
test: peers lint race purego fuzz vmtest

peers:
	./contrib/install-peers.sh

unit:
	$(GO) test $(PKGS)

race:
	CGO_ENABLED=1 $(GO) test -race -timeout 30m $(PKGS)

purego:
	$(GO) test -tags purego ./xts/... ./luks2/...

# Every FuzzXxx for FUZZTIME each; fails if a target did not actually fuzz.
fuzz:
	GO=$(GO) FUZZTIME=$(FUZZTIME) ./contrib/ci/fuzz.sh

vmtest: static
	$(GO) test -timeout 40m ./vmtests/ -vm -v

bench:
	$(GO) test -run '^$$' -bench . -benchtime 3x ./luks2/
	$(MAKE) bench-xts
	$(MAKE) bench-tang
	$(MAKE) bench-reencrypt
	$(MAKE) bench-kms

# 16 Tang-bound volumes: diskcryptd unlock --test DEV... against a clevis luks pass loop.
bench-tang:
	TANG_SPEED_REPORT=1 $(GO) test -v -count=1 -run '^TestTangUnlockSpeedReport$$' ./cmd/diskcryptd/

# KMIP unlock latency per volume and for 16 volumes at once against one pykmip-server
# (beside PyKMIP's own client), and 200 hosts unlocking at the same moment.
bench-kms:
	KMS_BENCH_REPORT=1 $(GO) test -v -count=1 -run '^(TestKMSBenchReport|TestThunderingHerd)$$' ./kms/

# Boot to "all volumes unlocked" under systemd, 8 disks: diskcryptd.service beside
# systemd-cryptsetup (crypttab tpm2-device=auto) in the same guest; daemon RSS.
bench-boot: static
	$(GO) test -count=1 -timeout 40m ./vmtests/ -vm -vm.bench -run '^TestSystemdBootNumbers$$' -v

bench-xts:
	XTS_SPEED_REPORT=1 $(GO) test -v -count=1 -run '^TestSpeedReport$$' ./xts/

# diskcryptd reencrypt against cryptsetup reencrypt on a 1 GiB /dev/shm image.
bench-reencrypt:
	REENCRYPT_SPEED_REPORT=1 $(GO) test -v -count=1 -timeout 20m -run '^TestSpeedReport$$' ./reencrypt/

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet $(PKGS)
	@echo "portable packages: GOOS=darwin,windows,freebsd go build ./luks2 ./blockdev/probe ./xts"
	@for os in darwin windows freebsd; do GOOS=$$os $(GO) build -o /dev/null ./luks2 ./blockdev/probe ./xts || exit 1; done

generate:
	cd xts && $(GO) generate .

demo: static
	./contrib/demo.sh

# The Debian package (offline, dpkg-deb only): bin/diskcryptd_VERSION_amd64.deb with the
# static binary, the unit, the example configs, the initramfs-tools and dracut
# integrations and diskcryptd(8). See contrib/debian/build-deb.sh.
DEB_VERSION ?= 0.1.0+git$(shell git log -1 --format=%cd.%h --date=format:%Y%m%d 2>/dev/null || echo 0)
DEB       := bin/diskcryptd_$(DEB_VERSION)_amd64.deb
deb:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w -X main.version=$(DEB_VERSION)' -o bin/deb/diskcryptd ./cmd/diskcryptd
	SOURCE_DATE_EPOCH=$$(git log -1 --format=%ct 2>/dev/null || echo 0) ./contrib/debian/build-deb.sh bin/deb/diskcryptd $(DEB_VERSION) $(DEB)

clean:
	rm -rf bin vmtests/.cache
