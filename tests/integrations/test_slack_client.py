"""The Web API client against the fake Slack: 429 waits for `Retry-After`, then retries."""

from __future__ import annotations

from typing import Any

import pytest
from slack_sdk.errors import SlackApiError

from integrations.slack.client import error_code, web_client
from tests.fakes.slack import BOT_TOKEN


async def test_a_429_is_retried_after_retry_after(slack_fake: Any) -> None:
    client = web_client(BOT_TOKEN, slack_fake.url, retries=2)
    slack_fake.fail_next("chat.postMessage", 429, retry_after="1")
    response = await client.chat_postMessage(channel="C0001", text="hello")
    assert (
        response["ok"] and slack_fake.message(response["channel"], response["ts"]).text == "hello"
    )
    first, second = slack_fake.attempts("chat.postMessage")
    assert first.status == 429 and second.status == 200
    assert second.at - first.at >= 1.0  # it waited as long as Slack asked


async def test_rate_limits_beyond_the_retries_surface_as_an_error(slack_fake: Any) -> None:
    client = web_client(BOT_TOKEN, slack_fake.url, retries=1)
    slack_fake.fail_next("chat.update", 429, retry_after="0", times=3)
    with pytest.raises(SlackApiError) as info:
        await client.chat_update(channel="C0001", ts="1.000001", text="x")
    assert error_code(info.value) == "ratelimited"
    assert len(slack_fake.attempts("chat.update")) == 2


async def test_server_errors_are_retried_and_api_errors_are_not(slack_fake: Any) -> None:
    client = web_client(BOT_TOKEN, slack_fake.url, retries=2)
    slack_fake.fail_next("users.info", 503, retry_after=None)
    slack_fake.add_user("UALICE0001", "alice", "Alice Example")
    response = await client.users_info(user="UALICE0001")
    assert response["user"]["real_name"] == "Alice Example"
    with pytest.raises(SlackApiError) as info:
        await client.chat_update(channel="C0001", ts="9.999999", text="x")
    assert error_code(info.value) == "message_not_found"
    assert len(slack_fake.attempts("chat.update")) == 1
    bad = web_client("xoxb-wrong-token-000", slack_fake.url, retries=0)
    with pytest.raises(SlackApiError) as info:
        await bad.auth_test()
    assert error_code(info.value) == "invalid_auth"
