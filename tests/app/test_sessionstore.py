"""The per-session SQLite file: its own tables only, WAL, FIFO queue, monotonic ids, redaction."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from app.sessionstore import SessionFiles
from tests.factories import wait_for
from workers.events import (
    Author,
    ChatMessage,
    MessageAdded,
    PromptFinished,
    TextDelta,
    ToolCalled,
    ToolResult,
)
from workers.redact import Redactor

ALICE = Author(id=1, login="alice", name="Alice", email="alice@example.com")
BOB = Author(id=2, login="bob", name="Bob", email="bob@example.com")


def test_session_file_holds_only_session_tables_in_wal(tmp_path: Path) -> None:
    files = SessionFiles(tmp_path, Redactor())
    files.create("abc123")
    path = files.path("abc123")
    conn = sqlite3.connect(path)
    tables = {r[0] for r in conn.execute("select name from sqlite_master where type='table'")}
    assert tables == {"prompts", "events", "messages", "tool_calls"}
    assert conn.execute("pragma journal_mode").fetchone()[0] == "wal"
    files.close()


def test_prompt_queue_is_fifo_with_authors_and_positions(tmp_path: Path) -> None:
    store = SessionFiles(tmp_path, Redactor()).create("q1")
    first, pos1 = store.add_prompt("one", ALICE)
    _, pos2 = store.add_prompt("two", BOB)
    _, pos3 = store.add_prompt("three", ALICE)
    assert (pos1, pos2, pos3) == (0, 1, 2)
    claimed = store.claim_next("runner-a")
    assert claimed is not None and claimed.id == first.id and claimed.attempt == 1
    assert claimed.author() == ALICE
    assert store.pending_count() == 2
    _, pos4 = store.add_prompt("four", BOB)
    assert pos4 == 2  # behind two and three; the running one is not queued
    nxt = store.claim_next("runner-a")
    assert nxt is not None and nxt.text == "two" and nxt.author() == BOB
    assert store.cancel_queued() == 2
    assert store.claim_next("runner-a") is None
    assert [p.state for p in store.prompts()] == ["running", "running", "cancelled", "cancelled"]
    requeued = store.requeue_running()
    assert [p.text for p in requeued] == ["one", "two"]
    again = store.claim_next("runner-b")
    assert again is not None and again.text == "one" and again.attempt == 2


def test_event_ids_are_monotonic_under_concurrent_writers(tmp_path: Path) -> None:
    store = SessionFiles(tmp_path, Redactor()).create("ev1")

    def write(n: int) -> None:
        for i in range(50):
            store.append(TextDelta(text=f"{n}-{i}"))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events = store.events(0, 1000)
    assert [e.id for e in events] == list(range(1, 201))
    assert store.events(150, 10)[0].id == 151 and len(store.events(150, 10)) == 10
    assert store.last_event_id() == 200


def test_replayed_bus_entries_are_stored_once(tmp_path: Path) -> None:
    store = SessionFiles(tmp_path, Redactor()).create("dup1")
    assert store.append(TextDelta(text="a"), source="1700-0") is not None
    assert store.append(TextDelta(text="a"), source="1700-0") is None
    assert store.append(TextDelta(text="b"), source="1700-1") is not None
    assert [e.text for e in store.events() if isinstance(e, TextDelta)] == ["a", "b"]


def test_another_writer_of_the_file_never_has_its_event_ids_reused(tmp_path: Path) -> None:
    """A store remembers its newest event id instead of reading it per event; a second
    writer of the same file (a process the session moved to and back from) is noticed."""
    here = SessionFiles(tmp_path, Redactor()).create("two1")
    there = SessionFiles(tmp_path, Redactor()).get("two1")
    assert here.append(TextDelta(text="a")).id == 1  # type: ignore[union-attr]
    assert there.append(TextDelta(text="b")).id == 2  # type: ignore[union-attr]
    assert there.append(TextDelta(text="c")).id == 3  # type: ignore[union-attr]
    assert here.append(TextDelta(text="d")).id == 4  # type: ignore[union-attr]
    # and a replay after the retry is still stored once
    assert here.append(TextDelta(text="e"), source="1700-0") is not None
    assert there.append(TextDelta(text="e"), source="1700-0") is None
    texts = [e.text for e in here.events() if isinstance(e, TextDelta)]
    assert texts == ["a", "b", "c", "d", "e"]
    assert [e.id for e in here.events()] == [1, 2, 3, 4, 5]


def test_derived_rows_and_redaction(tmp_path: Path) -> None:
    redactor = Redactor(["super-secret-value-123"])
    store = SessionFiles(tmp_path, redactor).create("der1")
    prompt, _ = store.add_prompt("do it", ALICE)
    store.claim_next("r")
    store.append(MessageAdded(message=ChatMessage(role="user", text="do it"), prompt_id=prompt.id))
    store.append(
        ToolCalled(
            call_id="c1",
            name="run",
            arguments={"command": "echo super-secret-value-123"},
            prompt_id=prompt.id,
        )
    )
    store.append(
        ToolResult(
            call_id="c1",
            name="run",
            output="token ghs_abcdefghijklmnopqrstuvwxyz0123",
            prompt_id=prompt.id,
        )
    )
    store.append(PromptFinished(outcome="done", prompt_id=prompt.id))
    calls = store.tool_calls()
    assert calls[0].arguments == '{"command": "echo [redacted]"}'
    assert calls[0].output == "token [redacted]"
    assert [m.role for m in store.messages()] == ["user", "tool"]
    assert store.prompts()[0].state == "done"
    raw = store.path.read_bytes() + (
        store.path.with_name(store.path.name + "-wal").read_bytes()
        if store.path.with_name(store.path.name + "-wal").exists()
        else b""
    )
    assert b"super-secret-value-123" not in raw and b"ghs_abcdefghijklmnopqrstuvwxyz0123" not in raw


def test_attempts_of_a_prompt_make_one_conversation(tmp_path: Path) -> None:
    store = SessionFiles(tmp_path, Redactor()).create("att1")
    store.append(MessageAdded(message=ChatMessage(role="user", text="try"), prompt_id=1, attempt=1))
    store.append(
        MessageAdded(message=ChatMessage(role="assistant", text="half"), prompt_id=1, attempt=1)
    )
    store.append(TextDelta(text="who", prompt_id=1, attempt=2))
    store.append(
        MessageAdded(message=ChatMessage(role="assistant", text="whole"), prompt_id=1, attempt=2)
    )
    # A resumed attempt continues the one its runner died in.
    assert [m.text for m in store.messages()] == ["try", "half", "whole"]
    # What a resuming runner reads: the prompt's events of the asked types, every attempt.
    kept = store.events_of(["message"], prompt_id=1)
    assert [(e.type, e.attempt) for e in kept] == [("message", 1), ("message", 1), ("message", 2)]
    assert store.events_of(["message"], prompt_id=2) == []
    assert [e.attempt for e in store.events()] == [1, 1, 2, 2]


def test_a_store_closed_to_make_room_still_serves_whoever_holds_it(tmp_path: Path) -> None:
    files = SessionFiles(tmp_path, Redactor(), keep_open=1)
    held = files.create("old1")
    held.append(TextDelta(text="before"))
    files.create("new1")  # evicts old1: its connections are let go
    held.append(TextDelta(text="after"))
    assert [e.text for e in held.events() if isinstance(e, TextDelta)] == ["before", "after"]
    assert [e.id for e in files.get("old1").events()] == [1, 2]
    files.close()
    assert files.get("new1").last_event_id() == 0  # a closed set of files opens again on demand
    files.close()


def test_closing_a_file_to_make_room_holds_up_no_other_session(tmp_path: Path) -> None:
    """A close checkpoints and syncs the file: the other sessions' lookups must not wait on
    it (here the evicted store is busy writing, so its close waits for that write)."""
    files = SessionFiles(tmp_path, Redactor(), keep_open=1)
    busy = files.create("busy1")
    writing, release = threading.Event(), threading.Event()

    def long_write() -> None:
        with busy._write():  # a write in progress on the file about to be evicted
            writing.set()
            release.wait(60)

    threading.Thread(target=long_write, daemon=True).start()
    assert writing.wait(10)
    evicting = threading.Thread(target=files.create, args=("new1",), daemon=True)
    evicting.start()  # evicts busy1; its close waits for the write
    looked_up: list[int] = []
    lookup = threading.Thread(
        target=lambda: looked_up.append(files.get("new1").last_event_id()), daemon=True
    )
    try:
        wait_for(lambda: "new1" in files._open, 10, "new1 to be remembered")
        lookup.start()
        lookup.join(10)
        assert looked_up == [0], "a lookup waited for another session's file to close"
    finally:
        release.set()
    evicting.join(10)
    assert not evicting.is_alive()
    files.close()


def test_schema_is_the_table_models_and_creating_twice_keeps_the_data(tmp_path: Path) -> None:
    from sqlalchemy import inspect

    from app.db import sqlite_engine

    files = SessionFiles(tmp_path, Redactor())
    store = files.create("sch1")
    store.append(TextDelta(text="kept"))
    store.open(create=True)  # the DDL only creates what is missing
    assert store.last_event_id() == 1
    engine = sqlite_engine(store.path, writer=False)
    columns = {
        t: {c["name"] for c in inspect(engine).get_columns(t)} for t in ("events", "prompts")
    }
    indexes = {i["name"] for i in inspect(engine).get_indexes("events")}
    engine.dispose()
    assert columns["events"] == {"id", "type", "ts", "prompt_id", "attempt", "source", "data"}
    assert "runner" in columns["prompts"] and "author_email" in columns["prompts"]
    assert {"ix_events_source", "ix_events_type"} <= indexes
    files.close()
