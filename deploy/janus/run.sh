#!/bin/sh
# Janus (VideoRoom) behind Meetecho's simple-whip-server, with this folder's configuration: nothing in /etc is
# read or changed. Runs in the foreground until interrupted; then both servers stop.
#
#   deploy/janus/run.sh                      # WHIP on :7080, Janus WebSocket API on :8188, RTP on UDP 20000-20200
#   RTP_PORTS=30000-30100 NAT_1_1=203.0.113.7 deploy/janus/run.sh   # behind a 1:1 NAT (a cloud VM)
#
# Then create the room's WHIP endpoint (simple-whip-server keeps endpoints in memory):
#   curl -H 'content-type: application/json' -d '{"id":"avatar","room":1234,"token":"s3cret"}' \
#        http://localhost:7080/whip/create
# and publish:  avatar live --publish-whip http://localhost:7080/whip/endpoint/avatar --whip-token s3cret
# Set WHIP_CREATE='{"id":"avatar","room":1234}' to have this script create it once the server is up.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
RTP_PORTS=${RTP_PORTS:-20000-20200}
WHIP_PORT=${WHIP_PORT:-7080}
JANUS_WS_PORT=8188  # fixed in janus.transport.websockets.jcfg
run=${RUN_DIR:-$(mktemp -d /tmp/avatar-janus.XXXXXX)}

# The Debian package, or the copy `make setup` unpacks where the package cannot be installed (its node-websocket
# needs Debian's libnode108, which conflicts with a NodeSource nodejs).
whip=${WHIP_SERVER_DIR:-}
for d in /usr/share/simple-whip-server "$here/../../.cache/simple-whip-server/usr/share/simple-whip-server"; do
	[ -z "$whip" ] && [ -f "$d/src/server.js" ] && whip=$d
done
command -v janus >/dev/null || { echo "run.sh: janus is not installed (apt-get install janus)" >&2; exit 1; }
[ -n "$whip" ] || { echo "run.sh: simple-whip-server not found (apt-get install simple-whip-server, or make setup)" >&2; exit 1; }

# The server reads ./config.js next to server.js: give it ours in a private copy of its sources.
mkdir -p "$run/whip/src"
cp "$whip/src/server.js" "$whip/src/whip-janus.js" "$run/whip/src/"
cp "$here/whip-server.config.js" "$run/whip/src/config.js"
mkdir -p "$run/whip/web"  # served at http://<host>:$WHIP_PORT/: the page that watches the room
cp "$here/../../client/web/watch.html" "$run/whip/web/"

set -- -F "$here" -C "$here/janus.jcfg" -r "$RTP_PORTS" -o -N -L "$run/janus.log"
[ -n "${NAT_1_1:-}" ] && set -- "$@" --nat-1-1="$NAT_1_1"
[ -n "${ICE_ENFORCE:-}" ] && set -- "$@" -E "$ICE_ENFORCE"
janus "$@" &
janus_pid=$!
trap 'kill $janus_pid ${whip_pid:-} 2>/dev/null; wait' EXIT INT TERM

modules="$whip/../../lib/x86_64-linux-gnu/nodejs"  # node-websocket, when unpacked beside the server
(cd "$run/whip" && NODE_PATH="/usr/share/nodejs:/usr/lib/x86_64-linux-gnu/nodejs:/usr/lib/nodejs:$modules" \
	JANUS_WS="ws://127.0.0.1:$JANUS_WS_PORT" WHIP_PORT="$WHIP_PORT" exec node src/server.js) &
whip_pid=$!

if [ -n "${WHIP_CREATE:-}" ]; then
	for _ in $(seq 100); do
		curl -sf "http://127.0.0.1:$WHIP_PORT/whip/healthcheck" >/dev/null 2>&1 && break
		sleep 0.1
	done
	curl -sf -H 'content-type: application/json' -d "$WHIP_CREATE" "http://127.0.0.1:$WHIP_PORT/whip/create" >/dev/null
	echo "run.sh: endpoint created: $WHIP_CREATE"
fi
echo "run.sh: WHIP http://<host>:$WHIP_PORT/whip/endpoint/<id>, watch http://<host>:$WHIP_PORT/watch.html, Janus ws://<host>:$JANUS_WS_PORT, RTP UDP $RTP_PORTS (logs in $run)"
wait $whip_pid
