# The one task runner for developers and CI (.ci/run calls `make test`).
# The local stack is described in docs/local-stack.md.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
BIN_DIR := $(TARGET_DIR)/debug
DAEMONS := order-notifier contract-notifier quote-notifier mailer

.PHONY: help build up down status demo test lint logs bench

help:
	@echo "make up      install what is missing, start Postgres, Kafka and MailDev, build, migrate,"
	@echo "             create the topics and start the four daemons"
	@echo "make demo    make up, load deploy/demo/routing.yaml and publish the demo events"
	@echo "make down    stop the daemons and the stack"
	@echo "make status  one line per service"
	@echo "make logs    follow the daemons' logs"
	@echo "make test    start the stack (not the daemons), lint, and run every test"
	@echo "make lint    rustfmt and clippy"
	@echo "make build   build the binaries into $(BIN_DIR)"
	@echo "make bench   measure tanto against its baselines; writes docs/benchmarks.md"

build:
	cargo build --workspace --bins

up:
	deploy/local/install.sh
	deploy/local/stack.sh up
	$(MAKE) --no-print-directory build
	$(BIN_DIR)/tanto migrate
	$(BIN_DIR)/tanto topics ensure
	TANTO_BIN_DIR="$${TANTO_BIN_DIR:-$(BIN_DIR)}" deploy/local/services.sh up

down:
	deploy/local/services.sh down
	deploy/local/stack.sh down

status:
	@deploy/local/stack.sh status || true
	@deploy/local/services.sh status || true

demo: up
	$(BIN_DIR)/tanto apply -f deploy/demo/routing.yaml
	deploy/demo/publish.sh
	@echo
	@echo "Demo events published. Read the mails at http://127.0.0.1:1080"

# The tests start the binaries themselves, with their own databases, topics
# and consumer groups: they need the stack, not the daemons of `make up`.
test:
	deploy/local/install.sh
	deploy/local/stack.sh up
	cargo build --workspace --bins --tests
	$(MAKE) --no-print-directory lint
	cargo test --workspace

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

logs:
	tail -n 20 -F $(DAEMONS:%=.local/log/%.log)

# Not part of `make test`: it takes several minutes and measures, it does
# not assert. Needs Postfix's smtp-sink and smtp-source for the mailer.
bench:
	deploy/local/install.sh --bench
	deploy/local/stack.sh up
	cargo build --release --workspace --bins
	$(TARGET_DIR)/release/tanto-bench --out docs/benchmarks.md
