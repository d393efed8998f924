#!/bin/sh
# Gemini CLI under Airlock: Node and the CLI's bundle from their npm packages, its settings
# for Airlock's route and MCP server merged into $HOME at each start. Its own sandbox and
# approval prompts are off (yolo) because Airlock is the sandbox: writes are staged for
# review, the network goes through Airlock's proxy, and it could not start a container here.
set -eu
: "${HOME:?HOME must be set}"
if [ -n "${AIRLOCK_ROUTE_GEMINI:-}" ]; then
  export GOOGLE_GEMINI_BASE_URL="$AIRLOCK_ROUTE_GEMINI"
fi
export GEMINI_API_KEY="${GEMINI_API_KEY:-airlock-placeholder-not-a-key}"
export GEMINI_SANDBOX=false GEMINI_CLI_TRUST_WORKSPACE=true
python3 -I - <<'PY'
import json, os, pathlib
path = pathlib.Path(os.environ["HOME"]) / ".gemini" / "settings.json"
try:
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        data = {}
except (OSError, ValueError):
    data = {}
update = {
    "security": {"auth": {"selectedType": "gemini-api-key"}, "folderTrust": {"enabled": False}},
    "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
    "privacy": {"usageStatisticsEnabled": False},
    "telemetry": {"enabled": False},
    "tools": {"sandbox": False},
    "mcpServers": {"airlock": {"command": "/usr/local/bin/airlock-mcp", "args": [],
                               "trust": True, "timeout": 900000}},
}
# Files the user grants mid-run appear here (outside any folder granted at the start) and
# saves are staged here: the CLI refuses paths outside its workspace unless they are in it.
included = [d for d in ("/run/airlock/doc", "/run/airlock/save") if os.path.isdir(d)]
if included:
    update["context"] = {"includeDirectories": included}
for key, value in update.items():
    if isinstance(data.get(key), dict):
        for inner, item in value.items():
            if isinstance(item, dict) and isinstance(data[key].get(inner), dict):
                data[key][inner].update(item)
            else:
                data[key][inner] = item
    else:
        data[key] = value
path.parent.mkdir(parents=True, exist_ok=True)
path.write_text(json.dumps(data, indent=2) + "\n")
PY
exec /opt/airlock/agent/gemini-cli/node/bin/node --no-deprecation \
  /opt/airlock/agent/gemini-cli/gemini-cli/bundle/gemini.js --approval-mode=yolo "$@"
