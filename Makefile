# klab: build, test, benchmark, lint. Tests and labs need root.
GO      ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
BIN     ?= bin/klab
PKGS    ?= ./...
export CGO_ENABLED ?= 0

.PHONY: all build deps lab test test-unit bench lint fmt clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN) ./cmd/klab

deps:
	./scripts/install-deps.sh

# The main job: the flannel cross-node lab, straight through.
lab: deps build
	./$(BIN) run flannel-crossnode --yes

# Every test, privileged ones included (run as root), with the race detector.
test: deps build
	CGO_ENABLED=1 $(GO) test -race -count=1 -timeout 40m $(PKGS)
	@test ! -x scripts/ci-labs.sh || ./scripts/ci-labs.sh

# Only the tests that need no root.
test-unit:
	$(GO) test -count=1 $(PKGS)

bench: build
	@test -x scripts/bench.sh && ./scripts/bench.sh

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); exit 1)
	$(GO) vet $(PKGS)

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf bin
