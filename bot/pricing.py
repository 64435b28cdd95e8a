"""What the LLM's tokens cost: prices per million prompt and completion tokens, by model.

The defaults are list prices of common OpenAI models (USD, December 2026); a deployment
sets its own with LLM_PRICES (`model=prompt/completion`, comma-separated), over these.
A model with no price has no cost: reports show its tokens, and the cost as unknown.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

PER = 1_000_000  # prices are per million tokens


@dataclass(frozen=True, slots=True)
class Price:
    prompt: float  # per million prompt (input) tokens
    completion: float  # per million completion (output) tokens

    def of(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.prompt + completion_tokens * self.completion) / PER


DEFAULT_PRICES: Mapping[str, Price] = {
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.40),
    "o4-mini": Price(1.10, 4.40),
}


def parse_prices(text: str) -> dict[str, Price]:
    """`gpt-4o=2.5/10,my-model=0/0` as prices; ValueError saying what is wrong."""
    prices: dict[str, Price] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        model, _, pair = part.partition("=")
        prompt, slash, completion = pair.partition("/")
        try:
            price = Price(float(prompt), float(completion))
        except ValueError:
            price = None
        if (
            not model.strip()
            or not slash
            or price is None
            or min(price.prompt, price.completion) < 0
        ):
            raise ValueError(
                f"{part!r} is not model=prompt/completion (USD per million tokens), "
                "e.g. gpt-4o=2.5/10"
            )
        prices[model.strip()] = price
    return prices


def prices_with(overrides: Mapping[str, Price]) -> dict[str, Price]:
    """The default prices, with a deployment's own over them."""
    return {**DEFAULT_PRICES, **overrides}


def _negative(price: Price | None) -> bool:
    return price is not None and min(price.prompt, price.completion) < 0
