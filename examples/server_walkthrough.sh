#!/usr/bin/env bash
# The DataCat server over plain HTTP: the reference's curl walkthrough, then a batch (sent twice:
# the retry is answered as duplicates), lists, filters and paging.
#
#   make run                                  # in another terminal: datacat server on :9090
#   examples/server_walkthrough.sh            # or DATACAT_URL=http://host:port examples/...
#
# Needs bash and curl only (jq, if installed, pretty-prints; it is not required).
set -euo pipefail

URL="${DATACAT_URL:-http://localhost:9090}"
JSON=(-H "Content-Type: application/json")

say() { printf '\n== %s\n' "$*"; }
# POST a JSON body (or none) and print the answer; fails on an HTTP error status.
post() { curl -sS --fail-with-body -X POST "${JSON[@]}" "$URL$1" ${2:+-d "$2"}; echo; }
get() { curl -sS --fail-with-body "$URL$1"; echo; }
# The first "id" of a JSON object (the session's own id comes first in the server's answers).
first_id() { grep -o '"id": *"[^"]*"' | head -n 1 | sed 's/.*"\([^"]*\)"$/\1/'; }
new_uuid() { cat /proc/sys/kernel/random/uuid 2>/dev/null || uuidgen | tr 'A-Z' 'a-z'; }
pretty() { if command -v jq >/dev/null; then jq .; else cat; fi; }

say "Create session"
SESSION_ID=$(post /api/sessions '{"product":"MyApp","version":"1.0.0"}' | first_id)
echo "SESSION_ID=$SESSION_ID"

say "Update state, log an event and a metric, end the session"
post "/api/sessions/$SESSION_ID/state" '{"status":"running"}'
post "/api/sessions/$SESSION_ID/events" '{"name":"startup","data":{"config":"prod"}}'
post "/api/sessions/$SESSION_ID/metrics" '{"name":"memory_mb","value":512.5}'
post "/api/sessions/$SESSION_ID/end"

say "Read it back"
get "/api/sessions/$SESSION_ID" | pretty

say "A batch: a second session, its state, events, a counter, sent twice (the retry duplicates)"
SECOND=$(new_uuid)
echo "SECOND=$SECOND"
OPS=""
for op in \
  "create|{\"product\":\"MyApp\",\"version\":\"1.0.1\",\"machine_id\":\"build-7\"}" \
  "state|{\"status\":\"running\",\"player\":{\"level\":3}}" \
  "event|{\"name\":\"level_up\",\"level\":\"info\"}" \
  "event|{\"name\":\"disk_low\",\"level\":\"warning\",\"message\":\"2% left\"}" \
  "metric|{\"name\":\"frames\",\"value\":60,\"type\":\"counter\"}"; do
  OPS="$OPS${OPS:+,}{\"op_id\":\"$(new_uuid)\",\"op\":\"${op%%|*}\",\"session_id\":\"$SECOND\",\"data\":${op#*|}}"
done
post /api/batch "{\"operations\":[$OPS]}"
post /api/batch "{\"operations\":[$OPS]}"

say "List: newest MyApp sessions as summaries (no events/metrics, with counts)"
get "/api/data/sessions?product=MyApp&summary=true&limit=2" | pretty

say "Filter: sessions that ever had state player.level = 3, and the ended ones"
get "/api/data/sessions?state.player.level=3&summary=true&limit=5" | first_id
get "/api/data/sessions?product=MyApp&status=ended&summary=true&limit=1" | first_id

say "Page a session's events: warnings only, one per page (next cursor in X-Next-Cursor)"
get "/api/sessions/$SECOND/events?level=warning&limit=1" | pretty
curl -sS -D - -o /dev/null "$URL/api/sessions/$SECOND/events?limit=1" | grep -i '^x-next-cursor' || true

say "Done"
