"""Which repository a Slack request is about.

In order: a repository the message names (`repo:owner/name`, or a URL into it); the channel's
default; the repository of the thread's earlier session; the only repository there is; a
score of the message (and the thread's earlier messages) against every repository's name,
keywords and description; and, when `NIGHTSHIFT_CLASSIFIER_MODEL` is set, a fast model. Below
the confidence threshold the answer is "unsure" with the candidates in order, and the bot asks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from app.models import Repo
from app.services.repos import Repos
from app.services.slack.routing import SlackRouting
from integrations.llm import ModelSettings, make_model
from integrations.llm.base import ModelError
from integrations.llm.types import ChatMessage, Completion, ToolSpec
from integrations.slack.text import RepoRef, repo_refs

log = logging.getLogger("nightshift.slack.classifier")

NAME_WEIGHT = 3.0
KEYWORD_WEIGHT = 2.0
DESCRIPTION_WEIGHT = 1.0
PHRASE_BONUS = 6.0
"""The repository's name (or a keyword phrase) written out in the message."""
STRONG = 3.0
"""A score this high is a match on its own; lower scores count for proportionally less."""
CONTEXT_WEIGHT = 0.5
MODEL_TIMEOUT_S = 20.0
_STOPWORDS = frozenset(
    re.split(
        r"\s+",
        """a an and are as at be but by can could do does for from has have how i if in into is
        it its me my no not of on or our please so that the their them then there these this to
        up us was we what when where which who why will with would you your fix add make change
        update bug issue work repo repository code file files need needs want should just also
        get""",
    )
)


@dataclass(frozen=True)
class Classification:
    repo: str | None
    confidence: float
    how: str
    """Why this repository, in words for the status message (or why none)."""
    candidates: tuple[str, ...] = field(default_factory=tuple)
    """Repository names, most likely first, for the picker."""
    error: str | None = None
    """A reason to answer rather than ask (an unknown repository named, none registered)."""


def words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z0-9]+", text.lower()) if len(w) > 1 and w not in _STOPWORDS]


def _short(name: str) -> str:
    return name.lower().rsplit("/", 1)[-1]


def resolve(ref: RepoRef, repos: Sequence[Repo]) -> Repo | None:
    """The registered repository a reference names, if exactly one fits."""
    wanted = ref.ref.lower()
    for repo in repos:
        if repo.name.lower() == wanted:
            return repo
    for repo in repos:
        if repo.forge == "github" and repo.url.lower() == wanted:
            return repo
    if "/" not in wanted:
        matches = [repo for repo in repos if _short(repo.name) == wanted]
        if len(matches) == 1:
            return matches[0]
    return None


def _phrase_in(phrase: str, text: str) -> bool:
    phrase = phrase.strip().lower()
    if len(phrase) < 3:
        return False
    return re.search(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", text.lower()) is not None


@dataclass(frozen=True)
class Scored:
    repo: str
    score: float
    matched: tuple[str, ...]


def score(
    message: str, context: str, repos: Sequence[Repo], keywords: dict[int, list[str]]
) -> list[Scored]:
    """Every repository's score for a message, best first (ties by name)."""
    fields: list[tuple[Repo, dict[str, float]]] = []
    for repo in repos:
        weights: dict[str, float] = {}
        for w in words(repo.description):
            weights[w] = max(weights.get(w, 0.0), DESCRIPTION_WEIGHT)
        for phrase in keywords.get(repo.id or -1, []):
            for w in words(phrase):
                weights[w] = max(weights.get(w, 0.0), KEYWORD_WEIGHT)
        for w in words(repo.name.replace("/", " ")):
            weights[w] = NAME_WEIGHT
        fields.append((repo, weights))
    df = Counter(w for _, weights in fields for w in weights)
    n = max(len(repos), 1)
    message_words = set(words(message))
    context_words = set(words(context)) - message_words
    out = []
    for repo, weights in fields:
        total = 0.0
        matched: list[str] = []
        for source, factor in ((message_words, 1.0), (context_words, CONTEXT_WEIGHT)):
            for w in source:
                if w in weights:
                    total += factor * weights[w] * math.log2(1 + n / df[w])
                    matched.append(w)
        multiword = [k for k in keywords.get(repo.id or -1, []) if re.search(r"[^a-z0-9]", k)]
        for phrase in dict.fromkeys([_short(repo.name), repo.name.lower(), *multiword]):
            if _phrase_in(phrase, message):
                total += PHRASE_BONUS
                matched.append(phrase)
            elif _phrase_in(phrase, context):
                total += PHRASE_BONUS * CONTEXT_WEIGHT
                matched.append(phrase)
        out.append(Scored(repo.name, total, tuple(dict.fromkeys(matched))))
    return sorted(out, key=lambda s: (-s.score, s.repo))


def confidence(ranked: Sequence[Scored]) -> float:
    """How sure the best score is: its lead over the second, scaled by its strength."""
    if not ranked or ranked[0].score <= 0:
        return 0.0
    best = ranked[0].score
    second = ranked[1].score if len(ranked) > 1 else 0.0
    return round((best - second) / best * min(1.0, best / STRONG), 3)


_CHOOSE = ToolSpec(
    name="choose_repo",
    description="Say which repository the request is about, and how sure you are.",
    parameters={
        "type": "object",
        "properties": {
            "repo": {
                "type": "string",
                "description": "The repository's name exactly as listed, or `none`.",
            },
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "reason": {"type": "string"},
        },
        "required": ["repo", "confidence"],
    },
)
_SYSTEM = (
    "You route requests that people post in Slack to a coding agent. Decide which one of the "
    "listed repositories the request is about. Call choose_repo once with the repository's "
    "exact name and your confidence from 0 to 1; use `none` when no repository fits or you "
    "cannot tell."
)


class RepoClassifier:
    def __init__(
        self,
        repos: Repos,
        routing: SlackRouting,
        *,
        threshold: float,
        model: ModelSettings | None = None,
    ) -> None:
        self.repos = repos
        self.routing = routing
        self.threshold = threshold
        self.model = model if model is not None and model.model else None

    async def classify(
        self,
        raw: str,
        plain: str,
        *,
        context: str = "",
        channel_id: str = "",
        thread_repo: str | None = None,
    ) -> Classification:
        """Pick the repository of a request. `raw` is the Slack text (links intact), `plain`
        the prompt made from it, `context` earlier messages of the thread."""
        repos = await asyncio.to_thread(self.repos.list)
        names = [r.name for r in repos]
        refs = repo_refs(raw)
        for ref in refs:
            found = resolve(ref, repos)
            if found is not None:
                return Classification(found.name, 1.0, "named in the message")
        if refs:
            known = ", ".join(f"`{n}`" for n in names[:20]) or "none yet"
            wanted = ", ".join(f"`{r.ref}`" for r in refs)
            return Classification(
                None,
                0.0,
                "unknown repository",
                error=f"I don't know {wanted}. Registered repositories: {known}.",
            )
        if not repos:
            return Classification(
                None,
                0.0,
                "no repositories",
                error="No repositories are registered yet: add one with `nightshift repos add` first.",
            )
        if channel_id:
            default = await asyncio.to_thread(self.routing.channel_default, channel_id)
            if default in names:
                return Classification(default, 1.0, "this channel's default")
        if thread_repo in names:
            return Classification(thread_repo, 1.0, "this thread's earlier session")
        if len(repos) == 1:
            return Classification(repos[0].name, 1.0, "the only repository")
        keywords = await asyncio.to_thread(self.routing.keywords)
        ranked = score(plain, context, repos, keywords)
        sure = confidence(ranked)
        candidates = tuple(s.repo for s in ranked)
        if sure >= self.threshold:
            best = ranked[0]
            return Classification(
                best.repo, sure, f"matched {', '.join(best.matched[:3])}", candidates
            )
        if self.model is not None:
            choice = await self._ask_model(plain, context, repos, keywords)
            if choice is not None and choice[0] in names and choice[1] >= self.threshold:
                ordered = (choice[0], *(c for c in candidates if c != choice[0]))
                return Classification(
                    choice[0], choice[1], "chosen by the classifier model", ordered
                )
        return Classification(None, sure, "unsure", candidates)

    async def _ask_model(
        self, plain: str, context: str, repos: Sequence[Repo], keywords: dict[int, list[str]]
    ) -> tuple[str, float] | None:
        assert self.model is not None
        lines = []
        for r in repos:
            words_of = keywords.get(r.id or -1) or []
            extra = f" (keywords: {', '.join(words_of)})" if words_of else ""
            lines.append(f"- {r.name}: {r.description or '(no description)'}{extra}")
        listing = "\n".join(lines)
        text = f"Repositories:\n{listing}\n\nSlack message:\n{plain}"
        if context:
            text += f"\n\nEarlier in the thread:\n{context}"
        try:
            client = make_model(self.model)
        except ModelError as exc:
            log.warning("the classifier model is not usable: %s", exc)
            return None
        completion: Completion | None = None
        try:
            async with asyncio.timeout(MODEL_TIMEOUT_S):
                async for item in client.stream(
                    _SYSTEM, [ChatMessage(role="user", text=text)], [_CHOOSE]
                ):
                    if isinstance(item, Completion):
                        completion = item
        except (ModelError, TimeoutError) as exc:
            log.warning("the classifier model failed: %s", exc)
            return None
        finally:
            await client.aclose()
        if completion is None:
            return None
        return _parse_choice(completion)


def _parse_choice(completion: Completion) -> tuple[str, float] | None:
    for call in completion.message.tool_calls:
        if call.name == _CHOOSE.name:
            return _choice(call.arguments)
    # Some endpoints answer in text: accept a JSON object there too.
    match = re.search(r"\{.*\}", completion.message.text, re.S)
    if match:
        try:
            data = json.loads(match.group(0))
        except json.JSONDecodeError:
            return None
        if isinstance(data, dict):
            return _choice(data)
    return None


def _choice(data: dict[str, object]) -> tuple[str, float] | None:
    repo = data.get("repo")
    confidence = data.get("confidence", 0)
    if not isinstance(confidence, int | float | str):
        return None
    try:
        sure = float(confidence)
    except ValueError:
        return None
    if not isinstance(repo, str) or repo.lower() == "none":
        return None
    return repo, max(0.0, min(1.0, sure))
