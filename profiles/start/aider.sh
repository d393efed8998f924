#!/bin/sh
# aider under Airlock: its packages from PyPI (pinned with their hashes) beside the image's
# Python, its model API through Airlock's route. It confirms its own edits, new files and
# shell commands without asking (--yes-always) because Airlock is the sandbox: every write
# is staged for your review, the network goes through Airlock's proxy. aider has no MCP
# client: the conventions file it reads (--read) tells the model about `airlock-request`,
# the same asks as Airlock's MCP server as a shell command.
set -eu
: "${HOME:?HOME must be set}"
if [ -n "${AIRLOCK_ROUTE_OPENAI:-}" ]; then
  export OPENAI_API_BASE="$AIRLOCK_ROUTE_OPENAI"
fi
export OPENAI_API_KEY="${OPENAI_API_KEY:-airlock-placeholder-not-a-key}"
# litellm would fetch its model price list from GitHub at import; its own copy is enough.
export LITELLM_LOCAL_MODEL_COST_MAP=True
conventions="$HOME/.config/airlock/conventions.md"
mkdir -p "${conventions%/*}"
cat > "$conventions" <<'MD'
# Working inside Airlock

You run inside Airlock, a sandbox on the user's computer. You see only the files the user
granted; your edits are staged for the user's review and reach their files only when they
approve. Network access is limited to the hosts of your profile.

To get more, suggest a shell command that runs `airlock-request`; the user sees your reason
as your own words and decides, and its output says what you were given:

- `airlock-request files --reason "WHY" [--write] [--folder] [PATH...]`: ask for files or a
  folder you were not given (`--write` to change them too). The output names the paths
  granted (e.g. /run/airlock/doc/…/plan.md): read them with a shell command such as `cat`.
- `airlock-request host NAME[:PORT] --reason "WHY"`: ask to reach a host your profile
  does not list.
- `airlock-request save NAME --reason "WHY" < FILE`: hand the user a new file.
- `airlock-request status`: what you have been granted, and what waits for the user.

Do not ask again for something the user denied unless they tell you to.
MD
exec python3 -I -c '
import sys
sys.path.insert(0, "/opt/airlock/agent/aider/lib")
sys.argv[0] = "aider"
from aider.io import InputOutput
from aider.main import main

confirm_ask = InputOutput.confirm_ask


def confirm_in_the_sandbox(self, question, default="y", subject=None,
                           explicit_yes_required=False, group=None, allow_never=False):
    # aider wants a typed yes for a shell command even under --yes-always (it then says no);
    # here the command runs in the sandbox, as Claude Code, Codex and Gemini CLI run theirs.
    explicit = explicit_yes_required and self.yes is not True
    return confirm_ask(self, question, default, subject, explicit, group, allow_never)


InputOutput.confirm_ask = confirm_in_the_sandbox
sys.exit(main())
' --yes-always --no-check-update --analytics-disable --no-show-release-notes \
  --no-show-model-warnings --read "$conventions" "$@"
