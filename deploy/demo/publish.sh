#!/usr/bin/env bash
# Publishes every deploy/demo/events/*.json with kcat, in file-name order, to
# the topic of its family (order.* -> commerce.orders, contract.* ->
# commerce.contracts, quote.* -> commerce.quotes), keyed by transaction.id.
#
# Each run gives every event a fresh event_id: tanto drops an event id it has
# seen before (producers retry), so reusing the files' ids would send no mail
# on a second `make demo`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

brokers=${TANTO_KAFKA_BROKERS:-127.0.0.1:9092}
export TOPIC_ORDER=${TANTO_TOPIC_ORDERS:-commerce.orders}
export TOPIC_CONTRACT=${TANTO_TOPIC_CONTRACTS:-commerce.contracts}
export TOPIC_QUOTE=${TANTO_TOPIC_QUOTES:-commerce.quotes}

# One line per event: topic, key and the event as one line of JSON, separated
# by tabs (json.dumps escapes any tab inside a string).
python3 - deploy/demo/events/*.json <<'PY' |
import json, os, sys, uuid

for path in sys.argv[1:]:
    with open(path, encoding="utf-8") as f:
        event = json.load(f)
    family = event["event_type"].split(".", 1)[0]
    topic = os.environ["TOPIC_" + family.upper()]
    event["event_id"] = str(uuid.uuid4())
    line = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    print(f"{topic}\t{event['transaction']['id']}\t{line}")
    print(f"{os.path.basename(path)}: {event['event_type']} -> {topic}", file=sys.stderr)
PY
  while IFS=$'\t' read -r topic key json; do
    printf '%s\t%s\n' "$key" "$json" |
      kcat -P -b "$brokers" -t "$topic" -K $'\t' -X message.timeout.ms=15000
  done
