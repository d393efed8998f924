#!/bin/sh
# aider under Airlock: its packages from PyPI (pinned with their hashes) beside the image's
# Python, its model API through Airlock's route. It confirms its own edits and new files
# without asking (--yes-always) because Airlock is the sandbox: every write is staged for
# your review. aider never runs a shell command it suggests without an explicit yes, which
# only a terminal can give. It has no MCP client: Airlock's MCP server is not registered.
set -eu
: "${HOME:?HOME must be set}"
if [ -n "${AIRLOCK_ROUTE_OPENAI:-}" ]; then
  export OPENAI_API_BASE="$AIRLOCK_ROUTE_OPENAI"
fi
export OPENAI_API_KEY="${OPENAI_API_KEY:-airlock-placeholder-not-a-key}"
# litellm would fetch its model price list from GitHub at import; its own copy is enough.
export LITELLM_LOCAL_MODEL_COST_MAP=True
exec python3 -I -c '
import sys
sys.path.insert(0, "/opt/airlock/agent/aider/lib")
sys.argv[0] = "aider"
from aider.main import main
sys.exit(main())
' --yes-always --no-check-update --analytics-disable --no-show-release-notes \
  --no-show-model-warnings "$@"
