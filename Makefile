# diskcryptd — see README.md.
GO        ?= go
BIN       := bin/diskcryptd
PKGS      := ./...
FUZZTIME  ?= 10s
export CGO_ENABLED ?= 0

.PHONY: all build static test unit race purego fuzz vmtest bench bench-xts lint generate demo clean

all: build

build:
	$(GO) build -trimpath -o $(BIN) ./cmd/diskcryptd

# A static binary for the initramfs and the VM tests.
static:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o $(BIN) ./cmd/diskcryptd

# The one command CI and the README run: lint, unit and peer tests (race), the purego
# build, short fuzzing, and the VM scenarios.
test: lint race purego fuzz vmtest

unit:
	$(GO) test $(PKGS)

race:
	CGO_ENABLED=1 $(GO) test -race -timeout 30m $(PKGS)

purego:
	$(GO) test -tags purego ./xts/... ./luks2/...

fuzz:
	@for hit in $$(grep -rHo --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*' . | grep -v '/_' | sed 's/:func /:/'); do \
		pkg=$$(dirname $${hit%%:*}); name=$${hit##*:}; \
		echo "fuzz $$pkg $$name ($(FUZZTIME))"; \
		$(GO) test -run '^$$$$' -fuzz "^$$name$$$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	done

vmtest: static
	$(GO) test -timeout 40m ./vmtests/ -vm -v

bench:
	$(GO) test -run '^$$' -bench . -benchtime 3x ./luks2/
	$(MAKE) bench-xts

bench-xts:
	XTS_SPEED_REPORT=1 $(GO) test -v -count=1 -run '^TestSpeedReport$$' ./xts/

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet $(PKGS)

generate:
	cd xts && $(GO) generate .

demo: static
	./contrib/demo.sh

clean:
	rm -rf bin vmtests/.cache
