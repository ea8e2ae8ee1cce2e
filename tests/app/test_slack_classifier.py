"""Which repository a Slack request goes to: named, channel default, the thread's earlier
session, a score, a model, or a picker when unsure."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from app.schemas import RepoCreate
from app.services.classifier import RepoClassifier
from app.services.slack.routing import SlackRouting
from integrations.llm import ModelSettings
from tests.factories import make_person, make_repo, wait_for
from tests.fakes.llm import ScriptBook, Turn
from tests.fakes.slack import SlackWorld

ALICE = "UALICE0001"
BOB = "UBOB000001"

REPOS = [
    ("acme/shop-web", "Storefront website: product pages, checkout and the shopping cart"),
    ("acme/billing-api", "Invoices, payments and subscriptions service"),
    ("infra", "Terraform and Kubernetes manifests for every environment"),
]


def _add_repos(runtime: Any, tmp_path: Path) -> None:
    for name, description in REPOS:
        path = make_repo(tmp_path, name.rsplit("/", 1)[-1])
        runtime.repos.add(RepoCreate(url=str(path), name=name, description=description))


@pytest.fixture
def classify(runtime: Any, tmp_path: Path) -> Any:
    _add_repos(runtime, tmp_path)
    routing = SlackRouting(runtime.engine)
    classifier = RepoClassifier(runtime.repos, routing, threshold=0.6)

    async def run(raw: str, **kwargs: Any) -> Any:
        from integrations.slack.text import to_plain

        return await classifier.classify(raw, to_plain(raw), **kwargs)

    run.routing = routing  # type: ignore[attr-defined]
    run.classifier = classifier  # type: ignore[attr-defined]
    return run


async def test_a_named_repository_wins_over_everything(classify: Any) -> None:
    classify.routing.set_channel_default("C0001", "infra", "test")
    found = await classify("fix the cart repo:acme/billing-api", channel_id="C0001")
    assert (found.repo, found.how, found.confidence) == (
        "acme/billing-api",
        "named in the message",
        1.0,
    )
    found = await classify(
        "see <https://github.com/acme/shop-web/issues/4|this issue>", channel_id="C0001"
    )
    assert found.repo == "acme/shop-web"
    found = await classify("repo:billing-api is slow")
    assert found.repo == "acme/billing-api"  # a unique short name is enough
    found = await classify("fix repo:acme/nope")
    assert (
        found.repo is None
        and "`acme/nope`" in (found.error or "")
        and "acme/shop-web" in (found.error or "")
    )


async def test_channel_default_then_thread_then_score(classify: Any) -> None:
    classify.routing.set_channel_default("C0001", "infra", "test")
    found = await classify(
        "the checkout is broken", channel_id="C0001", thread_repo="acme/billing-api"
    )
    assert (found.repo, found.how) == ("infra", "this channel's default")
    found = await classify(
        "the checkout is broken", channel_id="C0002", thread_repo="acme/billing-api"
    )
    assert (found.repo, found.how) == ("acme/billing-api", "this thread's earlier session")
    found = await classify("the checkout and the shopping cart are broken", channel_id="C0002")
    assert found.repo == "acme/shop-web" and found.confidence >= 0.6
    assert "checkout" in found.how or "cart" in found.how
    found = await classify("bump the kubernetes manifests in the staging environment")
    assert found.repo == "infra"
    found = await classify("billing-api returns 500 on refunds")
    assert found.repo == "acme/billing-api"


async def test_unsure_means_no_guess_and_keywords_help(classify: Any) -> None:
    found = await classify("make it faster please")
    assert (
        found.repo is None
        and found.error is None
        and set(found.candidates) == {n for n, _ in REPOS}
    )
    found = await classify("the checkout totals are wrong on invoices")  # two repos in one message
    assert found.repo is None and set(found.candidates[:2]) == {"acme/shop-web", "acme/billing-api"}
    found = await classify("the helm charts fail to render")
    assert found.repo is None
    infra = classify.classifier.repos.get("infra")
    classify.routing.set_keywords(infra.id, ["helm charts", "deploys"])
    found = await classify("the helm charts fail to render")
    assert found.repo == "infra"
    # Context from the thread counts, for less than the message itself.
    found = await classify(
        "can you fix this?", context="@U1: the shopping cart checkout page crashes"
    )
    assert found.repo == "acme/shop-web"


async def test_the_classifier_model_decides_when_the_score_cannot(
    runtime: Any, tmp_path: Path, openai_fake: ScriptBook
) -> None:
    _add_repos(runtime, tmp_path)
    model = ModelSettings(
        model="openai:fast-model",
        openai_api_key="sk-test-fake-key-0123456789abcdef",
        openai_base_url=openai_fake.url,  # type: ignore[attr-defined]
    )
    classifier = RepoClassifier(
        runtime.repos, SlackRouting(runtime.engine), threshold=0.6, model=model
    )
    openai_fake.script(
        "Slack message:\nthe nightly job is flaky",
        Turn.tool("choose_repo", repo="infra", confidence=0.85),
    )
    found = await classifier.classify("the nightly job is flaky", "the nightly job is flaky")
    assert (found.repo, found.how) == ("infra", "chosen by the classifier model")
    request = openai_fake.requests[-1]
    assert (
        request["model"] == "fast-model"
        and request["tools"][0]["function"]["name"] == "choose_repo"
    )
    assert "acme/billing-api: Invoices" in request["messages"][-1]["content"]
    openai_fake.script(
        "Slack message:\nsomething vague", Turn.tool("choose_repo", repo="infra", confidence=0.3)
    )
    found = await classifier.classify("something vague", "something vague")
    assert found.repo is None  # the model was not sure either
    openai_fake.fail_next(500, times=3)
    found = await classifier.classify("another vague thing", "another vague thing")
    assert found.repo is None and found.error is None


def _setup(world: SlackWorld, tmp_path: Path) -> None:
    _add_repos(world.runtime, tmp_path)
    for slack_id, login in ((ALICE, "alice"), (BOB, "bob")):
        person = make_person(world.runtime, login, login.title(), f"{login}@example.com")
        world.runtime.slack.links.link(slack_id, person.user)


def _session_of(status: Any) -> str:
    return re.search(r"/sessions/([0-9a-f]{12})", json.dumps(status.blocks)).group(1)  # type: ignore[union-attr]


@pytest.mark.slow
def test_ambiguous_request_gets_a_picker_and_starts_when_someone_picks(
    slack_world: SlackWorld, tmp_path: Path
) -> None:
    _setup(slack_world, tmp_path)
    mention = slack_world.mention(ALICE, "make it faster")
    picker = wait_for(lambda: slack_world.says(mention.ts, "which repository"), 30, "the picker")
    assert picker.thread_ts == mention.ts
    actions = next(b for b in picker.blocks if b["type"] == "actions")
    assert actions["elements"][0]["type"] == "static_select"
    assert {o["value"] for o in actions["elements"][0]["options"]} == {n for n, _ in REPOS}
    assert slack_world.runtime.sessions.query()[1] == 0  # it did not guess
    as_shown = copy.deepcopy(picker)  # what another person's Slack still shows

    response = slack_world.sender.pick(BOB, slack_world.channel, picker, "infra")
    assert response.status_code == 200
    status = wait_for(lambda: slack_world.status_message(mention.ts), 30, "the status message")
    assert status.ts == picker.ts  # the picker message became the status message
    assert "picked by <@UBOB000001>" in json.dumps(status.blocks)
    session = slack_world.runtime.sessions.get(_session_of(status))
    assert session.repo_name == "infra"
    # The session is the requester's, not the picker's.
    assert slack_world.runtime.sessions.public(session).author.login == "alice"
    # A second pick changes nothing and says so to the one who picked.
    slack_world.sender.pick(ALICE, slack_world.channel, as_shown, "acme/shop-web")
    wait_for(lambda: slack_world.fake.of("chat.postEphemeral"), 30, "the ephemeral answer")
    assert "already started" in slack_world.fake.of("chat.postEphemeral")[0].params["text"]
    assert slack_world.runtime.sessions.query()[1] == 1


@pytest.mark.slow
def test_thread_context_and_the_threads_earlier_session_pick_the_repository(
    slack_world: SlackWorld, tmp_path: Path
) -> None:
    _setup(slack_world, tmp_path)
    root = slack_world.fake.post_as_person(
        slack_world.channel, "UCAROL0001", "the shopping cart drops items at checkout"
    )
    mention = slack_world.mention(ALICE, "can you fix this?", thread_ts=root.ts)
    status = wait_for(lambda: slack_world.status_message(root.ts), 30, "the status message")
    first = slack_world.runtime.sessions.get(_session_of(status))
    assert first.repo_name == "acme/shop-web"
    assert any(c.params.get("ts") == root.ts for c in slack_world.fake.of("conversations.replies"))
    prompt = slack_world.runtime.sessions.prompts(first.id)[0].text
    assert prompt.startswith("can you fix this?") and "drops items at checkout" in prompt
    assert mention.ts != root.ts

    # `new:` in the same thread starts another session, on the thread's repository.
    slack_world.mention(ALICE, "new: add a regression test", thread_ts=root.ts)
    wait_for(lambda: slack_world.runtime.sessions.query()[1] == 2, 30, "the second session")
    rows, _ = slack_world.runtime.sessions.query()
    second = next(r for r in rows if r.id != first.id)
    assert second.repo_name == "acme/shop-web" and second.title == "add a regression test"
    directory = slack_world.runtime.slack.directory
    thread = wait_for(
        lambda: (t := directory.thread(slack_world.channel, root.ts)).session_id == second.id and t,
        30,
        "the thread to move to the new session",
    )
    assert thread.how == "this thread's earlier session"


@pytest.mark.slow
def test_channel_default_set_from_slack_routes_vague_requests(
    slack_world: SlackWorld, tmp_path: Path
) -> None:
    _setup(slack_world, tmp_path)
    reply = slack_world.sender.command(ALICE, slack_world.channel, "default nope")
    assert "unknown repo 'nope'" in reply.json()["text"]
    reply = slack_world.sender.command(ALICE, slack_world.channel, "default infra")
    assert reply.status_code == 200 and "`infra`" in reply.json()["text"]
    assert slack_world.runtime.slack.routing.channel_default(slack_world.channel) == "infra"
    mention = slack_world.mention(BOB, "make it faster")
    status = wait_for(lambda: slack_world.status_message(mention.ts), 30, "the status message")
    assert slack_world.runtime.sessions.get(_session_of(status)).repo_name == "infra"
    assert "this channel's default" in json.dumps(status.blocks)
    reply = slack_world.sender.command(BOB, slack_world.channel, "default")
    assert "`infra`" in reply.json()["text"]
