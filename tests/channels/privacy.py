"""The privacy check of conversation scopes, as the local LLM server saw it.

A person writes in several places; each message carries a marker naming its round and
its place (`r1-dm-mark`). For every message, the request the LLM server received for it
must hold the earlier messages of its own place, and nothing of any other place.
"""

from __future__ import annotations

from collections.abc import Iterable

from bot.emulators.llm_api import LLMServer


def mark(round_: int, place: str) -> str:
    return f"r{round_}-{place}-mark"


def request_text(llm: LLMServer, marker: str) -> str:
    """Every message of the one request whose newest message holds `marker`."""
    found = [r for r in llm.requests if marker in r["messages"][-1]["content"]]
    assert len(found) == 1, f"{len(found)} requests for {marker}"
    return "\n".join(str(message["content"]) for message in found[0]["messages"])


def assert_apart(
    llm: LLMServer, places: Iterable[str], rounds: Iterable[int], remembers: int = 1
) -> None:
    """Each place's request of each round holds round `remembers` of its own place (its
    conversation goes on) and no marker of another place."""
    names = list(places)
    for round_ in rounds:
        for place in names:
            seen = request_text(llm, mark(round_, place))
            assert mark(remembers, place) in seen, (place, round_, seen)
            strangers = [other for other in names if other != place]
            leaked = [o for o in strangers if f"-{o}-mark" in seen]
            assert not leaked, f"{place} (round {round_}) saw {leaked}: {seen}"
