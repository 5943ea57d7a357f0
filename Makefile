# klab: build, test, benchmark, lint. Tests and labs need root.
GO      ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
BIN     ?= bin/klab
# klab-etcd, the control plane's etcd server, is built beside klab: klab
# looks for it there first (docs/control-plane.md).
ETCDBIN ?= $(dir $(BIN))klab-etcd
PKGS    ?= ./...
export CGO_ENABLED ?= 0

.PHONY: all build deps lab test test-unit bench lint fmt clean soak fuzz

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN) ./cmd/klab
	CGO_ENABLED=0 $(GO) build -trimpath -o $(ETCDBIN) ./cmd/klab-etcd

deps:
	./scripts/install-deps.sh

# The main job: the flannel cross-node lab, straight through.
lab: deps build
	./$(BIN) run flannel-crossnode --yes

# Every test, privileged ones included (run as root), with the race detector,
# then every lab. The host's network namespace is snapshotted before and
# compared after the whole run (each privileged package also checks itself):
# klab must never change it.
test: deps build
	@st=0; snap=$$(mktemp /tmp/klab-hostsnap.XXXXXX); \
	if [ "$$(id -u)" = 0 ]; then $(GO) run ./internal/hostsnap save $$snap || st=1; fi; \
	CGO_ENABLED=1 $(GO) test -race -count=1 -timeout 40m $(PKGS) || st=1; \
	if [ -x scripts/ci-labs.sh ]; then ./scripts/ci-labs.sh || st=1; fi; \
	if [ "$$(id -u)" = 0 ]; then $(GO) run ./internal/hostsnap compare $$snap || st=1; fi; \
	rm -f $$snap; exit $$st

# Build and destroy the flannel-crossnode network 200 times through the CLI
# and compare namespace/link/fd/mount/process/memory counts (root; minutes).
SOAK ?= 200
soak: build
	KLAB_SOAK=$(SOAK) $(GO) test -count=1 -timeout 60m -run '^TestSoak$$' -v ./cmd/klab

# Run every fuzzer for FUZZTIME each (the seed corpora run in 'make test').
FUZZTIME ?= 30s
fuzz:
	@for t in labs:FuzzParse trace:FuzzParseFilter trace:FuzzDecode pkg/ipam:FuzzParseCIDR \
		pkg/netns:FuzzNames pkg/nat:FuzzValidate pkg/cluster:FuzzParseLabels pkg/cluster:FuzzPlanNode \
		cmd/klab:FuzzValidateKlabArgs; do \
		pkg=$${t%%:*}; fn=$${t##*:}; \
		echo "== $$pkg $$fn"; $(GO) test -run '^$$' -fuzz "^$$fn\$$" -fuzztime $(FUZZTIME) ./$$pkg || exit 1; \
	done

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
