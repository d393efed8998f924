#!/bin/sh
# Claude Code under Airlock: its configuration for Airlock's route and MCP server is written
# into $HOME at each start, then the real binary runs. Its own permission prompts are off
# because Airlock is the sandbox: writes are staged for review, the network goes through
# Airlock's proxy, and its own sandbox could not start here anyway (no namespaces).
set -eu
: "${HOME:?HOME must be set}"
# The route's base URL; the key the route adds comes from the host's keyring, and the agent
# only ever holds the placeholder of its profile.
if [ -n "${AIRLOCK_ROUTE_ANTHROPIC:-}" ]; then
  export ANTHROPIC_BASE_URL="$AIRLOCK_ROUTE_ANTHROPIC"
fi
export ANTHROPIC_API_KEY="${ANTHROPIC_API_KEY:-airlock-placeholder-not-a-key}"
# No updater, telemetry, error reports or other traffic of its own: it would be refused.
export DISABLE_AUTOUPDATER=1 DISABLE_TELEMETRY=1 DISABLE_ERROR_REPORTING=1
export CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 DISABLE_BUG_COMMAND=1
# Claude Code's own word for "a sandbox is already around me": it lets bypassPermissions run.
export IS_SANDBOX=1
python3 -I - <<'PY'
import json, os, pathlib
home = pathlib.Path(os.environ["HOME"])
def merge(path, update):
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
key = os.environ["ANTHROPIC_API_KEY"]
merge(home / ".claude.json", {
    "hasCompletedOnboarding": True,
    "bypassPermissionsModeAccepted": True,
    "autoUpdates": False,
    # Claude Code asks once whether to use a key from the environment: the placeholder is ours.
    "customApiKeyResponses": {"approved": [key[-20:]], "rejected": []},
    "mcpServers": {"airlock": {"type": "stdio", "command": "/usr/local/bin/airlock-mcp",
                               "args": [], "env": {}}},
})
merge(home / ".claude" / "settings.json", {
    "permissions": {"defaultMode": "bypassPermissions"},
    "skipDangerousModePermissionPrompt": True,
    "env": {"DISABLE_AUTOUPDATER": "1", "DISABLE_TELEMETRY": "1"},
})
PY
exec /opt/airlock/agent/claude-code/bin/claude "$@"
