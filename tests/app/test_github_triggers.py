"""GitHub as a client, against the fake GitHub: mentions in issues start sessions, mentions
and reviews on a session's PR queue follow-ups, failing checks come back as work; and who may
not trigger, redeliveries, edits and bad payloads start nothing and say why."""

from __future__ import annotations

import secrets
import time
from typing import Any

import pytest
from sqlmodel import Session as DB
from sqlmodel import select

from app.commands.render import event_line
from app.github_tables import GitHubCiAttempt, GitHubTrigger
from app.models import GitHubDelivery, PromptIndex, User
from app.schemas import RepoCreate
from tests.app.conftest import GitHubEnv
from tests.factories import git, wait_for
from tests.fakes import github_payloads as payloads
from workers.events import BranchPushed, CommitCreated

REPO = "octo/proj"

# ---------------------------------------------------------------- helpers


@pytest.fixture
def env(make_github_env: Any) -> GitHubEnv:
    """GitHub with two people allowed to sign in; sessions stay queued (no runner)."""
    return _env(make_github_env)


def _env(make_github_env: Any, repo: dict[str, Any] | None = None, **overrides: Any) -> GitHubEnv:
    gh: GitHubEnv = make_github_env(github_allowed_users="octocat,monalisa", **overrides)
    gh.runtime.sessions.dispatcher = None
    gh.fake.add_repo(REPO)
    gh.runtime.repos.add(RepoCreate(url=REPO, **(repo or {})))
    gh.fake.add_user("octocat", "Mona Octocat", "mona@example.com", user_id=583231)
    gh.fake.add_user("monalisa", "Mona Lisa", "lisa@example.com", user_id=600001)
    gh.fake.grant(REPO, "octocat", "admin")
    gh.fake.grant(REPO, "monalisa", "write")
    return gh


def _sign_in(gh: GitHubEnv, login: str) -> User:
    with gh.browser() as browser:
        gh.sign_in(browser, login)
    user = gh.runtime.users.by_login(login)
    assert user is not None
    return user


def _deliver(
    gh: GitHubEnv, event: str, payload: dict[str, Any], delivery: str = ""
) -> GitHubDelivery:
    """Deliver, wait until it is processed, and return its row in the delivery log."""
    delivery = delivery or secrets.token_hex(8)
    answer = gh.deliver(event, payload, delivery=delivery)
    assert answer.status_code in (200, 202), answer.text

    def done() -> GitHubDelivery | None:
        with DB(gh.runtime.engine) as db:
            row = db.get(GitHubDelivery, delivery)
        return row if row is not None and row.status in ("done", "ignored", "failed") else None

    return wait_for(done, 20, f"delivery {delivery}")


def _sessions(gh: GitHubEnv) -> list[Any]:
    rows, _total = gh.runtime.sessions.query()
    return gh.runtime.sessions.public_many(rows)


def _prompts(gh: GitHubEnv, session_id: str) -> list[Any]:
    return gh.runtime.sessions.prompts(session_id)


def _events(gh: GitHubEnv, session_id: str, kind: str) -> list[Any]:
    return [e for e in gh.runtime.sessions.events(session_id) if e.type == kind]


def _push(gh: GitHubEnv, session_id: str, message: str) -> str:
    """The session's runner pushed a commit to its branch: `branch_pushed`."""
    row = gh.runtime.sessions.get(session_id)
    bare = gh.fake.repos[REPO].path
    try:
        parent = git(bare, "rev-parse", f"refs/heads/{row.branch}").strip()
    except Exception:
        parent = git(bare, "rev-parse", "main").strip()
    sha = git(bare, "commit-tree", "main^{tree}", "-p", parent, "-m", message).strip()
    git(bare, "update-ref", f"refs/heads/{row.branch}", sha)
    gh.runtime.hub.publish(
        session_id,
        BranchPushed(
            branch=row.branch,
            sha=sha,
            base="main",
            base_sha=git(bare, "rev-parse", "main").strip(),
            title=message,
            body="Done.",
            prompt_id=1,
        ),
    )
    wait_for(lambda: gh.runtime.sessions.get(session_id).head_sha == sha, 10, "head moved")
    return sha


def _session_with_pr(gh: GitHubEnv, author: User) -> tuple[str, int, str]:
    """A session of `author` that pushed and opened its PR: (id, PR number, head sha)."""
    row = gh.runtime.sessions.create(author, REPO, "tidy the README")
    sha = _push(gh, row.id, "Tidy the README")
    number = wait_for(lambda: gh.runtime.sessions.get(row.id).pr_number, 10, "PR opened")
    return row.id, number, sha


def _ignored(row: GitHubDelivery, reason: str) -> None:
    assert row.status == "ignored", (row.status, row.error)
    assert reason in (row.error or ""), row.error


# ---------------------------------------------------------------- issues start sessions


def test_a_mention_in_an_issue_comment_starts_a_session_as_the_commenter(env: GitHubEnv) -> None:
    user = _sign_in(env, "octocat")
    env.fake.add_issue_comment(REPO, 7, "monalisa", "I think the version line is stale too.")
    comment = env.fake.add_issue_comment(
        REPO, 7, "octocat", "@nightshift-test please fix the version line"
    )
    payload = payloads.issue_comment(env.fake, REPO, 7, comment)
    row = _deliver(env, "issue_comment", payload)
    assert row.status == "done", row.error

    [session] = _sessions(env)
    assert session.author.login == "octocat" and session.repo == REPO
    [prompt] = _prompts(env, session.id)
    assert prompt.author.id == user.id
    text = prompt.text
    assert "The README is wrong" in text and "we shipped 2.0" in text
    assert "@monalisa: I think the version line is stale too." in text
    assert "please fix the version line" in text and "@nightshift-test" not in text
    assert "Fixes #7" in text
    with DB(env.runtime.engine) as db:
        index = db.exec(select(PromptIndex).where(PromptIndex.session_id == session.id)).one()
    assert index.source == "github"
    # 👀 on the comment at once, then a reply with the session's link.
    assert {"kind": "comment", "repo": REPO, "target": comment["id"], "content": "eyes"} in (
        env.fake.reactions
    )
    [said] = env.fake.replies(REPO, 7)
    assert f"/sessions/{session.id}" in said and "@octocat" in said

    # The pull request the session opens says it fixes the issue.
    _push(env, session.id, "Fix the version line")
    number = wait_for(lambda: env.runtime.sessions.get(session.id).pr_number, 10, "PR")
    wait_for(lambda: "Fixes #7" in env.fake.pull(REPO, number).body, 10, "Fixes #7")


def test_a_mention_in_a_new_issue_starts_a_session(env: GitHubEnv) -> None:
    _sign_in(env, "monalisa")
    payload = payloads.issue_opened(
        env.fake, REPO, 12, "Crash on empty input", "@nightshift-test fix the crash", "monalisa"
    )
    assert _deliver(env, "issues", payload).status == "done"
    [session] = _sessions(env)
    assert session.author.login == "monalisa"
    [prompt] = _prompts(env, session.id)
    assert "Crash on empty input" in prompt.text and "fix the crash" in prompt.text
    assert {"kind": "issue", "repo": REPO, "target": 12, "content": "eyes"} in env.fake.reactions
    # A new issue without the mention asks for nothing.
    quiet = payloads.issue_opened(env.fake, REPO, 13, "Typo", "just a typo", "monalisa")
    _ignored(_deliver(env, "issues", quiet), "no mention of @nightshift-test")
    assert len(_sessions(env)) == 1


def test_an_unlinked_commenter_gets_a_sign_in_link_and_starts_once_linked(env: GitHubEnv) -> None:
    comment = env.fake.add_issue_comment(REPO, 3, "octocat", "@nightshift-test update the docs")
    row = _deliver(env, "issue_comment", payloads.issue_comment(env.fake, REPO, 3, comment))
    assert row.status == "done"
    assert _sessions(env) == []
    [said] = env.fake.replies(REPO, 3)
    assert "/auth/github/login" in said and "@octocat" in said
    with DB(env.runtime.engine) as db:
        trigger = db.exec(select(GitHubTrigger)).one()
    assert trigger.state == "pending" and "update the docs" in trigger.prompt

    user = _sign_in(env, "octocat")
    wait_for(lambda: _sessions(env), 10, "the session after linking")
    [session] = _sessions(env)
    assert session.author.login == "octocat"
    assert _prompts(env, session.id)[0].author.id == user.id
    wait_for(lambda: len(env.fake.replies(REPO, 3)) == 2, 10, "the link reply")
    assert f"/sessions/{session.id}" in env.fake.replies(REPO, 3)[1]


def test_redelivery_edits_and_the_same_comment_again_start_one_session(env: GitHubEnv) -> None:
    _sign_in(env, "octocat")
    comment = env.fake.add_issue_comment(REPO, 5, "octocat", "@nightshift-test add a test")
    payload = payloads.issue_comment(env.fake, REPO, 5, comment)
    assert _deliver(env, "issue_comment", payload, "d-1").status == "done"
    again = env.deliver("issue_comment", payload, delivery="d-1")
    assert again.status_code == 200 and again.json()["outcome"] == "duplicate"
    edited = payloads.issue_comment(env.fake, REPO, 5, comment, action="edited")
    _ignored(_deliver(env, "issue_comment", edited), "an edited comment never starts")
    _ignored(_deliver(env, "issue_comment", payload, "d-2"), "was already handled")
    assert len(_sessions(env)) == 1
    assert len(env.fake.replies(REPO, 5)) == 1


# ---------------------------------------------------------------- who may trigger


def test_people_without_write_access_bots_and_the_app_start_nothing(env: GitHubEnv) -> None:
    _sign_in(env, "octocat")
    env.fake.add_user("stranger", "A Stranger", None)
    for text in ("@nightshift-test delete everything", "@nightshift-test really, do it"):
        comment = env.fake.add_issue_comment(REPO, 9, "stranger", text)
        row = _deliver(env, "issue_comment", payloads.issue_comment(env.fake, REPO, 9, comment))
        _ignored(row, "has no write access")
    # One polite reply, however often they ask.
    [said] = env.fake.replies(REPO, 9)
    assert "write access" in said and "@stranger" in said

    bot = env.fake.add_issue_comment(REPO, 9, "dependabot[bot]", "@nightshift-test bump it")
    _ignored(
        _deliver(env, "issue_comment", payloads.issue_comment(env.fake, REPO, 9, bot)),
        "bots never trigger",
    )
    itself = env.fake.add_issue_comment(REPO, 9, "nightshift-test[bot]", "@nightshift-test loop")
    _ignored(
        _deliver(env, "issue_comment", payloads.issue_comment(env.fake, REPO, 9, itself)),
        "the App's own comment",
    )
    assert _sessions(env) == []
    assert env.fake.reactions == []


def test_bad_input_starts_nothing_and_is_recorded_with_its_reason(env: GitHubEnv) -> None:
    _sign_in(env, "octocat")
    env.fake.add_repo("octo/elsewhere")
    other = env.fake.add_issue_comment("octo/elsewhere", 1, "octocat", "@nightshift-test fix")
    unknown = payloads.issue_comment(env.fake, "octo/elsewhere", 1, other)
    _ignored(_deliver(env, "issue_comment", unknown), "not a repository Nightshift knows")

    empty = env.fake.add_issue_comment(REPO, 2, "octocat", "  @nightshift-test  ")
    _ignored(
        _deliver(env, "issue_comment", payloads.issue_comment(env.fake, REPO, 2, empty)),
        "asks for nothing",
    )
    fine = env.fake.add_issue_comment(REPO, 2, "octocat", "@nightshift-test go")
    missing = payloads.issue_comment(env.fake, REPO, 2, fine)
    del missing["comment"]["user"]
    _ignored(_deliver(env, "issue_comment", missing), "no comment.user")
    not_a_number = payloads.issue_comment(env.fake, REPO, 2, fine)
    not_a_number["issue"]["number"] = "2; drop table"
    _ignored(_deliver(env, "issue_comment", not_a_number), "issue.number is not a number")
    on_pr = payloads.issue_comment(env.fake, REPO, 2, fine, on_pr=True)
    _ignored(_deliver(env, "issue_comment", on_pr), "not a pull request a Nightshift session")
    _ignored(_deliver(env, "issues", {"action": "opened"}), "no issue")
    assert _sessions(env) == []


def test_each_trigger_can_be_turned_off(make_github_env: Any) -> None:
    gh = _env(
        make_github_env,
        github_issue_triggers=False,
        github_pr_followups=False,
        ci_fix_attempts=0,
    )
    user = _sign_in(gh, "octocat")
    comment = gh.fake.add_issue_comment(REPO, 4, "octocat", "@nightshift-test go")
    _ignored(
        _deliver(gh, "issue_comment", payloads.issue_comment(gh.fake, REPO, 4, comment)),
        "NIGHTSHIFT_GITHUB_ISSUE_TRIGGERS",
    )
    session_id, number, sha = _session_with_pr(gh, user)
    on_pr = gh.fake.add_issue_comment(REPO, number, "octocat", "@nightshift-test more")
    _ignored(
        _deliver(
            gh, "issue_comment", payloads.issue_comment(gh.fake, REPO, number, on_pr, on_pr=True)
        ),
        "NIGHTSHIFT_GITHUB_PR_FOLLOWUPS",
    )
    run = payloads.check_run_json(gh.fake, REPO, 77, "tests", sha, "failure", log="boom")
    _ignored(
        _deliver(gh, "check_run", payloads.check_run_completed(gh.fake, REPO, run)),
        "NIGHTSHIFT_CI_FIX_ATTEMPTS=0",
    )
    assert len(_prompts(gh, session_id)) == 1


# ---------------------------------------------------------------- PR conversations


def test_pr_comments_and_review_comments_queue_follow_ups_by_the_commenter(
    env: GitHubEnv,
) -> None:
    author = _sign_in(env, "octocat")
    reviewer = _sign_in(env, "monalisa")
    session_id, number, _sha = _session_with_pr(env, author)

    comment = env.fake.add_issue_comment(REPO, number, "monalisa", "@nightshift-test add a test")
    payload = payloads.issue_comment(env.fake, REPO, number, comment, on_pr=True)
    assert _deliver(env, "issue_comment", payload).status == "done"
    follow = _prompts(env, session_id)[-1]
    assert follow.author.id == reviewer.id and "add a test" in follow.text
    notice = _events(env, session_id, "notice")[-1]
    assert notice.link == comment["html_url"] and "@monalisa" in notice.message
    assert notice.prompt_id == follow.id and "GitHub" in notice.message

    line = payloads.review_comment_json(
        env.fake, REPO, number, 3301, "monalisa", "@nightshift-test say 2.1 here", line=2
    )
    row = _deliver(
        env,
        "pull_request_review_comment",
        payloads.review_comment_created(env.fake, REPO, number, line),
    )
    assert row.status == "done", row.error
    follow = _prompts(env, session_id)[-1]
    assert follow.author.id == reviewer.id
    assert "README.md:2" in follow.text and "say 2.1 here" in follow.text
    assert "+version 2.0" in follow.text  # the diff hunk
    assert {"kind": "review_comment", "repo": REPO, "target": 3301, "content": "eyes"} in (
        env.fake.reactions
    )
    with DB(env.runtime.engine) as db:
        sources = db.exec(
            select(PromptIndex.source).where(PromptIndex.session_id == session_id)
        ).all()
    assert sources == ["api", "github", "github"]

    # A follow-up's commits go to the same branch, and so to the same PR.
    _push(env, session_id, "Add a test")
    assert env.runtime.sessions.get(session_id).pr_number == number
    assert len([p for p in env.fake.pulls if p.repo == REPO]) == 1


def test_a_review_requesting_changes_queues_one_follow_up_with_all_its_comments(
    env: GitHubEnv,
) -> None:
    author = _sign_in(env, "octocat")
    reviewer = _sign_in(env, "monalisa")
    session_id, number, _sha = _session_with_pr(env, author)
    comments = [
        payloads.review_comment_json(env.fake, REPO, number, 41, "monalisa", "Rename x", line=1),
        payloads.review_comment_json(
            env.fake, REPO, number, 42, "monalisa", "Handle None", path="app.py", line=9
        ),
    ]
    mention = payloads.review_comment_json(
        env.fake, REPO, number, 43, "monalisa", "@nightshift-test rename y too", line=4
    )
    # GitHub sends each line comment of a review as well: the one that mentions the App asks
    # on its own, and the review's follow-up leaves it out.
    line = payloads.review_comment_created(env.fake, REPO, number, mention)
    assert _deliver(env, "pull_request_review_comment", line).status == "done"
    review = payloads.review_submitted(
        env.fake,
        REPO,
        number,
        501,
        "monalisa",
        "changes_requested",
        "Close, but:",
        [*comments, mention],
    )
    assert _deliver(env, "pull_request_review", review).status == "done"
    prompts = _prompts(env, session_id)
    assert len(prompts) == 3
    assert "rename y too" in prompts[1].text and "rename y too" not in prompts[2].text
    text = prompts[-1].text
    assert prompts[-1].author.id == reviewer.id
    assert "Close, but:" in text and "Rename x" in text and "app.py:9" in text
    assert "Handle None" in text

    approved = payloads.review_submitted(
        env.fake, REPO, number, 502, "monalisa", "approved", "LGTM", []
    )
    _ignored(_deliver(env, "pull_request_review", approved), "only a review requesting changes")
    assert len(_prompts(env, session_id)) == 3


def test_a_comment_longer_than_the_prompt_limit_is_cut_with_a_note(make_github_env: Any) -> None:
    gh = _env(make_github_env, max_prompt_chars=1500)
    _sign_in(gh, "octocat")
    comment = gh.fake.add_issue_comment(REPO, 8, "octocat", "@nightshift-test " + "x" * 5000)
    row = _deliver(gh, "issue_comment", payloads.issue_comment(gh.fake, REPO, 8, comment))
    assert row.status == "done", row.error
    [session] = _sessions(gh)
    [prompt] = _prompts(gh, session.id)
    assert len(prompt.text) <= 1500 and "was cut" in prompt.text


# ---------------------------------------------------------------- failing checks


def test_failing_checks_come_back_as_work_up_to_the_cap(make_github_env: Any) -> None:
    gh = _env(make_github_env, ci_fix_attempts=2)
    author = _sign_in(gh, "octocat")
    session_id, _number, sha = _session_with_pr(gh, author)
    log = "\n".join(f"step {i}" for i in range(5000)) + "\nAssertionError: 1 != 2\n"

    run = payloads.check_run_json(gh.fake, REPO, 901, "tests (3.12)", sha, "failure", log=log)
    row = _deliver(gh, "check_run", payloads.check_run_completed(gh.fake, REPO, run))
    assert row.status == "done", row.error
    first = _prompts(gh, session_id)[-1]
    assert first.author.id == author.id
    assert "tests (3.12)" in first.text and "AssertionError: 1 != 2" in first.text
    assert "step 10\n" not in first.text  # only the tail of the log
    notice = _events(gh, session_id, "notice")[-1]
    assert "CI fix attempt 1 of 2" in notice.message and notice.link.endswith("/runs/901")

    # The suite of the same failure reports it again: nothing more is queued.
    suite = payloads.check_suite_completed(gh.fake, REPO, 5901, sha, "failure", [run])
    _ignored(_deliver(gh, "check_suite", suite), "was already sent back")

    # The fix is pushed, and its workflow run fails too: the second attempt.
    second_sha = _push(gh, session_id, "Fix the test")
    jobs = [payloads.job_json(gh.fake, 902, "lint", "failure", "E501 line too long")]
    flow = payloads.workflow_run_completed(gh.fake, REPO, 77, "CI", second_sha, "failure", jobs)
    assert _deliver(gh, "workflow_run", flow).status == "done"
    assert "E501 line too long" in _prompts(gh, session_id)[-1].text

    # A third failing head: the cap holds, and the session says so.
    third_sha = _push(gh, session_id, "Fix lint")
    run3 = payloads.check_run_json(gh.fake, REPO, 903, "tests", third_sha, "failure", log="x")
    _ignored(
        _deliver(gh, "check_run", payloads.check_run_completed(gh.fake, REPO, run3)), "used up"
    )
    assert len(_prompts(gh, session_id)) == 3
    assert "used up" in _events(gh, session_id, "notice")[-1].message
    with DB(gh.runtime.engine) as db:
        outcomes = [a.outcome for a in db.exec(select(GitHubCiAttempt)).all()]
    assert outcomes == ["queued", "queued", "capped"]


def test_checks_passing_after_a_fix_attempt_record_the_outcome(env: GitHubEnv) -> None:
    author = _sign_in(env, "octocat")
    session_id, _number, sha = _session_with_pr(env, author)
    suite_runs = [
        payloads.check_run_json(
            env.fake, REPO, 911, "docs", sha, "failure", summary="Broken link: /guide"
        )
    ]
    failed = payloads.check_suite_completed(env.fake, REPO, 6001, sha, "failure", suite_runs)
    assert _deliver(env, "check_suite", failed).status == "done"
    assert "Broken link: /guide" in _prompts(env, session_id)[-1].text

    fixed_sha = _push(env, session_id, "Fix the link")
    passed = payloads.check_suite_completed(env.fake, REPO, 6002, fixed_sha, "success", [])
    assert _deliver(env, "check_suite", passed).status == "done"
    assert "passes" in _events(env, session_id, "notice")[-1].message
    with DB(env.runtime.engine) as db:
        [attempt] = db.exec(select(GitHubCiAttempt)).all()
    assert attempt.outcome == "passed"

    # A failure on a commit no session pushed is not ours.
    stranger = payloads.check_run_json(env.fake, REPO, 990, "t", "f" * 40, "failure", log="no")
    _ignored(
        _deliver(env, "check_run", payloads.check_run_completed(env.fake, REPO, stranger)),
        "is not the head of an open pull request",
    )


def test_a_repo_may_set_its_own_ci_fix_cap(make_github_env: Any) -> None:
    gh = _env(make_github_env, repo={"ci_fix_attempts": 1}, ci_fix_attempts=0)
    author = _sign_in(gh, "octocat")
    session_id, _number, sha = _session_with_pr(gh, author)
    run = payloads.check_run_json(gh.fake, REPO, 921, "tests", sha, "failure", log="E: one")
    assert _deliver(gh, "check_run", payloads.check_run_completed(gh.fake, REPO, run)).status == (
        "done"
    )
    assert "CI fix attempt 1 of 1" in _events(gh, session_id, "notice")[-1].message
    again = _push(gh, session_id, "Fix one")
    run2 = payloads.check_run_json(gh.fake, REPO, 922, "tests", again, "failure", log="E: two")
    _ignored(
        _deliver(gh, "check_run", payloads.check_run_completed(gh.fake, REPO, run2)), "used up (1)"
    )
    assert len(_prompts(gh, session_id)) == 2


def test_github_failing_half_way_is_retried_and_then_starts_once(env: GitHubEnv) -> None:
    _sign_in(env, "octocat")
    comment = env.fake.add_issue_comment(REPO, 6, "octocat", "@nightshift-test bump the version")
    env.fake.fail_next(502, "/issues/6/comments", times=3)  # the thread cannot be read
    answer = env.deliver(
        "issue_comment", payloads.issue_comment(env.fake, REPO, 6, comment), delivery="d-flaky"
    )
    assert answer.status_code == 202

    def retried() -> GitHubDelivery | None:
        with DB(env.runtime.engine) as db:
            row = db.get(GitHubDelivery, "d-flaky")
        return row if row is not None and row.status == "queued" and row.error else None

    assert "GitHubUnavailable" in (wait_for(retried, 20, "the failed attempt").error or "")
    assert _sessions(env) == []
    github = env.runtime.github
    assert github is not None
    assert github.webhooks.process("d-flaky") == "done"
    [session] = _sessions(env)
    assert "bump the version" in _prompts(env, session.id)[0].text


def test_the_mention_is_the_apps_own_name_only(env: GitHubEnv) -> None:
    github = env.runtime.github
    assert github is not None
    gate = github.triggers.gate
    assert gate.slug() == "nightshift-test"
    assert gate.request("@Nightshift-Test fix it") == "fix it"
    assert gate.request("hey @nightshift-test, fix it") == "hey , fix it"
    for text in ("@nightshift-testing fix", "mail me at a@nightshift-test", "nightshift-test"):
        assert gate.request(text) is None, text
    # The slug is read from GitHub once.
    gate.slug()
    assert sum(1 for r in env.fake.requests if r.path == "/app") == 1


# ---------------------------------------------------------------- PR stats


def test_pr_stats_count_approvals_pushes_time_to_merge_and_the_agents_share(
    env: GitHubEnv,
) -> None:
    author = _sign_in(env, "octocat")
    session = env.runtime.sessions.create(author, REPO, "tidy the README")
    for message in ("Tidy the README", "Address the review"):
        env.runtime.hub.publish(
            session.id,
            CommitCreated(sha="0" * 40, author="Mona Octocat", message=message, prompt_id=1),
        )
        _push(env, session.id, message)
    number = wait_for(lambda: env.runtime.sessions.get(session.id).pr_number, 10, "PR")
    # Someone pushes a commit of their own to the session's branch.
    bare = env.fake.repos[REPO].path
    mine = git(bare, "commit-tree", "main^{tree}", "-p", session.branch, "-m", "By hand").strip()
    git(bare, "update-ref", f"refs/heads/{session.branch}", mine)

    asked = payloads.review_submitted(
        env.fake, REPO, number, 801, "monalisa", "changes_requested", "Not yet", []
    )
    approved = payloads.review_submitted(
        env.fake, REPO, number, 802, "monalisa", "approved", "", []
    )
    _deliver(env, "pull_request_review", asked)
    _ignored(_deliver(env, "pull_request_review", approved), "only a review requesting changes")
    merged = env.fake.merge(REPO, number)
    _deliver(env, "pull_request", env.fake.pull_payload(merged, "closed"))

    with env.browser() as browser:
        env.sign_in(browser, "octocat")
        stats = browser.get("/api/stats").json()["pull_requests"]
    assert stats["prs"] == 1 and stats["reviewed"] == 1
    assert stats["approval_rate"] == 1.0
    assert stats["revisions_per_pr"] == 2.0
    assert stats["median_open_to_merge_s"] is not None, (stats, merged.created_at, time.time())
    assert stats["median_open_to_merge_s"] >= 0
    assert stats["agent_commit_share"] == round(2 / 3, 4)


def test_an_unlinked_reviewer_s_follow_up_waits_until_they_link(env: GitHubEnv) -> None:
    author = _sign_in(env, "octocat")
    session_id, number, _sha = _session_with_pr(env, author)
    comment = env.fake.add_issue_comment(REPO, number, "monalisa", "@nightshift-test add docs")
    payload = payloads.issue_comment(env.fake, REPO, number, comment, on_pr=True)
    assert _deliver(env, "issue_comment", payload).status == "done"
    assert len(_prompts(env, session_id)) == 1
    assert "/auth/github/login" in env.fake.replies(REPO, number)[-1]

    reviewer = _sign_in(env, "monalisa")
    wait_for(lambda: len(_prompts(env, session_id)) == 2, 10, "the follow-up after linking")
    follow = _prompts(env, session_id)[-1]
    assert follow.author.id == reviewer.id and "add docs" in follow.text
    # The notice naming the comment is published right after the prompt is queued.
    origin = wait_for(
        lambda: next((e for e in _events(env, session_id, "notice") if e.follow_up), None),
        10,
        "the follow-up's notice",
    )
    assert origin.link == comment["html_url"] and origin.follow_up
    assert origin.prompt_id == follow.id
    # `nightshift attach` prints it with the comment's link.
    lines = [event_line(e) for e in env.runtime.sessions.events(session_id)]
    assert f"↪ prompt {follow.id}: Follow-up from GitHub" in "\n".join(filter(None, lines))
    assert comment["html_url"] in "\n".join(filter(None, lines))


def test_the_repos_nightshift_toml_sets_the_ci_fix_cap(make_github_env: Any) -> None:
    """`ci_fix_attempts` in `.nightshift.toml`, as the newest image read it, wins over the
    repo's setting and the server's."""
    from images.registry import ImageRecord

    gh = _env(make_github_env, repo={"ci_fix_attempts": 2}, ci_fix_attempts=2)
    bare = gh.fake.repos[REPO].path
    work = bare.parent / "spec-work"
    git(bare.parent, "clone", "-q", str(bare), str(work))
    (work / ".nightshift.toml").write_text("ci_fix_attempts = 1\n")
    git(work, "add", ".nightshift.toml")
    git(work, "-c", "user.name=O", "-c", "user.email=o@example.com", "commit", "-qm", "Spec")
    git(work, "push", "-q", "origin", "main")
    [name] = [r.name for r in gh.runtime.repos.list()]
    gh.runtime.images.queue_build([name], force=True)

    def built() -> ImageRecord | None:
        with DB(gh.runtime.engine) as db:
            rows = db.exec(select(ImageRecord).where(ImageRecord.status == "ready")).all()
        return next((r for r in rows if r.file_spec), None)

    image = wait_for(built, 120, "an image of the spec's commit")
    assert image.file_spec is not None and image.file_spec["ci_fix_attempts"] == 1
    author = _sign_in(gh, "octocat")
    session_id, _number, sha = _session_with_pr(gh, author)
    run = payloads.check_run_json(gh.fake, REPO, 931, "tests", sha, "failure", log="E: one")
    assert _deliver(gh, "check_run", payloads.check_run_completed(gh.fake, REPO, run)).status == (
        "done"
    )
    assert "CI fix attempt 1 of 1" in _events(gh, session_id, "notice")[-1].message
    again = _push(gh, session_id, "Fix one")
    run2 = payloads.check_run_json(gh.fake, REPO, 932, "tests", again, "failure", log="E: two")
    _ignored(
        _deliver(gh, "check_run", payloads.check_run_completed(gh.fake, REPO, run2)), "used up (1)"
    )
