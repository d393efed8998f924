"""The shipped agents, end to end: the real agent from its real package, in the image
`airlock image build --agent` made, run by the Supervisor with the shipped profile — changed
only to point its route at a scripted mock of its model API on the host's loopback. The mock
drives the agent through tool calls: read a granted file, edit it, create a file, run a shell
command (which also tries a host the profile does not list and copies everything the agent
can see of itself), ask Airlock's MCP server for one more file (the test's front end grants
it) and read that. The checks are on the host: the edits are staged and the user's tree is
unchanged; the refused host got nothing; the real key reached the mock and nothing else."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import platformdirs
import pytest

from app.agent_image import (
    LABEL_BASE,
    LABEL_PACKAGES,
    LABEL_VERSION,
    build_agent,
    pinned_labels,
)
from app.audit import AuditLog, AuditRecord, records
from app.consent import Answer, ConsentBroker, ConsentRequest, RequestKind, Verdict
from app.console import Console, Terminal
from app.egress.bridge import Egress
from app.egress.keys import KeyringSecrets
from app.events import Event, EventBus
from app.grants import GrantRequest, Lifetime, Mode
from app.image import DEFAULT_IMAGE
from app.paths import Dirs
from app.profiles import ProfileCatalog, parse_profile, shipped_profiles_dir
from app.review import Review
from app.sessions import LaunchRequest, SessionResult, Supervisor
from app.store import StateStore
from portal.extension import portal_extension
from tests.agentmocks import (
    AnthropicMessages,
    Api,
    Call,
    ChatCompletions,
    GeminiApi,
    MockModel,
    MockServer,
    OpenAIResponses,
    done,
)
from tests.netsupport import RecordingServer, StaticResolver, secret_service
from tests.portal.rig import Scripted
from tests.ptyterm import PtyProcess
from tests.support import AIRLOCK, CollectedOutput, profile_text

__all__ = ["secret_service"]
pytestmark = pytest.mark.docker

KEY = "sk-ant-live-" + "Q7" * 24  # shaped like a real key; never leaves the host's keyring
# The base the agent images are built on: CI builds the default; a shared development
# machine can point this elsewhere so that building does not replace others' base image.
BASE = os.environ.get("AIRLOCK_AGENT_BASE", DEFAULT_IMAGE)


# Where `airlock image build` keeps the packages, as the user running the tests has it: the
# keyring fixture moves HOME, and the cache must not move with it.
CACHE_HOME = str(platformdirs.user_cache_path("airlock").parent)


@pytest.fixture(autouse=True)
def package_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", CACHE_HOME)


@pytest.fixture
def short_dirs() -> Iterator[Dirs]:
    # Socket paths (the session's bus, the proxy's hand-over) must fit in 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="ae-", dir="/tmp"))
    dirs = Dirs(config=root / "c", state=root / "s", runtime=root / "r")
    dirs.ensure()
    yield dirs
    shutil.rmtree(root, ignore_errors=True)


def agent_image(engine: docker.DockerClient, agent: str) -> str:
    """The agent's image, built (or found up to date) the way `airlock image build` does,
    offline: tests reach no registry, so its packages must be in the cache (packaging/setup
    fetches them with `airlock image build --agent all`)."""
    return build_agent(engine, agent, base=BASE, offline=True).tag


def shipped_profile(name: str, mock_port: int) -> str:
    """The shipped profile, its route sent to the mock; loopback is allowed for that only."""
    text = (shipped_profiles_dir() / f"{name}.toml").read_text()
    text, count = re.subn(
        r'upstream = "https://[^"]+"', f'upstream = "http://localhost:{mock_port}"', text
    )
    assert count == 1, "the shipped profile should have exactly one route"
    return text.replace("[network]\n", "[network]\nallow_private = true\n", 1)


def granted_path(results: list[str]) -> str:
    found = re.search(r"The user granted: (\S+) \(", results[-1])
    assert found, f"request_files did not grant a file: {results[-1]!r}"
    return found.group(1)


class Session:
    def __init__(
        self, dirs: Dirs, engine: docker.DockerClient, extra: Path, refused_port: int
    ) -> None:
        self.dirs = dirs
        self.bus = EventBus()
        self.events: list[Event] = []
        self.bus.attach(self.events.append)
        self.audit = AuditLog(dirs.audit)
        self.bus.attach(self.audit.sink)
        self.front_end = Scripted(self._decide)
        self.extra = extra
        broker = ConsentBroker(self.bus, self.front_end)
        self.egress = Egress(
            engine,
            secrets=KeyringSecrets(dirs.config / "secrets"),
            broker=broker,
            resolver=StaticResolver(
                {
                    "localhost": ["127.0.0.1"],
                    "refused.test": ["127.0.0.1"],
                    "asked.test": ["127.0.0.1"],
                }
            ),
        )
        self.store = StateStore(dirs.database)
        self.supervisor = Supervisor(
            engine,
            self.store,
            self.bus,
            dirs,
            ProfileCatalog(dirs.user_profiles),
            extensions=[self.egress, portal_extension(broker, hosts=self.egress)],
        )

    def _decide(self, request: ConsentRequest) -> Answer:
        if request.kind is RequestKind.FILE_OPEN:
            return Answer(
                Verdict.ALLOW, Lifetime.SESSION, paths=(self.extra,), mode=Mode.READ, by="test"
            )
        return Answer(Verdict.DENY, by="test")

    def run(
        self, profile: str, grant: Path, command: tuple[str, ...] | None, stdin: bytes | None = None
    ) -> tuple[SessionResult, str]:
        request = LaunchRequest(
            parse_profile(profile, "shipped.toml"),
            Path("shipped.toml"),
            (GrantRequest(grant, Mode.READ_WRITE),),
            command=command,
            timeout=300,
            terminal=Terminal(tty=False) if stdin is not None else None,
        )
        output = CollectedOutput() if stdin is None else PipedInput(stdin)
        try:
            result = asyncio.run(self.supervisor.run(request, output))
        finally:
            self.store.close()
            self.audit.close()
        return result, output.text()


class PipedInput(CollectedOutput):
    """What the agent printed, and its stdin fed from `data`, then ended: the way a pipe
    into `airlock run` reaches it."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self.data = data
        self.feeder: threading.Thread | None = None

    def attached(self, console: Console) -> None:
        def feed() -> None:  # the console's writes block while the agent does not read
            console.write(self.data)
            console.close_stdin()

        self.feeder = threading.Thread(target=feed, daemon=True)
        self.feeder.start()


def sandbox_check(work: Path, refused_port: int) -> str:
    """A shell command: try a host the profile does not list, and copy everything of itself
    the agent can read — its environment, every process's environment and command line,
    the files in its home and temp folder — into the granted tree, for the test to search."""
    return (
        "echo shell-ran; "
        f'curl -sS -m 10 -o /dev/null -w "refused:%{{http_code}}\\n" '
        f"http://refused.test:{refused_port}/steal 2>&1; "
        "{ env; cat /proc/[0-9]*/environ /proc/[0-9]*/cmdline; "
        'find /tmp "$HOME" -xdev -type f -size -8M -exec cat {} + ; } '
        f"> {work / 'agent-view.bin'} 2>/dev/null; echo view-saved"
    )


def claude_steps(work: Path, refused_port: int) -> list[Any]:
    notes, created = work / "notes.md", work / "created.md"
    shell = sandbox_check(work, refused_port)
    return [
        lambda r: Call("Read", {"file_path": str(notes)}),
        lambda r: Call(
            "Edit", {"file_path": str(notes), "old_string": "old line", "new_string": "new line"}
        ),
        lambda r: Call("Write", {"file_path": str(created), "content": "made by the agent\n"}),
        lambda r: Call("Bash", {"command": shell, "description": "check the sandbox"}),
        # Claude Code defers MCP tools: a model fetches their schema first.
        lambda r: Call("ToolSearch", {"query": "select:mcp__airlock__request_files"}),
        lambda r: Call(
            "mcp:request_files", {"reason": "I need the plan to finish the notes", "access": "read"}
        ),
        lambda r: Call("Read", {"file_path": granted_path(r)}),
    ]


def codex_steps(work: Path, refused_port: int) -> list[Any]:
    notes, created = work / "notes.md", work / "created.md"
    patch = f"*** Begin Patch\n*** Update File: {notes}\n@@\n-old line\n+new line\n*** End Patch\n"
    shell = sandbox_check(work, refused_port)
    return [
        lambda r: Call("shell", {"command": f"cat {notes}"}),
        lambda r: Call("apply_patch", {"input": patch}),
        lambda r: Call("shell", {"command": f"printf 'made by the agent\\n' > {created}"}),
        lambda r: Call("shell", {"command": shell}),
        lambda r: Call(
            "mcp:request_files", {"reason": "I need the plan to finish the notes", "access": "read"}
        ),
        lambda r: Call("shell", {"command": f"cat {granted_path(r)}"}),
    ]


def gemini_steps(work: Path, refused_port: int) -> list[Any]:
    notes, created = work / "notes.md", work / "created.md"
    shell = sandbox_check(work, refused_port)
    return [
        lambda r: Call("read_file", {"file_path": str(notes)}),
        lambda r: Call(
            "replace",
            {
                "file_path": str(notes),
                "old_string": "old line",
                "new_string": "new line",
                "instruction": "tidy",
            },
        ),
        lambda r: Call("write_file", {"file_path": str(created), "content": "made by the agent\n"}),
        lambda r: Call("run_shell_command", {"command": shell, "description": "check"}),
        lambda r: Call(
            "mcp:request_files", {"reason": "I need the plan to finish the notes", "access": "read"}
        ),
        lambda r: Call("read_file", {"file_path": granted_path(r)}),
    ]


AGENTS = {
    # agent: (API mock, secret name, header the key arrives in, steps, command)
    "claude-code": (
        AnthropicMessages,
        "anthropic",
        "x-api-key",
        claude_steps,
        ("claude", "-p", "Tidy my notes."),
    ),
    "codex": (
        OpenAIResponses,
        "openai",
        "authorization",
        codex_steps,
        ("codex", "exec", "--skip-git-repo-check", "Tidy my notes."),
    ),
    "gemini-cli": (
        GeminiApi,
        "gemini",
        "x-goog-api-key",
        gemini_steps,
        ("gemini", "-p", "Tidy my notes."),
    ),
}


def tool_results(api: Api, model: MockModel) -> list[str]:
    """The tool results of the longest conversation the mock saw: what the agent reported."""
    longest: list[str] = []
    for recorded in model.requests:
        if isinstance(api, AnthropicMessages):
            found = [
                json.dumps(block.get("content"))
                for message in recorded.body.get("messages", [])
                if isinstance(message.get("content"), list)
                for block in message["content"]
                if isinstance(block, dict) and block.get("type") == "tool_result"
            ]
        elif isinstance(api, GeminiApi):
            found = [
                json.dumps(part["functionResponse"].get("response"))
                for content in recorded.body.get("contents", [])
                for part in content.get("parts", [])
                if isinstance(part, dict) and isinstance(part.get("functionResponse"), dict)
            ]
        else:
            found = [
                json.dumps(item.get("output"))
                for item in recorded.body.get("input", [])
                if isinstance(item, dict)
                and item.get("type") in ("function_call_output", "custom_tool_call_output")
            ]
        longest = max(longest, done(found), key=len)
    return longest


@pytest.mark.parametrize("agent", sorted(AGENTS))
def test_agent_works_through_airlock_and_never_holds_the_key(
    agent: str,
    short_dirs: Dirs,
    engine: docker.DockerClient,
    tmp_path: Path,
    secret_service: Any,
) -> None:
    api_class, secret, header, steps, command = AGENTS[agent]
    image = agent_image(engine, agent)
    labels = engine.images.get(image).labels
    assert labels[LABEL_VERSION] and "sha512-" in labels[LABEL_PACKAGES]
    # What packaging/Containerfile.agent is told to label its build with: the same.
    assert {k: v for k, v in labels.items() if k != LABEL_BASE} == pinned_labels(agent)
    shown = subprocess.run(
        [str(AIRLOCK), "image", "show", "--agent", agent],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "state:    up to date" in shown.stdout and "sha512-" in shown.stdout, shown
    KeyringSecrets(short_dirs.config / "secrets").set(secret, KEY)
    work = tmp_path / "project"
    work.mkdir()
    (work / "notes.md").write_text("# Notes\nold line\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    extra = outside / "plan.md"
    extra.write_text("the plan: ship on friday\n")
    for folder in (tmp_path, work, outside):
        folder.chmod(0o755)
    if os.geteuid() == 0:  # the agent then runs as nobody: its files are its user's, as usual
        for path in (work, *work.iterdir()):
            os.chown(path, 65534, 65534)
    before = {p.name: p.read_bytes() for p in work.iterdir()}

    with RecordingServer() as refused:
        refused_port = refused.port
        model = MockModel(steps(work, refused.port))
        api = api_class()
        with MockServer(api, model) as mock:
            session = Session(short_dirs, engine, extra, refused.port)
            result, output = session.run(shipped_profile(agent, mock.port), work, command)
        # The host refused the host the profile does not list: nothing arrived there.
        assert refused.seen.connections == 0 and refused.seen.requests == []

    results = tool_results(api, model)
    assert result.exit_code == 0, (output, results)
    assert len(results) == len(model.steps), (output, results, model.errors, api.tools_seen)
    assert "old line" in results[0]  # it read the granted file
    shell = next(r for r in results if "shell-ran" in r)
    assert "refused:403" in shell, shell
    assert re.search(
        r"The user granted: /run/airlock/doc/\w+/plan.md \(read-only\)", results[-2]
    ), results[-2]
    assert "ship on friday" in results[-1]  # and read the file it was granted mid-run
    # The front end was asked, once, with the agent's reason shown as its own words.
    asked = [r for r in session.front_end.seen if r.kind is RequestKind.FILE_OPEN]
    assert len(asked) == 1 and "finish the notes" in asked[0].reason

    # Edits are staged; the user's tree is as it was until a commit.
    assert {p.name: p.read_bytes() for p in work.iterdir()} == before
    changes = {
        c.path.name: c for c in Review(short_dirs, session.bus).changes(result.session).changes
    }
    assert {"notes.md", "created.md", "agent-view.bin"} <= set(changes)
    assert changes["notes.md"].staged is not None
    assert changes["notes.md"].staged.read_text() == "# Notes\nnew line\n"
    assert changes["created.md"].staged is not None
    assert changes["created.md"].staged.read_text() == "made by the agent\n"

    # The real key reached the mock, in every model request, and nothing else.
    assert model.requests and all(
        r.headers.get(header, "").endswith(KEY)
        for r in model.requests
        if r.path.endswith(("/messages", "/responses", "Content", "=sse"))
    )
    seen_by_agent = changes["agent-view.bin"].staged
    assert seen_by_agent is not None and seen_by_agent.stat().st_size > 1000
    view = seen_by_agent.read_bytes()
    assert b"AIRLOCK_ROUTE_" in view  # it is the agent's view indeed
    assert KEY.encode() not in view
    assert KEY not in output and all(KEY not in r for r in results)
    assert KEY not in json.dumps(engine.images.get(image).attrs)
    logged = b"".join(p.read_bytes() for p in short_dirs.audit.glob("*"))
    assert KEY.encode() not in logged

    # The audit log has the session from its start to its end, and the route's requests.
    kinds = [
        r.kind
        for r in records(short_dirs.audit)
        if isinstance(r, AuditRecord) and r.session == result.session
    ]
    refused_hosts = sorted(
        {
            str(r.subject)
            for r in records(short_dirs.audit)
            if isinstance(r, AuditRecord)
            and r.session == result.session
            and r.kind == "net.refused"
        }
    )
    # The agent's own update checks, telemetry and plugin syncs are off by its own settings:
    # the only host refused is the one the test tried.
    assert refused_hosts == [f"refused.test:{refused_port}"], refused_hosts
    assert "session.exited" in kinds, kinds
    assert (
        kinds.index("session.started") < kinds.index("net.request") < kinds.index("session.exited")
    ), kinds
    assert "net.request" in kinds and "net.refused" in kinds


AIDER_REPLY = """I'll tidy the notes and add a file.

notes.md
```
<<<<<<< SEARCH
old line
=======
new line
>>>>>>> REPLACE
```

created.md
```
<<<<<<< SEARCH
=======
made by the agent
>>>>>>> REPLACE
```
"""


def test_aider_edits_through_airlock_and_never_holds_the_key(
    short_dirs: Dirs,
    engine: docker.DockerClient,
    tmp_path: Path,
    secret_service: Any,
) -> None:
    """aider edits by text, not tool calls, runs no shell command without a terminal's yes,
    and has no MCP client: its test is the granted file read, edited and a file created,
    staged, with the key only at the mock."""
    image = agent_image(engine, "aider")
    KeyringSecrets(short_dirs.config / "secrets").set("openai", KEY)
    work = tmp_path / "project"
    work.mkdir()
    (work / "notes.md").write_text("# Notes\nold line\n")
    tmp_path.chmod(0o755)
    work.chmod(0o755)
    if os.geteuid() == 0:
        for path in (work, *work.iterdir()):
            os.chown(path, 65534, 65534)
    before = {p.name: p.read_bytes() for p in work.iterdir()}
    task = "Tidy my notes."
    model = MockModel([])
    with MockServer(ChatCompletions(AIDER_REPLY, task), model) as mock:
        session = Session(short_dirs, engine, work / "notes.md", 1)
        result, output = session.run(
            shipped_profile("aider", mock.port),
            work,
            ("aider", "--message", task, str(work / "notes.md")),
        )
    assert result.exit_code == 0, output
    assert image == "airlock-agent:aider"
    asked = [r for r in model.requests if r.path.endswith("/chat/completions")]
    assert asked, output
    assert any("old line" in json.dumps(r.body) for r in asked)  # it read the granted file
    assert all(r.headers.get("authorization") == f"Bearer {KEY}" for r in asked)
    assert {p.name: p.read_bytes() for p in work.iterdir()} == before
    changes = {
        c.path.name: c for c in Review(short_dirs, session.bus).changes(result.session).changes
    }
    assert {"notes.md", "created.md"} <= set(changes), (output, sorted(changes))
    notes, created = changes["notes.md"].staged, changes["created.md"].staged
    assert notes is not None and notes.read_text() == "# Notes\nnew line\n"
    assert created is not None and created.read_text() == "made by the agent\n"
    assert KEY not in output
    logged = b"".join(p.read_bytes() for p in short_dirs.audit.glob("*"))
    assert KEY.encode() not in logged and b"route:openai" in logged


def test_aider_asks_for_a_file_with_airlock_request(
    short_dirs: Dirs,
    engine: docker.DockerClient,
    tmp_path: Path,
    secret_service: Any,
) -> None:
    """aider has no MCP client: its conventions file tells the model about `airlock-request`,
    the same asks as a shell command. The model suggests it, aider runs it in the sandbox,
    the test's front end grants one more file, and the model's next command reads it: the
    file's words reach the model (at the mock), through the user's three lines on stdin."""
    agent_image(engine, "aider")
    KeyringSecrets(short_dirs.config / "secrets").set("openai", KEY)
    work = tmp_path / "project"
    work.mkdir()
    (work / "notes.md").write_text("# Notes\nold line\n")
    extra = tmp_path / "outside" / "plan.md"
    extra.parent.mkdir()
    extra.write_text("the plan: ship on friday\n")
    for folder in (tmp_path, work, extra.parent):
        folder.chmod(0o755)
    if os.geteuid() == 0:
        for path in (work, *work.iterdir()):
            os.chown(path, 65534, 65534)

    def read_the_grant(conversation: str) -> str:
        granted = re.search(r"The user granted: (/run/airlock/doc/\S+/plan\.md) \(", conversation)
        assert granted, conversation[-2000:]
        return f"I'll read it.\n\n```bash\ncat {granted.group(1)}\n```\n"

    ask = (
        "I need the plan first.\n\n```bash\nairlock-request files --reason "
        '"I need the plan to finish the notes" plan.md\n```\n'
    )
    turns = {"Read the plan.": read_the_grant, "Finish.": lambda _: "Done."}
    model = MockModel([])
    api = ChatCompletions(ask, "Tidy my notes.", turns)
    with MockServer(api, model) as mock:
        session = Session(short_dirs, engine, extra, 1)
        result, output = session.run(
            shipped_profile("aider", mock.port),
            work,
            ("aider", "--no-fancy-input", "--no-pretty", str(work / "notes.md")),
            stdin=b"Tidy my notes.\nRead the plan.\nFinish.\n",
        )
    assert result.exit_code == 0, output
    sent = [json.dumps(r.body) for r in model.requests if r.path.endswith("/chat/completions")]
    assert any("airlock-request files" in body for body in sent[:1]), output  # conventions
    # The front end was asked once, with the agent's reason as its own words.
    asked = [r for r in session.front_end.seen if r.kind is RequestKind.FILE_OPEN]
    assert len(asked) == 1 and "finish the notes" in asked[0].reason, output
    assert "plan.md" in asked[0].reason
    assert any("The user granted: /run/airlock/doc/" in body for body in sent), output
    assert any("ship on friday" in body for body in sent), output  # the next step read it
    assert all(
        r.headers.get("authorization") == f"Bearer {KEY}"
        for r in model.requests
        if r.path.endswith("/chat/completions")
    )
    assert KEY not in output


# An MCP client in the agent's container, speaking JSON-RPC to Airlock's server over stdio
# the way every agent does: each tool's answer is printed as one JSON line.
MCP_CLIENT = r"""
import json, subprocess, sys
server = subprocess.Popen(["airlock-mcp"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True)
def send(message):
    server.stdin.write(json.dumps(message) + "\n"); server.stdin.flush()
def call(ident, method, params):
    send({"jsonrpc": "2.0", "id": ident, "method": method, "params": params})
    while True:
        reply = json.loads(server.stdout.readline())
        if reply.get("id") == ident:
            return reply
call(0, "initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "test", "version": "1"}})
send({"jsonrpc": "2.0", "method": "notifications/initialized"})
tools = call(1, "tools/list", {})["result"]["tools"]
print(json.dumps({"tools": sorted(t["name"] for t in tools)}))
for ident, (name, arguments) in enumerate(json.loads(sys.argv[1]), 2):
    reply = call(ident, "tools/call", {"name": name, "arguments": arguments})
    print(json.dumps({name: reply["result"]["content"][0]["text"]}))
"""


def test_the_mcp_server_saves_reports_and_asks_for_hosts(
    short_dirs: Dirs,
    engine: docker.DockerClient,
    tmp_path: Path,
) -> None:
    """Every tool of Airlock's MCP server, spoken to over stdio in a real session: a save is
    staged, not written; a refused file request comes back denied; a host the user allows is
    reachable at once, one refused stays closed, and a wildcard is turned down unasked."""
    image = agent_image(engine, "claude-code")
    work = tmp_path / "project"
    work.mkdir()
    (work / "notes.md").write_text("notes\n")
    target = tmp_path / "out" / "report.md"
    target.parent.mkdir()
    for folder in (tmp_path, work, target.parent):
        folder.chmod(0o755)
    with RecordingServer() as asked, RecordingServer() as refused:
        calls = [
            ["status", {}],
            [
                "save_file",
                {
                    "reason": "Here is the report\u202e you asked for",
                    "name": "report.md",
                    "content": "# Report\n",
                },
            ],
            [
                "request_files",
                {"reason": "I want your SSH keys", "access": "read-write", "folder": True},
            ],
            ["request_host", {"host": "asked.test", "port": asked.port, "reason": "the docs"}],
            [
                "request_host",
                {"host": "refused.test", "port": refused.port, "reason": "to upload your notes"},
            ],
            ["request_host", {"host": "*.example.com", "port": 443, "reason": "all of it"}],
            ["status", {}],
        ]

        def decide(request: ConsentRequest) -> Answer:
            if request.kind is RequestKind.FILE_SAVE:
                return Answer(Verdict.ALLOW, paths=(target,), by="test")
            if request.kind is RequestKind.NETWORK and request.subject.startswith("asked."):
                return Answer(Verdict.ALLOW, Lifetime.SESSION, by="test")
            return Answer(Verdict.DENY, by="test")

        session = Session(short_dirs, engine, target, 1)
        session.front_end.decide = decide
        script = (
            'python3 -c "$0" "$1"; for h in asked.test:$2 refused.test:$3; do '
            'curl -sS -m 10 -o /dev/null -w "$h %{http_code}\\n" "http://$h/x"; done'
        )
        profile = profile_text(
            image,
            ["sh", "-c", script, MCP_CLIENT, json.dumps(calls), str(asked.port), str(refused.port)],
        )
        profile += '[network]\nallow_private = true\nallow = ["pypi.org:443"]\n'
        result, output = session.run(profile, work, None)
        assert result.exit_code == 0, output
        assert [r["path"] for r in asked.seen.requests] == ["/x"]
        assert refused.seen.connections == 0
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert lines[0]["tools"] == ["request_files", "request_host", "save_file", "status"]
    first, saved, denied, allowed, closed, wildcard, last = (
        next(iter(line.values())) for line in lines[1:]
    )
    assert f"Granted: {work} (read-write)" in first and "Staged saves: none" in first
    assert saved.startswith("Saved 9 bytes as /run/airlock/save/") and "staged" in saved
    assert denied.startswith("The user denied the request")
    assert allowed.startswith(f"The user allowed asked.test:{asked.port}"), allowed
    assert closed.startswith(f"The user denied refused.test:{refused.port}"), closed
    assert wildcard.startswith("Airlock refused the request") and "wildcard" in wildcard
    assert "report.md" in last and "Staged saves: /run/airlock/save/" in last
    assert f"asked.test:{asked.port} 200" in output
    assert f"refused.test:{refused.port} 403" in output
    # The user saw the agent's words as its own; no question for the wildcard.
    seen = session.front_end.seen
    assert [r.kind for r in seen] == [
        RequestKind.FILE_SAVE,
        RequestKind.FILE_OPEN,
        RequestKind.NETWORK,
        RequestKind.NETWORK,
    ]
    assert "Here is the report" in seen[0].reason
    assert "SSH keys" in seen[1].reason and "read-write" in seen[1].reason
    assert seen[2].reason == "the docs" and seen[3].reason == "to upload your notes"
    # The save is staged, not written.
    assert not target.exists()
    staged = {c.path: c for c in Review(short_dirs, session.bus).changes(result.session).changes}
    assert staged[target].staged is not None
    assert staged[target].staged.read_text() == "# Report\n"


def test_claude_code_through_the_airlock_command(
    engine: docker.DockerClient,
    tmp_path: Path,
    secret_service: Any,
) -> None:
    """The same agent as a user runs it: `airlock secret set`, then `airlock run -p` with the
    shipped profile (its route sent to the mock), in a process of its own. Nobody is there
    to answer (--ask deny), so the MCP request for a file comes back denied."""
    agent_image(engine, "claude-code")
    root = Path(tempfile.mkdtemp(prefix="ac-", dir="/tmp"))  # unix socket paths stay short
    try:
        env = {
            **os.environ,
            "XDG_CONFIG_HOME": str(root / "c"),
            "XDG_STATE_HOME": str(root / "s"),
            "XDG_RUNTIME_DIR": str(root / "r"),
        }
        (root / "r").mkdir(mode=0o700)
        stored = subprocess.run(
            [str(AIRLOCK), "secret", "set", "anthropic"],
            input=KEY + "\n",
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert stored.returncode == 0, stored.stderr
        work = tmp_path / "project"
        work.mkdir()
        (work / "notes.md").write_text("# Notes\nold line\n")
        tmp_path.chmod(0o755)
        work.chmod(0o755)
        if os.geteuid() == 0:
            for path in (work, *work.iterdir()):
                os.chown(path, 65534, 65534)
        with RecordingServer() as refused:
            steps = claude_steps(work, refused.port)
            model = MockModel(
                [
                    *steps[:4],
                    steps[4],
                    steps[5],
                    lambda r: Call(
                        "Write", {"file_path": str(work / "answer.md"), "content": r[-1]}
                    ),
                ]
            )
            with MockServer(AnthropicMessages(), model) as mock:
                profile = root / "claude-code.toml"
                profile.write_text(shipped_profile("claude-code", mock.port))
                run = subprocess.run(
                    [
                        str(AIRLOCK),
                        "run",
                        "-p",
                        str(profile),
                        "-g",
                        f"{work}:rw",
                        "--ask",
                        "deny",
                        "--",
                        "claude",
                        "-p",
                        "Tidy my notes.",
                    ],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=300,
                    cwd=tmp_path,
                )
            assert refused.seen.connections == 0
        assert run.returncode == 0, run.stdout + run.stderr
        assert (work / "notes.md").read_text() == "# Notes\nold line\n"
        assert not (work / "created.md").exists()
        session = re.search(r"airlock changes ([0-9a-f]+)", run.stdout + run.stderr)
        assert session, run.stdout + run.stderr
        listed = subprocess.run(
            [str(AIRLOCK), "changes", session.group(1), "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        paths = {Path(c["path"]).name for c in json.loads(listed.stdout)["changes"]}
        assert {"notes.md", "created.md", "answer.md", "agent-view.bin"} <= paths, listed.stdout
        state = root / "s" / "airlock"
        view = next(state.glob("sessions/*/staging/**/agent-view.bin")).read_bytes()
        answer = next(state.glob("sessions/*/staging/**/answer.md")).read_text()
        assert "denied" in answer
        assert KEY.encode() not in view and b"AIRLOCK_ROUTE_ANTHROPIC" in view
        assert all(r.headers["x-api-key"] == KEY for r in model.requests if "/messages" in r.path)
        assert KEY not in run.stdout + run.stderr
        assert KEY.encode() not in b"".join(p.read_bytes() for p in state.rglob("audit/*"))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_claude_codes_own_screen_through_a_real_terminal(
    engine: docker.DockerClient,
    tmp_path: Path,
    secret_service: Any,
) -> None:
    """The real agent's interactive screen, as a user runs it: `airlock run -p claude-code
    -g DIR:rw` on a real pseudo-terminal. A prompt typed key by key, the mock answers with an
    edit, the edit is staged, the agent is quit with its own command, the review question is
    answered no, and the terminal is given back as it was (cooked, echoing)."""
    agent_image(engine, "claude-code")
    root = Path(tempfile.mkdtemp(prefix="ap-", dir="/tmp"))  # unix socket paths stay short
    terminal: PtyProcess | None = None
    try:
        env = {
            **os.environ,
            "XDG_CONFIG_HOME": str(root / "c"),
            "XDG_STATE_HOME": str(root / "s"),
            "XDG_RUNTIME_DIR": str(root / "r"),
            "AIRLOCK_AUTOSTART": "0",
            "TERM": "xterm-256color",
            "LANG": "C.UTF-8",
        }
        (root / "r").mkdir(mode=0o700)
        stored = subprocess.run(
            [str(AIRLOCK), "secret", "set", "anthropic"],
            input=KEY + "\n",
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert stored.returncode == 0, stored.stderr
        work = tmp_path / "project"
        work.mkdir()
        notes = work / "notes.md"
        notes.write_text("# Notes\nold line\n")
        tmp_path.chmod(0o755)
        work.chmod(0o755)
        if os.geteuid() == 0:
            for path in (work, notes):
                os.chown(path, 65534, 65534)
        model = MockModel(
            [
                lambda r: Call("Read", {"file_path": str(notes)}),
                lambda r: Call(
                    "Edit",
                    {"file_path": str(notes), "old_string": "old line", "new_string": "new line"},
                ),
            ]
        )
        with MockServer(AnthropicMessages(), model) as mock:
            profile = root / "claude-code.toml"
            profile.write_text(shipped_profile("claude-code", mock.port))
            terminal = PtyProcess(
                [
                    "env",
                    "-i",
                    *(f"{k}={v}" for k, v in env.items()),
                    str(AIRLOCK),
                    "run",
                    "--in-process",
                    "-p",
                    str(profile),
                    "-g",
                    f"{work}:rw",
                ],
                tmp_path,
                30,
                100,
            )
            before = terminal.stty()
            terminal.expect("the agent has this terminal", 60)
            # Claude Code's own question on a folder it has not seen: "Yes, I trust…".
            terminal.expect(r"trust\S*this\S*folder", 60)
            screen_ready(terminal)
            terminal.send("\x1b[B")
            time.sleep(0.3)
            terminal.send("\r")
            screen_ready(terminal)
            # Then, a few seconds in, its offer of its own "auto mode": no, Airlock is the
            # sandbox (bypass permissions stays).
            terminal.expect(r"auto mode your default", 60)
            screen_ready(terminal)
            terminal.send("\x1b[B")
            time.sleep(0.3)
            terminal.send("\r")
            screen_ready(terminal)
            for key in "Tidy my notes.":
                terminal.send(key)
                time.sleep(0.02)
            terminal.send("\r")
            terminal.expect(rb"All(\x1b\[\d*[CG]| )done", 60)
            screen_ready(terminal)
            for key in "/exit":
                terminal.send(key)
                time.sleep(0.05)
            time.sleep(0.5)
            terminal.send("\r")
            terminal.expect(r"Commit these 1 change", 120)
            assert terminal.modes()[3] & termios.ICANON  # cooked for the question again
            terminal.send("n\r")
            assert terminal.wait(60) == 0, terminal.tail()
        after = terminal.stty()
        assert after == before
        modes = terminal.modes()
        assert modes[3] & termios.ECHO and modes[3] & termios.ICANON  # not raw: sane again
        # The edit is staged, not applied; the model's requests carried the key.
        assert notes.read_text() == "# Notes\nold line\n"
        staged = list((root / "s" / "airlock").glob("sessions/*/staging/**/notes.md"))
        assert staged and staged[0].read_text() == "# Notes\nnew line\n", terminal.tail()
        asked = [r for r in model.requests if "/messages" in r.path]
        assert asked and all(r.headers["x-api-key"] == KEY for r in asked)
        assert KEY.encode() not in terminal.seen
    finally:
        if terminal is not None:
            terminal.close()
        shutil.rmtree(root, ignore_errors=True)


def screen_ready(terminal: PtyProcess, quiet: float = 1.5, timeout: float = 60) -> None:
    """Waits until the agent's screen has been still for `quiet` seconds: a full-screen
    program takes keys reliably once it has drawn."""
    deadline = time.monotonic() + timeout
    seen = len(terminal.seen)
    still_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        terminal._read(0.1)
        if len(terminal.seen) != seen:
            seen, still_since = len(terminal.seen), time.monotonic()
        elif time.monotonic() - still_since >= quiet:
            return
    raise AssertionError(f"the screen never settled: {terminal.tail()}")
