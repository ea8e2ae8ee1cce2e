"""A fake Slack: the Web API methods the bot calls (real HTTP on 127.0.0.1, driven by the real
`slack_sdk` client) and a sender that posts Events API, slash command and interactivity
requests to Nightshift signed exactly as Slack signs them. It also speaks Socket Mode:
`apps.connections.open` (with the app-level token) returns a `ws://127.0.0.1` URL whose socket
says `hello`, then delivers envelopes the test queues and records the app's acknowledgements.

The Web API keeps channels of messages (so `conversations.replies` and `chat.update` behave),
records every call, and can answer the next calls of a method with 429 + `Retry-After`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import json
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import httpx
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse

TEAM_ID = "TACME0001"
BOT_USER_ID = "UBOTNS001"
BOT_ID = "BNS000001"
APP_ID = "ANS000001"
BOT_TOKEN = "xoxb-1111-2222-fakebottoken"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
APP_TOKEN = "xapp-1-ANS000001-1111-fakeapptoken0001"


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    at: float
    status: int = 200


@dataclass
class Message:
    channel: str
    ts: str
    text: str
    user: str | None = None
    bot_id: str | None = None
    thread_ts: str | None = None
    blocks: list[dict[str, Any]] = field(default_factory=list)
    edits: int = 0

    def as_slack(self) -> dict[str, Any]:
        data: dict[str, Any] = {"type": "message", "ts": self.ts, "text": self.text}
        if self.user:
            data["user"] = self.user
        if self.bot_id:
            data["bot_id"] = self.bot_id
        if self.thread_ts:
            data["thread_ts"] = self.thread_ts
        if self.blocks:
            data["blocks"] = self.blocks
        return data


class FakeSlack:
    """State of the fake workspace and every Web API call made to it."""

    def __init__(self) -> None:
        self.url = ""
        self.lock = threading.Lock()
        self.calls: list[Call] = []
        self.messages: dict[tuple[str, str], Message] = {}
        self.users: dict[str, dict[str, Any]] = {}
        self.failures: dict[str, list[tuple[int, str | None]]] = {}
        self.unjoined: set[str] = set()
        """Channels the bot is not in: chat.postMessage answers not_in_channel."""
        self._clock = itertools.count(1)
        # Socket Mode: tickets handed out by apps.connections.open, sockets that said hello,
        # envelopes waiting to be sent, and the app's acknowledgements by envelope id.
        self.tickets: set[str] = set()
        self.sockets = 0
        self.outbox: queue.Queue[dict[str, Any]] = queue.Queue()
        self.acks: dict[str, dict[str, Any]] = {}
        self.acked = threading.Condition(self.lock)

    # ------------------------------------------------------------ set-up by tests

    def add_user(self, user_id: str, name: str, real_name: str = "") -> None:
        self.users[user_id] = {
            "id": user_id,
            "team_id": TEAM_ID,
            "name": name,
            "real_name": real_name or name,
            "is_bot": False,
            "profile": {"display_name": name, "real_name": real_name or name},
        }

    def fail_next(
        self, method: str, status: int = 429, retry_after: str | None = "1", times: int = 1
    ) -> None:
        with self.lock:
            self.failures.setdefault(method, []).extend([(status, retry_after)] * times)

    def next_ts(self) -> str:
        return f"{int(time.time())}.{next(self._clock):06d}"

    def post_as_person(
        self, channel: str, user: str, text: str, thread_ts: str | None = None
    ) -> Message:
        """A message someone writes in Slack (the event for it is sent separately)."""
        message = Message(channel, self.next_ts(), text, user=user, thread_ts=thread_ts)
        with self.lock:
            self.messages[(channel, message.ts)] = message
        return message

    # ------------------------------------------------------------ reading what happened

    def of(self, method: str) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.method == method and c.status == 200]

    def attempts(self, method: str) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.method == method]

    def message(self, channel: str, ts: str) -> Message | None:
        with self.lock:
            return self.messages.get((channel, ts))

    def thread(self, channel: str, thread_ts: str) -> list[Message]:
        with self.lock:
            found = [
                m
                for (ch, _), m in self.messages.items()
                if ch == channel and (m.ts == thread_ts or m.thread_ts == thread_ts)
            ]
        return sorted(found, key=lambda m: m.ts)

    def find(self, channel: str, fragment: str) -> Message | None:
        """The first top-level message in `channel` whose text contains `fragment`."""
        with self.lock:
            found = [
                m
                for (ch, _), m in self.messages.items()
                if ch == channel and m.thread_ts is None and fragment in m.text
            ]
        return min(found, key=lambda m: m.ts) if found else None

    def bot_replies(self, channel: str, thread_ts: str) -> list[Message]:
        return [m for m in self.thread(channel, thread_ts) if m.bot_id and m.ts != thread_ts]

    # ------------------------------------------------------------ the Web API

    def handle(
        self, method: str, params: dict[str, Any], token: str
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self.lock:
            queued = self.failures.get(method)
            failure = queued.pop(0) if queued else None
            self.calls.append(Call(method, params, time.time(), failure[0] if failure else 200))
        if failure is not None:
            status, retry_after = failure
            headers = {"Retry-After": retry_after} if retry_after is not None else {}
            error = "ratelimited" if status == 429 else "fatal_error"
            return status, {"ok": False, "error": error}, headers
        if method == "apps.connections.open":
            return 200, self._apps_connections_open(token), {}
        if token != BOT_TOKEN:
            return 200, {"ok": False, "error": "invalid_auth"}, {}
        handler = getattr(self, "_" + method.replace(".", "_"), None)
        if handler is None:
            return 200, {"ok": False, "error": "unknown_method"}, {}
        return 200, handler(params), {}

    def _apps_connections_open(self, token: str) -> dict[str, Any]:
        if not token.startswith("xapp-"):
            return {"ok": False, "error": "not_allowed_token_type"}
        if token != APP_TOKEN:
            return {"ok": False, "error": "invalid_auth"}
        ticket = uuid.uuid4().hex
        with self.lock:
            self.tickets.add(ticket)
        base = self.url.removesuffix("/").removesuffix("/api").replace("http://", "ws://", 1)
        return {"ok": True, "url": f"{base}/link/?ticket={ticket}&app_id={APP_ID}"}

    # ------------------------------------------------------------ Socket Mode

    def socket_send(self, kind: str, payload: dict[str, Any], retry_attempt: int = 0) -> str:
        """Queue one envelope (`events_api`, `slash_commands`, `interactive`); its id."""
        envelope_id = str(uuid.uuid4())
        self.outbox.put(
            {
                "envelope_id": envelope_id,
                "payload": payload,
                "type": kind,
                "accepts_response_payload": kind != "events_api",
                "retry_attempt": retry_attempt,
                "retry_reason": "timeout" if retry_attempt else "",
            }
        )
        return envelope_id

    def wait_ack(self, envelope_id: str, timeout: float = 10) -> dict[str, Any]:
        """The app's acknowledgement of an envelope (AssertionError when none comes)."""
        with self.acked:
            if not self.acked.wait_for(lambda: envelope_id in self.acks, timeout):
                raise AssertionError(f"envelope {envelope_id} was not acknowledged")
            return self.acks[envelope_id]

    def wait_socket(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not self.sockets:
            if time.monotonic() > deadline:
                raise AssertionError("the app did not open a Socket Mode connection")
            time.sleep(0.02)

    async def serve_socket(self, ws: WebSocket) -> None:
        ticket = ws.query_params.get("ticket", "")
        with self.lock:
            known = ticket in self.tickets
            self.tickets.discard(ticket)
        if not known:
            await ws.close(code=1008)
            return
        await ws.accept()
        hello = {
            "type": "hello",
            "num_connections": 1,
            "debug_info": {"host": "fake-slack", "approximate_connection_time": 18060},
            "connection_info": {"app_id": APP_ID},
        }
        await ws.send_json(hello)
        with self.lock:
            self.sockets += 1

        async def receive() -> None:
            while True:
                message = json.loads(await ws.receive_text())
                if "envelope_id" in message:
                    with self.acked:
                        self.acks[message["envelope_id"]] = message
                        self.acked.notify_all()

        receiving = asyncio.ensure_future(receive())
        try:
            while not receiving.done():
                try:
                    envelope = self.outbox.get_nowait()
                except queue.Empty:
                    await asyncio.sleep(0.02)
                    continue
                await ws.send_json(envelope)
        except WebSocketDisconnect:
            pass
        finally:
            receiving.cancel()
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
                await receiving
            with self.lock:
                self.sockets -= 1

    def _auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": "https://acme.slack.com/",
            "team": "Acme",
            "user": "nightshift",
            "team_id": TEAM_ID,
            "user_id": BOT_USER_ID,
            "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }

    def _chat_postMessage(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = str(params.get("channel") or "")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if channel in self.unjoined:
            return {"ok": False, "error": "not_in_channel"}
        if channel.startswith("U"):
            channel = "D" + channel[1:]  # a direct message with that user
        if not params.get("text") and not params.get("blocks"):
            return {"ok": False, "error": "no_text"}
        message = Message(
            channel,
            self.next_ts(),
            str(params.get("text") or ""),
            bot_id=BOT_ID,
            user=BOT_USER_ID,
            thread_ts=params.get("thread_ts") or None,
            blocks=_blocks(params.get("blocks")),
        )
        with self.lock:
            self.messages[(channel, message.ts)] = message
        return {"ok": True, "channel": channel, "ts": message.ts, "message": message.as_slack()}

    def _chat_update(self, params: dict[str, Any]) -> dict[str, Any]:
        key = (str(params.get("channel")), str(params.get("ts")))
        with self.lock:
            message = self.messages.get(key)
            if message is None:
                return {"ok": False, "error": "message_not_found"}
            if message.bot_id != BOT_ID:
                return {"ok": False, "error": "cant_update_message"}
            message.text = str(params.get("text") or message.text)
            if "blocks" in params:
                message.blocks = _blocks(params.get("blocks"))
            message.edits += 1
        return {"ok": True, "channel": key[0], "ts": key[1], "text": message.text}

    def _chat_postEphemeral(self, params: dict[str, Any]) -> dict[str, Any]:
        if not params.get("user") or not params.get("channel"):
            return {"ok": False, "error": "invalid_arguments"}
        return {"ok": True, "message_ts": self.next_ts()}

    def _reactions_add(self, params: dict[str, Any]) -> dict[str, Any]:
        key = (str(params.get("channel")), str(params.get("timestamp")))
        if key not in self.messages:
            return {"ok": False, "error": "message_not_found"}
        already = [
            c
            for c in self.of("reactions.add")[:-1]
            if (c.params.get("channel"), c.params.get("timestamp"), c.params.get("name"))
            == (*key, params.get("name"))
        ]
        return {"ok": False, "error": "already_reacted"} if already else {"ok": True}

    def _users_info(self, params: dict[str, Any]) -> dict[str, Any]:
        user = self.users.get(str(params.get("user")))
        return {"ok": True, "user": user} if user else {"ok": False, "error": "user_not_found"}

    def _conversations_replies(self, params: dict[str, Any]) -> dict[str, Any]:
        channel, ts = str(params.get("channel")), str(params.get("ts"))
        found = self.thread(channel, ts)
        if not found:
            return {"ok": False, "error": "thread_not_found"}
        limit = int(params.get("limit") or 100)
        return {
            "ok": True,
            "messages": [m.as_slack() for m in found[:limit]],
            "has_more": len(found) > limit,
        }

    def _views_open(self, params: dict[str, Any]) -> dict[str, Any]:
        if not params.get("trigger_id"):
            return {"ok": False, "error": "invalid_trigger_id"}
        view = params.get("view")
        view = json.loads(view) if isinstance(view, str) else view
        return {"ok": True, "view": {"id": "V" + uuid.uuid4().hex[:8].upper(), **(view or {})}}


def _blocks(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return list(json.loads(value))
    return list(value or [])


def slack_api_app(slack: FakeSlack) -> FastAPI:
    app = FastAPI()

    @app.api_route("/api/{method}", methods=["GET", "POST"])
    async def api(method: str, request: Request) -> JSONResponse:
        params: dict[str, Any] = dict(request.query_params)
        body = await request.body()
        kind = request.headers.get("content-type", "")
        if body and "json" in kind:
            params.update(json.loads(body))
        elif body:
            params.update(dict(parse_qsl(body.decode())))
        auth = request.headers.get("authorization", "")
        token = auth.removeprefix("Bearer ").strip() or str(params.pop("token", ""))
        status, data, headers = slack.handle(method, params, token)
        return JSONResponse(data, status_code=status, headers=headers)

    @app.websocket("/link/")
    async def link(ws: WebSocket) -> None:
        await slack.serve_socket(ws)

    return app


# ---------------------------------------------------------------- requests from Slack


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """`X-Slack-Signature`: v0= HMAC-SHA256 of `v0:{timestamp}:{body}` with the signing secret."""
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


class SlackSender:
    """Posts what Slack would post to the app's request URL, signed."""

    def __init__(self, url: str, secret: str = SIGNING_SECRET) -> None:
        self.url = url.rstrip("/") + "/slack/events"
        self.secret = secret
        self._ids = itertools.count(1)

    def post(
        self,
        body: bytes,
        content_type: str,
        *,
        timestamp: int | None = None,
        secret: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        ts = str(int(time.time()) if timestamp is None else timestamp)
        sent = {
            "Content-Type": content_type,
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": signature(secret or self.secret, ts, body),
            **(headers or {}),
        }
        return httpx.post(self.url, content=body, headers=sent, timeout=10)

    def envelope(self, event: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
        return {
            "token": "legacy-verification-token",
            "team_id": TEAM_ID,
            "api_app_id": APP_ID,
            "event": event,
            "type": "event_callback",
            "event_id": event_id or f"Ev{next(self._ids):08d}{uuid.uuid4().hex[:4].upper()}",
            "event_time": int(time.time()),
            "authorizations": [
                {
                    "team_id": TEAM_ID,
                    "user_id": BOT_USER_ID,
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
            "is_ext_shared_channel": False,
        }

    def event(
        self,
        event: dict[str, Any],
        *,
        event_id: str | None = None,
        retry_num: int | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        body = json.dumps(self.envelope(event, event_id)).encode()
        headers = {}
        if retry_num is not None:
            headers = {"X-Slack-Retry-Num": str(retry_num), "X-Slack-Retry-Reason": "http_timeout"}
        return self.post(body, "application/json", headers=headers, **kwargs)

    def command(
        self, user: str, channel: str, text: str, user_name: str = "someone"
    ) -> httpx.Response:
        form = {
            "token": "legacy-verification-token",
            "team_id": TEAM_ID,
            "team_domain": "acme",
            "channel_id": channel,
            "channel_name": "general",
            "user_id": user,
            "user_name": user_name,
            "command": "/nightshift",
            "text": text,
            "api_app_id": APP_ID,
            "response_url": "https://hooks.slack.com/commands/T/1/x",
            "trigger_id": f"{int(time.time())}.{uuid.uuid4().hex[:10]}",
        }
        return self.post(
            httpx.QueryParams(form).__str__().encode(), "application/x-www-form-urlencoded"
        )

    def interaction(self, payload: dict[str, Any]) -> httpx.Response:
        body = httpx.QueryParams({"payload": json.dumps(payload)}).__str__().encode()
        return self.post(body, "application/x-www-form-urlencoded")

    def pick(self, user: str, channel: str, message: Message, value: str) -> httpx.Response:
        """Someone chooses `value` in the repo picker of `message`."""
        actions = next(b for b in message.blocks if b["type"] == "actions")
        select = actions["elements"][0]
        option = next(o for o in select["options"] if o["value"] == value)
        return self.interaction(
            {
                "type": "block_actions",
                "user": {"id": user, "username": "someone", "team_id": TEAM_ID},
                "api_app_id": APP_ID,
                "team": {"id": TEAM_ID, "domain": "acme"},
                "container": {
                    "type": "message",
                    "message_ts": message.ts,
                    "channel_id": channel,
                    "is_ephemeral": False,
                },
                "trigger_id": f"{int(time.time())}.trigger",
                "channel": {"id": channel, "name": "general"},
                "message": message.as_slack(),
                "response_url": "https://hooks.slack.com/actions/T/1/x",
                "actions": [
                    {
                        "type": "static_select",
                        "action_id": select["action_id"],
                        "block_id": actions["block_id"],
                        "selected_option": option,
                        "action_ts": str(time.time()),
                    }
                ],
            }
        )

    def submit_modal(
        self, user: str, view: dict[str, Any], repo: str | None, prompt: str
    ) -> httpx.Response:
        values: dict[str, Any] = {
            "prompt": {"prompt": {"type": "plain_text_input", "value": prompt}},
            "repo": {"repo": {"type": "static_select", "selected_option": None}},
        }
        if repo is not None:
            values["repo"]["repo"]["selected_option"] = {
                "text": {"type": "plain_text", "text": repo},
                "value": repo,
            }
        return self.interaction(
            {
                "type": "view_submission",
                "team": {"id": TEAM_ID, "domain": "acme"},
                "user": {"id": user, "username": "someone", "team_id": TEAM_ID},
                "api_app_id": APP_ID,
                "trigger_id": f"{int(time.time())}.trigger",
                "view": {**view, "id": "VMODAL1", "state": {"values": values}},
            }
        )


# ---------------------------------------------------------------- a workspace wired to Nightshift


@dataclass
class SlackWorld:
    """Nightshift (runtime + HTTP server) with the bot configured against the fake Slack."""

    runtime: Any
    url: str
    fake: FakeSlack
    sender: SlackSender
    channel: str = "CGENERAL01"
    socket: bool = False
    """Deliver events over the Socket Mode connection instead of signed HTTP requests."""

    def deliver(self, event: dict[str, Any]) -> None:
        """Send one Events API event to the bot the way this world is set up, and see it acked."""
        if self.socket:
            self.fake.wait_socket()
            self.fake.wait_ack(self.fake.socket_send("events_api", self.sender.envelope(event)))
            return
        response = self.sender.event(event)
        assert response.status_code == 200, response.text

    def mention(
        self, user: str, text: str, thread_ts: str | None = None, channel: str | None = None
    ) -> Message:
        """`user` writes `@Nightshift text` (in a thread when `thread_ts` is set)."""
        channel = channel or self.channel
        message = self.fake.post_as_person(channel, user, f"<@{BOT_USER_ID}> {text}", thread_ts)
        event = {
            "type": "app_mention",
            "user": user,
            "text": message.text,
            "ts": message.ts,
            "channel": channel,
            "event_ts": message.ts,
        }
        if thread_ts:
            event["thread_ts"] = thread_ts
        self.deliver(event)
        return message

    def reply(self, user: str, text: str, thread_ts: str, channel: str | None = None) -> Message:
        """`user` replies in a thread without mentioning the bot."""
        channel = channel or self.channel
        message = self.fake.post_as_person(channel, user, text, thread_ts)
        response = self.sender.event(
            {
                "type": "message",
                "channel": channel,
                "user": user,
                "text": text,
                "ts": message.ts,
                "thread_ts": thread_ts,
                "event_ts": message.ts,
                "channel_type": "channel",
            }
        )
        assert response.status_code == 200, response.text
        return message

    def react(self, user: str, channel: str, ts: str, reaction: str = "octagonal_sign") -> None:
        response = self.sender.event(
            {
                "type": "reaction_added",
                "user": user,
                "reaction": reaction,
                "item": {"type": "message", "channel": channel, "ts": ts},
                "item_user": BOT_USER_ID,
                "event_ts": self.fake.next_ts(),
            }
        )
        assert response.status_code == 200, response.text

    def status_message(self, thread_ts: str, channel: str | None = None) -> Message | None:
        """The bot's status message in a thread (the one linking to the web viewer)."""
        for message in self.fake.bot_replies(channel or self.channel, thread_ts):
            if "Open in Nightshift" in json.dumps(message.blocks):
                return message
        return None

    def says(self, thread_ts: str, fragment: str, channel: str | None = None) -> Message | None:
        """The bot's reply in a thread whose text contains `fragment`, if any."""
        for message in self.fake.bot_replies(channel or self.channel, thread_ts):
            if fragment in message.text:
                return message
        return None
