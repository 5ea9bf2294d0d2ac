#!/usr/bin/env bash
# Demo steps, given a build directory. For now: the agent on the sample
# configuration, saying what it is set up to do.
set -euo pipefail
build="$1"
src="$(cd "$(dirname "$0")/../.." && pwd)"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
step "sag-agent $("$build/agent/sag-agent" --version | cut -d' ' -f2): checking the sample configuration"
"$build/agent/sag-agent" check-config "$src/agent/examples/agent.yaml"
step "starting sag-agent run on it for two seconds"
"$build/agent/sag-agent" run --config "$src/agent/examples/agent.yaml" &
pid=$!
sleep 2
kill -TERM "$pid"
wait "$pid"
step "done"
