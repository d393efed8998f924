#!/bin/sh
# Codex CLI under Airlock: the model provider is Airlock's route (Codex ignores
# OPENAI_BASE_URL), Airlock's MCP server is registered, and Codex's own sandbox and approval
# prompts are off because Airlock is the sandbox: writes are staged for review, the network
# goes through Airlock's proxy, and Codex's sandbox (namespaces, seccomp) cannot start here.
# Passed as -c overrides, so a config.toml the user keeps in their home is left alone.
set -eu
: "${HOME:?HOME must be set}"
export OPENAI_API_KEY="${OPENAI_API_KEY:-airlock-placeholder-not-a-key}"
route="${AIRLOCK_ROUTE_OPENAI:-}"
set -- \
  -c 'sandbox_mode="danger-full-access"' \
  -c 'approval_policy="never"' \
  -c 'check_for_update_on_startup=false' \
  -c 'analytics.enabled=false' \
  -c 'feedback.enabled=false' \
  -c 'features.plugins=false' \
  -c 'mcp_servers.airlock.command="/usr/local/bin/airlock-mcp"' \
  -c 'mcp_servers.airlock.startup_timeout_sec=30' \
  -c 'mcp_servers.airlock.tool_timeout_sec=900' \
  "$@"
# Codex gives an MCP server only a few variables of its own environment: the server needs
# the session's bus to ask the user anything.
for name in DBUS_SESSION_BUS_ADDRESS AIRLOCK_SESSION; do
  eval "value=\${$name:-}"
  case $value in *[\"\\]*) continue ;; esac  # not a TOML string we can write safely
  [ -n "$value" ] && set -- -c "mcp_servers.airlock.env.$name=\"$value\"" "$@"
done
if [ -n "$route" ]; then
  set -- \
    -c 'model_provider="airlock"' \
    -c 'model_providers.airlock.name="OpenAI through Airlock"' \
    -c "model_providers.airlock.base_url=\"$route\"" \
    -c 'model_providers.airlock.env_key="OPENAI_API_KEY"' \
    -c 'model_providers.airlock.wire_api="responses"' \
    "$@"
fi
for binary in /opt/airlock/agent/codex/vendor/*/bin/codex; do
  exec "$binary" "$@"
done
echo "codex: the native binary is missing from this image" >&2
exit 127
