# The two commands a fresh machine needs: `make run` and `make test`.
# `deps` installs the build tools the dependencies need (FACTS.md): cmake for
# Pingora's zlib-ng, protoc for Lance; strace for the test that pins the
# order of a commit's syncs. It does nothing when they are present.

SHELL := /bin/bash
CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
BIN := target/debug

.PHONY: deps test-deps build run run-worker test bench clean-data

# The servers the tests start on loopback: etcd (Debian's etcd-server) for
# the shared catalog, and the S3-compatible server for object storage:
# moto in server mode (PyPI), in a private virtualenv under .tools/.
MOTO := .tools/moto/bin/moto_server
MOTO_VERSION := 5.2.1

deps:
	@missing=""; \
	command -v cmake >/dev/null 2>&1 || missing="$$missing cmake"; \
	command -v protoc >/dev/null 2>&1 || missing="$$missing protobuf-compiler"; \
	command -v curl >/dev/null 2>&1 || missing="$$missing curl"; \
	command -v strace >/dev/null 2>&1 || missing="$$missing strace"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

test-deps: deps
	@command -v etcd >/dev/null 2>&1 || { \
		echo "installing: etcd-server"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq etcd-server; }
	@if [ ! -x $(MOTO) ]; then \
		python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || { \
			echo "installing: python3 python3-venv"; \
			$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq python3 python3-venv; }; \
		echo "installing: moto[server]==$(MOTO_VERSION) into .tools/moto"; \
		rm -rf .tools/moto && python3 -m venv .tools/moto && \
		.tools/moto/bin/pip install -q --disable-pip-version-check 'moto[server]==$(MOTO_VERSION)'; \
	fi

build: deps
	$(CARGO) build --workspace --bins

run: build
	scripts/run-sample.sh

run-worker: build
	scripts/run-worker.sh

# The end-to-end tests drive the real binaries under target/debug, so build them first.
# Incremental compilation is off for the test build: CI builds once, and its
# cache is the bulk of target/ (disk) and a source of stale-state compiler panics.
# `--tests` runs every unit and integration test; the crates have no doctests,
# so rustdoc (which loads all of Lance's metadata once more) is not run.
test: test-deps
	CARGO_INCREMENTAL=0 $(CARGO) build --workspace --bins
	set -o pipefail; CARGO_INCREMENTAL=0 $(CARGO) test --workspace --no-fail-fast --tests 2>&1 | tee target/test.log
	@awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($$i ~ /^passed/) p += $$(i-1); if ($$i ~ /^failed/) f += $$(i-1) } } \
	     END { printf "tests: %d passed, %d failed\n", p, f }' target/test.log

# Release builds only (a debug Pingora is ~10x slower). Results: docs/benchmarks.md.
# One plain build: the gateway never links Lance, so nothing is built twice.
bench: test-deps
	$(CARGO) build --release --workspace --bins
	$(CARGO) bench -p omnigraph-benches --bench gateway_auth
	$(CARGO) bench -p omnigraph-benches --bench gateway_latency
	$(CARGO) bench -p omnigraph-benches --bench graph_create
	$(CARGO) bench -p omnigraph-benches --bench worker_load
	$(CARGO) bench -p omnigraph-benches --bench fairness
	$(CARGO) bench -p omnigraph-benches --bench ingest_export
	$(CARGO) bench -p omnigraph-benches --bench maintenance
	$(CARGO) bench -p omnigraph-benches --bench lazy_graphs
	$(CARGO) bench -p omnigraph-benches --bench object_store
	$(CARGO) bench -p omnigraph-benches --bench shared_catalog
	$(CARGO) bench -p omnigraph-benches --bench soak

clean-data:
	rm -rf data .omnigraph
