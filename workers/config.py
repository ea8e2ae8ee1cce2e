"""Worker-side configuration, filled from the control plane's settings and passed in."""

from __future__ import annotations

from dataclasses import dataclass, field

from integrations.llm import ModelSettings


@dataclass(frozen=True)
class AgentConfig:
    model: ModelSettings = field(default_factory=lambda: ModelSettings(model=None))
    max_steps: int = 60
    token_budget: int = 2_000_000
    """Input plus output tokens one prompt may spend before the run stops."""
    context_tokens: int | None = None
    """The model's context window in tokens; None takes it from the table of known models."""
    skills_dir: str | None = None
    """The operator's skills, offered in every repository (NIGHTSHIFT_SKILLS_DIR)."""
    instructions_max_chars: int = 32_000
    """An AGENTS.md or skill longer than this is cut, with a note to the model."""
    plugins: tuple[str, ...] = ()
    """`module:attr` of plugins beyond the built-in and installed ones (NIGHTSHIFT_PLUGINS)."""
    model_prices: str = ""
    """NIGHTSHIFT_MODEL_PRICES: `model=input/output[/cached],…` in USD per million tokens."""
    session_budget_usd: float | None = None
    """Estimated spend at which a session's run stops (NIGHTSHIFT_SESSION_BUDGET_USD)."""
    verify_attempts: int = 3
    """How many times `finish` runs the repository's verify commands before giving up."""
    model_retries: int = 5
    retry_base_s: float = 1.0
    tool_output_chars: int = 30_000
    max_spawn_depth: int = 2
    lease_ttl_s: float = 30.0
    heartbeat_s: float = 5.0
    idle_s: float = 0.0
    """How long a runner keeps the sandbox alive after the queue drains, awaiting follow-ups."""
    public_url: str = "http://127.0.0.1:8000"
    checkpoint_s: float = 30.0
    """Least time between two mid-prompt checkpoints of the workspace (each copies what the
    sandbox changed); a resumed run names the writes made since the last one to the model."""
    max_push_bytes: int = 200 * 1024 * 1024
    """What the bundle of one push may weigh; a bigger push fails naming its biggest files."""
