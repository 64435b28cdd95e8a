"""The budgets growing replies share (bot/channels/pacing.py): token buckets whose
updates are skipped, never waited for, while a message's first and final texts
always go; and LiveReply under them."""

from __future__ import annotations

from bot.channels.live import CURSOR, LiveReply
from bot.channels.pacing import KEYS_KEPT, Pacer, PacerBook
from tests.channels.test_live import Clock, Recording


def test_a_burst_then_the_rate_and_writes_that_must_go_run_into_debt() -> None:
    clock = Clock()
    pacer = Pacer(per_second=2, burst=3, clock=clock)
    for _ in range(3):
        assert pacer.ready()
        pacer.spend()
    assert not pacer.ready()
    pacer.spend()  # a final text: it goes, and the budget owes one
    clock.now += 0.5
    assert not pacer.ready()  # the debt is paid first
    clock.now += 0.5
    assert pacer.ready()
    clock.now += 100  # a quiet spell earns no more than the burst
    for _ in range(3):
        pacer.spend()
    assert not pacer.ready()


def test_a_book_keeps_a_budget_per_chat_and_forgets_the_least_recent() -> None:
    book = PacerBook(per_second=1, burst=1, clock=Clock())
    book["a"].spend()
    assert not book["a"].ready() and book["b"].ready()
    for n in range(KEYS_KEPT):
        book[f"chat {n}"]
    assert book["a"].ready()  # forgotten, so fresh


async def test_updates_wait_for_every_budget_first_and_final_texts_never_do() -> None:
    clock = Clock()
    chat = Pacer(per_second=1, burst=1, clock=clock)
    surface = Recording()
    live = LiveReply(surface, interval=0.0, pacers=(chat,), clock=clock)

    await live.add("one ")  # the first text: always shown (the budget's one token)
    await live.add("two ")  # an update with the budget spent: skipped
    assert surface.calls == [("show", f"one{CURSOR}")]
    clock.now += 1.0
    await live.add("three")  # earned again: shown, with what was skipped
    assert surface.calls[-1] == ("show", f"one two three{CURSOR}")
    await live.finish("one two three")  # with no budget: finished anyway
    assert surface.calls[-1] == ("seal", "one two three")
    assert not chat.ready()  # the final text was spent too


async def test_a_budget_of_updates_only_is_not_spent_by_first_and_final_texts() -> None:
    clock = Clock()
    appends = Pacer(per_second=1, burst=1, updates_only=True, clock=clock)
    surface = Recording()
    live = LiveReply(surface, interval=0.0, pacers=(appends,), clock=clock)

    await live.add("one ")
    assert appends.ready()  # a stream's start is another method's budget
    await live.add("two ")
    assert not appends.ready()
    await live.finish("one two")
    assert [kind for kind, _ in surface.calls] == ["show", "show", "seal"]
