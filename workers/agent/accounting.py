"""Usage and estimated cost. Prices come from `NIGHTSHIFT_MODEL_PRICES`, in US dollars per
million tokens: `model=input/output[/cached],…`, e.g. `gpt-4.1=2/8/0.5,claude-sonnet-4-5=3/15/0.3`.
A model matches the longest price name it starts with (so dated variants match)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Price:
    input: float
    output: float
    cached: float
    """Per million cached input tokens (defaults to the input price)."""


def parse_prices(text: str) -> dict[str, Price]:
    """Parse NIGHTSHIFT_MODEL_PRICES; ValueError names the entry that is wrong and why."""
    prices: dict[str, Price] = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        name, sep, values = entry.partition("=")
        parts = values.split("/")
        if not sep or not name.strip() or len(parts) not in (2, 3):
            raise ValueError(
                f"NIGHTSHIFT_MODEL_PRICES entry {entry!r}: use model=input/output[/cached] "
                "(US dollars per million tokens)"
            )
        try:
            numbers = [float(p) for p in parts]
        except ValueError:
            raise ValueError(
                f"NIGHTSHIFT_MODEL_PRICES entry {entry!r}: prices must be numbers"
            ) from None
        if any(n < 0 for n in numbers):
            raise ValueError(f"NIGHTSHIFT_MODEL_PRICES entry {entry!r}: prices must be >= 0")
        cached = numbers[2] if len(numbers) == 3 else numbers[0]
        prices[name.strip().partition(":")[2] or name.strip()] = Price(
            numbers[0], numbers[1], cached
        )
    return prices


def cost_usd(
    prices: dict[str, Price], model_name: str, input_tokens: int, output_tokens: int, cached: int
) -> float | None:
    """The estimated cost of one model turn, or None when the model has no price."""
    name = model_name.partition(":")[2] or model_name
    matches = [k for k in prices if name.startswith(k)]
    if not matches:
        return None
    price = prices[max(matches, key=len)]
    fresh = max(0, input_tokens - cached)
    total = fresh * price.input + cached * price.cached + output_tokens * price.output
    return round(total / 1_000_000, 6)
