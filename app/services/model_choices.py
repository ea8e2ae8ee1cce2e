"""The models a session may run on (NIGHTSHIFT_MODELS), and the check every client's choice
goes through: the REST API, the CLI, Slack's `model:NAME` and an agent's `spawn_session`."""

from __future__ import annotations

from app.errors import Invalid
from app.schemas import ModelList, ModelPublic


class ModelChoices:
    def __init__(self, specs: tuple[str, ...]) -> None:
        self.specs = specs
        """The first is the default."""

    @property
    def default(self) -> str | None:
        return self.specs[0] if self.specs else None

    def choose(self, requested: str | None) -> str | None:
        """The model a new session runs on: `requested` if offered, else the default; an
        unknown one is Invalid, naming the choices."""
        if requested is None or not requested.strip():
            return self.default
        requested = requested.strip()
        if requested in self.specs:
            return requested
        if not self.specs:
            raise Invalid(
                f"unknown model {requested!r}: this deployment offers no models "
                "(set NIGHTSHIFT_MODELS or NIGHTSHIFT_MODEL)"
            )
        raise Invalid(f"unknown model {requested!r}; choose one of: {', '.join(self.specs)}")

    def public(self) -> ModelList:
        return ModelList(
            models=[ModelPublic(name=spec, default=spec == self.default) for spec in self.specs],
            default=self.default,
        )
