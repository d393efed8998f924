"""Scripted mocks of the model APIs the shipped agents talk to, on the host's loopback: each
answers the agent's next request with the next step of a script (a tool call), found from how
many tool results the conversation already holds, and records every request it got."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

WAIT = "airlock-mock-wait"  # in a tool result: the step did not happen yet, ask again
# A step: what the model asks for next, from what it has seen (the tool results so far).
Step = Callable[[list[str]], "Call | None"]


@dataclass(frozen=True, slots=True)
class Call:
    """A tool call: `tool` is the agent's own tool name, or a role ('shell', 'mcp:NAME')
    the mock maps onto the tools the agent offered."""

    tool: str
    arguments: dict[str, Any]


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class MockModel:
    """The script and what the agent sent."""

    steps: list[Step]
    requests: list[Recorded] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)  # time.perf_counter() of each request
    lock: threading.Lock = field(default_factory=threading.Lock)

    errors: list[str] = field(default_factory=list)

    def next_call(self, results: list[str]) -> Call | None:
        """The next step; when the script cannot go on (a step finds what it needs missing),
        the model stops, and the error is kept for the test to show."""
        results = done(results)
        index = len(results)
        if index >= len(self.steps):
            return None
        try:
            return self.steps[index](results)
        except AssertionError as e:
            self.errors.append(str(e))
            return None


def done(results: list[str]) -> list[str]:
    """The tool results of steps that happened (not of a step told to wait)."""
    return [r for r in results if WAIT not in r]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: MockServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _read(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {"raw": raw.decode(errors="replace")}
        with self.server.model.lock:
            self.server.model.arrived.append(time.perf_counter())
            self.server.model.requests.append(
                Recorded(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            )
        return body if isinstance(body, dict) else {}

    def do_GET(self) -> None:
        self._read()
        self._json(200, self.server.api.on_get(self.path))

    def do_POST(self) -> None:
        body = self._read()
        answer = self.server.api.on_post(self.path, body, self.server.model)
        if isinstance(answer, list):
            self._sse(answer)
        else:
            self._json(200, answer)

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _json(self, status: int, value: Any) -> None:
        data = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _sse(self, events: list[tuple[str, Any]]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for name, data in events:
            head = f"event: {name}\n" if name else ""
            text = data if isinstance(data, str) else json.dumps(data)  # "[DONE]" as is
            chunk = f"{head}data: {text}\n\n".encode()
            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")


class Api:
    def __init__(self) -> None:
        self.tools_seen: list[str] = []

    def on_get(self, path: str) -> Any:
        return {}

    def on_post(
        self, path: str, body: dict[str, Any], model: MockModel
    ) -> dict[str, Any] | list[tuple[str, dict[str, Any]]]:
        raise NotImplementedError


class MockServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, api: Api, model: MockModel) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.api = api
        self.model = model
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def __enter__(self) -> MockServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


def _text(value: Any) -> str:
    """The text of a tool result, whatever shape the agent sent it in."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(_text(v) for v in value)
    if isinstance(value, dict):
        return _text(value.get("text", value.get("content", value.get("output", ""))))
    return ""


class AnthropicMessages(Api):
    """POST /v1/messages, answered as a stream of server-sent events when asked."""

    def __init__(self, model_name: str = "claude-mock") -> None:
        super().__init__()
        self.model_name = model_name
        self.counter = 0
        self.tools_seen: list[str] = []

    def on_post(
        self, path: str, body: dict[str, Any], model: MockModel
    ) -> dict[str, Any] | list[tuple[str, dict[str, Any]]]:
        if "count_tokens" in path:
            return {"input_tokens": 10}
        results = [
            _text(block.get("content"))
            for message in body.get("messages", [])
            if isinstance(message.get("content"), list)
            for block in message["content"]
            if isinstance(block, dict) and block.get("type") == "tool_result"
        ]
        tools = [str(t.get("name")) for t in body.get("tools", []) if isinstance(t, dict)]
        if tools:
            self.tools_seen = tools
        call = model.next_call(results) if tools else None
        self.counter += 1
        if call is not None:
            name = call.tool
            if name.startswith("mcp:"):
                name = next((t for t in tools if t.endswith("__" + name[4:])), name)
            block = {
                "type": "tool_use",
                "id": f"toolu_{self.counter:04d}",
                "name": name,
                "input": {},
            }
            delta = {"type": "input_json_delta", "partial_json": json.dumps(call.arguments)}
            stop = "tool_use"
        else:
            block = {"type": "text", "text": ""}
            delta = {"type": "text_delta", "text": "All done." if tools else "Mock title"}
            stop = "end_turn"
        message = {
            "id": f"msg_{self.counter:04d}",
            "type": "message",
            "role": "assistant",
            "model": self.model_name,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 1},
        }
        if not body.get("stream"):
            content = dict(block)
            if call is not None:
                content["input"] = call.arguments
            else:
                content["text"] = delta["text"]
            return {**message, "content": [content], "stop_reason": stop}
        return [
            ("message_start", {"type": "message_start", "message": message}),
            (
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": block},
            ),
            ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": {"output_tokens": 5},
                },
            ),
            ("message_stop", {"type": "message_stop"}),
        ]


class OpenAIResponses(Api):
    """POST /responses (Codex), answered as a stream of server-sent events."""

    def __init__(self) -> None:
        super().__init__()
        self.counter = 0

    def on_get(self, path: str) -> Any:
        return {"object": "list", "data": [], "models": []}

    def on_post(
        self, path: str, body: dict[str, Any], model: MockModel
    ) -> dict[str, Any] | list[tuple[str, dict[str, Any]]]:
        items = [i for i in body.get("input", []) if isinstance(i, dict)]
        results = [
            _text(i.get("output"))
            for i in items
            if i.get("type") in ("function_call_output", "custom_tool_call_output")
        ]
        # Codex offers tools at the top level or, in its code mode, as an input item of
        # namespaces whose `exec` tool runs JavaScript that calls the others.
        tools: dict[str, str] = {}
        offered = list(body.get("tools", [])) + [
            t for i in items if i.get("type") == "additional_tools" for t in i.get("tools", [])
        ]
        while offered:
            tool = offered.pop()
            if isinstance(tool, dict) and tool.get("name"):
                if tool.get("type") == "namespace":
                    offered.extend(tool.get("tools", []))
                else:
                    tools[str(tool["name"])] = str(tool.get("type"))
        self.tools_seen = sorted(tools)
        call = model.next_call(results)
        self.counter += 1
        response = {
            "id": f"resp_{self.counter:04d}",
            "object": "response",
            "status": "completed",
            "model": body.get("model", "mock"),
            "output": [],
        }
        events: list[tuple[str, dict[str, Any]]] = [
            ("response.created", {"type": "response.created", "response": response})
        ]
        if call is None:
            item: dict[str, Any] = {
                "type": "message",
                "role": "assistant",
                "id": f"msg_{self.counter:04d}",
                "status": "completed",
                "content": [{"type": "output_text", "text": "All done.", "annotations": []}],
            }
        else:
            name, arguments = self._map(call, tools)
            if tools.get(name) == "custom":
                item = {
                    "type": "custom_tool_call",
                    "id": f"ctc_{self.counter:04d}",
                    "call_id": f"call_{self.counter:04d}",
                    "name": name,
                    "input": arguments.get("input", ""),
                    "status": "completed",
                }
            else:
                item = {
                    "type": "function_call",
                    "id": f"fc_{self.counter:04d}",
                    "call_id": f"call_{self.counter:04d}",
                    "name": name,
                    "arguments": json.dumps(arguments),
                    "status": "completed",
                }
        events.append(
            (
                "response.output_item.done",
                {"type": "response.output_item.done", "output_index": 0, "item": item},
            )
        )
        usage = {
            "input_tokens": 10,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 5,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 15,
        }
        events.append(
            (
                "response.completed",
                {"type": "response.completed", "response": {**response, "usage": usage}},
            )
        )
        return events

    @staticmethod
    def _map(call: Call, tools: dict[str, str]) -> tuple[str, dict[str, Any]]:
        if tools.get("exec") == "custom":
            return "exec", {"input": OpenAIResponses._javascript(call)}
        if call.tool.startswith("mcp:"):
            wanted = call.tool[4:]
            name = next((t for t in tools if re.search(rf"(^|__|\.){wanted}$", t)), wanted)
            return name, call.arguments
        if call.tool == "shell":
            command = call.arguments["command"]
            if "shell_command" in tools:
                return "shell_command", {"command": command}
            if "exec_command" in tools:
                return "exec_command", {"cmd": command}
            return "shell", {"command": ["bash", "-lc", command]}
        return call.tool, call.arguments

    @staticmethod
    def _javascript(call: Call) -> str:
        """Codex's code mode: the call as the script a model would write for `exec`."""
        if call.tool == "shell":
            command = json.dumps(call.arguments["command"])
            return (
                f"const r = await tools.exec_command({{cmd: {command}, "
                "yield_time_ms: 30000});\ntext(r.output);\n"
            )
        if call.tool == "apply_patch":
            return (
                f"const r = await tools.apply_patch({json.dumps(call.arguments['input'])});\n"
                "text(JSON.stringify(r));\n"
            )
        if call.tool.startswith("mcp:"):
            name = "mcp__airlock__" + call.tool[4:]
            # A tool missing from `tools` is reported with what there is, for the test's eyes.
            # Codex does not wait for MCP servers before the first turn, and a mock answers
            # at once: until the server is up, the script waits a second and says so, and
            # the mock asks again.
            return (
                f"if (typeof tools.{name} !== 'function') {{\n"
                "  await new Promise(r => setTimeout(r, 1000));\n"
                f"  text('{WAIT} for {name}: ' + JSON.stringify(ALL_TOOLS.map(t => t.name)));\n"
                "  exit();\n}\n"
                f"const r = await tools.{name}({json.dumps(call.arguments)});\n"
                "text(r.content.map(c => c.text).join('\\n'));\n"
            )
        return f"text(JSON.stringify(await tools.{call.tool}({json.dumps(call.arguments)})));\n"


class GeminiApi(Api):
    """Gemini's API (Gemini CLI): models/NAME:streamGenerateContent?alt=sse and
    :generateContent, function calls as parts."""

    def on_get(self, path: str) -> Any:
        return {"models": []}

    def on_post(
        self, path: str, body: dict[str, Any], model: MockModel
    ) -> dict[str, Any] | list[tuple[str, dict[str, Any]]]:
        if ":countTokens" in path:
            return {"totalTokens": 10}
        results = [
            _text(part["functionResponse"].get("response"))
            for content in body.get("contents", [])
            if isinstance(content, dict)
            for part in content.get("parts", [])
            if isinstance(part, dict) and isinstance(part.get("functionResponse"), dict)
        ]
        tools = [
            str(d.get("name"))
            for t in body.get("tools", [])
            if isinstance(t, dict)
            for d in t.get("functionDeclarations", [])
            if isinstance(d, dict)
        ]
        if tools:
            self.tools_seen = tools
        call = model.next_call(results) if tools else None
        if call is not None:
            name = call.tool
            if name.startswith("mcp:"):
                name = next(
                    (
                        t
                        for t in tools
                        if t == name[4:]
                        or t.endswith("__" + name[4:])
                        or t.endswith("_" + name[4:])
                    ),
                    name,
                )
            part: dict[str, Any] = {"functionCall": {"name": name, "args": call.arguments}}
        elif tools:
            part = {"text": "All done."}
        else:
            # Side questions (is the model done? a summary?): a JSON answer that ends the turn.
            part = {"text": json.dumps({"reasoning": "done", "next_speaker": "user"})}
        answer = {
            "candidates": [
                {"content": {"role": "model", "parts": [part]}, "finishReason": "STOP", "index": 0}
            ],
            "usageMetadata": {
                "promptTokenCount": 10,
                "candidatesTokenCount": 5,
                "totalTokenCount": 15,
            },
            "modelVersion": "gemini-mock",
        }
        if ":streamGenerateContent" in path:
            return [("", answer)]
        return answer


class ChatCompletions(Api):
    """OpenAI's Chat Completions (aider, through litellm): aider edits by text, not tool
    calls, so the script is the reply to the task; anything else (a commit message) gets a
    short line."""

    def __init__(
        self, reply: str, task: str, turns: dict[str, Callable[[str], str]] | None = None
    ) -> None:
        super().__init__()
        self.reply = reply
        self.task = task
        # More turns of a conversation: the user's line -> the reply, made from everything
        # the model was sent (what the commands of earlier replies printed, for instance).
        self.turns = turns or {}
        self.counter = 0

    def on_get(self, path: str) -> Any:
        return {"object": "list", "data": [{"id": "gpt-4o", "object": "model"}]}

    def on_post(
        self, path: str, body: dict[str, Any], model: MockModel
    ) -> dict[str, Any] | list[tuple[str, dict[str, Any]]]:
        messages = [m for m in body.get("messages", []) if isinstance(m, dict)]
        users = [m for m in messages if m.get("role") == "user"]
        # aider's prompt has example exchanges of its own, and may end with a system
        # reminder: the turn is the last user message.
        last = _text(users[-1].get("content")) if users else ""
        text = self.reply if self.task in last else "Tidy the notes"
        for line, reply in self.turns.items():
            if line in last:
                text = reply("\n".join(_text(m.get("content")) for m in messages))
        self.counter += 1
        ident = f"chatcmpl-{self.counter:04d}"
        usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        if not body.get("stream"):
            return {
                "id": ident,
                "object": "chat.completion",
                "created": 0,
                "model": body.get("model", "gpt-4o"),
                "usage": usage,
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": text},
                    }
                ],
            }
        chunk = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": 0,
            "model": body.get("model", "gpt-4o"),
        }
        return [
            (
                "",
                {
                    **chunk,
                    "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}}],
                },
            ),
            (
                "",
                {
                    **chunk,
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                    "usage": usage,
                },
            ),
            ("", "[DONE]"),
        ]
