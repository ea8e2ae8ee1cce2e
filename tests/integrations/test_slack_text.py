"""Slack message text, Block Kit, and the request signature the fake computes."""

from __future__ import annotations

import json
import time

from slack_sdk.signature import SignatureVerifier

from integrations.slack.blocks import StatusView, repo_picker, status_message
from integrations.slack.text import (
    RepoRef,
    is_stop,
    links,
    mentions,
    quote,
    repo_refs,
    split_model,
    split_new,
    to_plain,
)
from tests.fakes.slack import signature

BOT = "UBOTNS001"


def test_mentions_and_plain_text() -> None:
    text = f"<@{BOT}> please ask <@UALICE0001|alice> about <#C0001|deploys> &amp; <https://example.com/a|the doc> &lt;3"
    assert mentions(text, BOT) and not mentions(text, "UOTHER")
    assert (
        to_plain(text, BOT)
        == "please ask @alice about #deploys & the doc (https://example.com/a) <3"
    )
    assert to_plain("<!here> look at <https://x.io/y>", BOT) == "@here look at https://x.io/y"
    assert links("see <https://a.io/x|a> and https://b.io/y.") == [
        "https://a.io/x",
        "https://b.io/y",
    ]


def test_repo_references_from_repo_prefix_and_urls() -> None:
    text = "fix it repo:acme/web and see <https://github.com/acme/api/pull/12|#12> repo:ACME/web"
    assert repo_refs(text) == [
        RepoRef("acme/web"),
        RepoRef("acme/api", "https://github.com/acme/api/pull/12"),
    ]
    assert repo_refs("repo:proj.") == [RepoRef("proj")]
    assert repo_refs("repo: x") == [RepoRef("x")]
    assert repo_refs("https://gitlab.example.com/team/tool.git") == [
        RepoRef("team/tool", "https://gitlab.example.com/team/tool.git")
    ]
    assert repo_refs("no repo here, and myrepo:nope") == []
    assert to_plain(f"<@{BOT}> fix the footer repo:acme/web please", BOT) == "fix the footer please"


def test_stop_and_new_are_whole_commands() -> None:
    for text in ("stop", "Stop!", " STOP. ", "cancel", "please stop"):
        assert is_stop(text), text
    for text in ("stop using tabs", "don't stop", "stopwatch"):
        assert not is_stop(text), text
    assert split_new("new: add tests") == (True, "add tests")
    assert split_new("New:add tests") == (True, "add tests")
    assert split_new("new tests for the parser") == (False, "new tests for the parser")


def test_model_anywhere_in_the_text_is_taken_out() -> None:
    assert split_model("model:openai:gpt-4.1 fix the test") == ("openai:gpt-4.1", "fix the test")
    assert split_model("fix model:anthropic:claude-sonnet-4-5 it") == (
        "anthropic:claude-sonnet-4-5",
        "fix it",
    )
    assert split_model("fix the test, Model:openai:gpt-4.1.") == (
        "openai:gpt-4.1",
        "fix the test, .",
    )
    assert split_model("a\nmodel:x:y\nb") == ("x:y", "a\n \nb")
    assert split_model("the data model: users") == (None, "the data model: users")
    assert split_model("remodel:the kitchen") == (None, "remodel:the kitchen")
    assert split_model("no model here") == (None, "no model here")


def test_quote_escapes_and_shortens() -> None:
    assert quote("a <b> & c") == "> a &lt;b&gt; &amp; c"
    assert quote("x" * 500, 10).endswith("…") and len(quote("x" * 500, 10)) == 12


def _view(**extra: object) -> StatusView:
    values: dict[str, object] = {
        "session_id": "abc123def456",
        "url": "http://ns.example/sessions/abc123def456",
        "repo": "acme/web",
        "status": "running",
        "title": "Fix the <footer>",
    }
    values.update(extra)
    return StatusView(**values)  # type: ignore[arg-type]


def test_status_message_shows_progress_then_the_pr_or_the_reason() -> None:
    text, blocks = status_message(_view(activity="$ pytest -q", queued=2, participants=("U1",)))
    rendered = json.dumps(blocks)
    assert "Working" in rendered and "$ pytest -q" in rendered and "2 follow-ups queued" in rendered
    assert (
        "Fix the &lt;footer&gt;" in rendered
        and "<http://ns.example/sessions/abc123def456|Open in Nightshift>" in rendered
    )
    assert "react :octagonal_sign:" in rendered and "<@U1>" in rendered
    text, blocks = status_message(
        _view(status="finished", pr_url="http://ns.example/pr/3", pr_number=3, summary="Done it.")
    )
    rendered = json.dumps(blocks)
    assert (
        "<http://ns.example/pr/3|Pull request #3>" in rendered and "http://ns.example/pr/3" in text
    )
    assert "Done it." in rendered and "follow up" in rendered
    text, blocks = status_message(_view(status="failed", failure="the sandbox ran out of memory"))
    assert "the sandbox ran out of memory" in text and "Why:" in json.dumps(blocks)
    _, blocks = status_message(_view(status="finished"))
    assert "no pull request" in json.dumps(blocks)


def test_repo_picker_is_a_static_select_within_slack_limits() -> None:
    options = [(f"repo-{i}", "d" * 200) for i in range(150)]
    text, blocks = repo_picker(7, "UALICE0001", "do it", options, "Which one?")
    actions = next(b for b in blocks if b["type"] == "actions")
    select = actions["elements"][0]
    assert actions["block_id"] == "nightshift_pick:7" and select["type"] == "static_select"
    assert len(select["options"]) == 100
    assert all(len(o["description"]["text"]) <= 75 for o in select["options"])
    assert "<@UALICE0001>" in text


def test_the_fake_signs_requests_exactly_as_slack_does() -> None:
    secret = "8f742231b10e8888abcd99yyyzzz85a5"
    body = b'{"type":"event_callback"}'
    now = str(int(time.time()))
    verifier = SignatureVerifier(secret)
    assert verifier.is_valid(body, now, signature(secret, now, body))
    assert signature(secret, now, body) == verifier.generate_signature(timestamp=now, body=body)
    assert not verifier.is_valid(body, now, signature("other", now, body))
    old = str(int(time.time()) - 301)
    assert not verifier.is_valid(body, old, signature(secret, old, body))


def test_a_notice_shows_until_the_pr_is_open() -> None:
    notice = {
        "notice": "Sign in with GitHub so the PR opens as you",
        "notice_link": "http://x/login",
    }
    text, blocks = status_message(_view(status="finished", branch="nightshift/abc", **notice))
    assert ":warning: Sign in with GitHub" in json.dumps(
        blocks
    ) and "<http://x/login|Open>" in json.dumps(blocks)
    assert "Sign in with GitHub" in text
    _, blocks = status_message(
        _view(status="finished", pr_url="http://x/pr/1", pr_number=1, **notice)
    )
    assert "Sign in" not in json.dumps(blocks)


def test_where_the_running_follow_up_came_from_shows_beside_the_pr() -> None:
    origin = "Follow-up from GitHub: a review comment by @monalisa"
    view = _view(
        status="running",
        pr_url="http://x/pr/1",
        pr_number=1,
        origin=origin,
        origin_link="https://github.com/o/r/pull/1#discussion_r5",
    )
    shown = json.dumps(status_message(view)[1])
    assert origin in shown and "<https://github.com/o/r/pull/1#discussion_r5|Open>" in shown
    # A link that would break out of Slack's <url|text> syntax is left out, the text kept.
    for hostile in ("https://x/a|Click here", "https://x/a>b", "javascript:alert(1)"):
        shown = json.dumps(status_message(_view(status="running", origin=origin,
                                                origin_link=hostile))[1])  # fmt: skip
        assert origin in shown and "Open>" not in shown
