#!/usr/bin/env bash
# The embedded local stack for a laptop or CI: SeaweedFS (S3), MLflow and a Ray head on 127.0.0.1.
#   cluster/local-stack.sh up|down|status|env [--config tiny] [stack.s3_port=9500 ...]
# State (objects, credentials, PID files, logs, MLflow's SQLite store, Ray's session dir) lives in
# stack.state_dir (.stack).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
seedstory="${SEEDSTORY_BIN:-$here/.venv/bin/seedstory}"
[ -x "$seedstory" ] || { echo "no $seedstory: run 'make env' first" >&2; exit 2; }
export RAY_USAGE_STATS_ENABLED=0
exec "$seedstory" stack "$@"
