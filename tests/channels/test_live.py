"""LiveReply, the platform-neutral part of a growing reply, against a recording surface
and a clock the test moves: throttling, the cursor, sealing at breaks, the final text."""

from __future__ import annotations

from bot.channels.live import CURSOR, LiveReply


class Recording:
    def __init__(self, limit: int = 40, rewrites: bool = True) -> None:
        self.limit = limit
        self.rewrites = rewrites
        self.where = None  # nothing booked: these tests book no stream
        self.calls: list[tuple[str, str]] = []

    async def show(self, text: str) -> None:
        self.calls.append(("show", text))

    async def seal(self, text: str) -> None:
        self.calls.append(("seal", text))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_pieces_within_an_interval_are_shown_together_with_a_cursor() -> None:
    surface, clock = Recording(), Clock()
    live = LiveReply(surface, interval=1.0, clock=clock)

    await live.add("Hello ")  # shown at once: the first text a user sees
    await live.add("there ")
    clock.now += 0.5
    await live.add("my ")
    clock.now += 0.6
    await live.add("friend")
    await live.finish("Hello there my friend")

    assert surface.calls == [
        ("show", f"Hello{CURSOR}"),
        ("show", f"Hello there my friend{CURSOR}"),
        ("seal", "Hello there my friend"),
    ]
    assert live.updates == 3


async def test_a_reply_outgrowing_a_message_is_sealed_at_a_break_and_goes_on() -> None:
    surface, clock = Recording(limit=30), Clock()
    live = LiveReply(surface, interval=0.0, clock=clock)

    for word in ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]:
        await live.add(word + " ")
    await live.finish("one two three four five six seven eight nine ten ")

    seals = [text for kind, text in surface.calls if kind == "seal"]
    shows = [text for kind, text in surface.calls if kind == "show"]
    assert seals == ["one two three four five six", "seven eight nine ten"]
    assert all(len(text) <= 30 for text in shows + seals)


async def test_the_final_text_adds_what_follows_what_was_streamed() -> None:
    surface = Recording()
    live = LiveReply(surface, interval=0.0, clock=Clock())

    await live.add("Half a ")
    await live.finish("Half a \n\n[cut]")

    assert surface.calls[-1] == ("seal", "Half a \n\n[cut]")


async def test_a_final_text_that_is_no_continuation_goes_below_what_was_shown() -> None:
    surface = Recording(limit=100)
    live = LiveReply(surface, interval=0.0, clock=Clock())

    await live.add("Half a ")
    await live.finish("Sorry, I can't answer right now.")

    assert surface.calls[-1] == ("seal", "Half a \n\nSorry, I can't answer right now.")


async def test_a_reply_never_streamed_is_simply_sent_in_parts() -> None:
    surface = Recording(limit=12)
    live = LiveReply(surface, interval=1.0, clock=Clock())

    await live.finish("short words only here")

    assert surface.calls == [("seal", "short words"), ("seal", "only here")]
    assert live.streamed == "short words only here"


async def test_a_surface_that_only_appends_is_never_sealed_short_of_what_it_shows() -> None:
    # "one two three four five six" is shown; the next piece outgrows the message. A
    # surface that rewrites is sealed at the best break, a stream at one after the end.
    pieces = ["one two three four five six", "seven,eight,nine"]
    seals = {}
    for rewrites in (True, False):
        surface = Recording(limit=40, rewrites=rewrites)
        live = LiveReply(surface, interval=0.0, clock=Clock())
        for piece in pieces:
            await live.add(piece)
        await live.finish("".join(pieces))
        seals[rewrites] = [text for kind, text in surface.calls if kind == "seal"]
        shown = [text.removesuffix(CURSOR) for kind, text in surface.calls if kind == "show"]
        assert shown[0] == pieces[0]
        assert "".join(seals[rewrites]).replace(" ", "") == "".join(pieces).replace(" ", "")

    assert seals[True] == ["one two three four five", "sixseven,eight,nine"]
    # No break after what was shown: cut at the limit (40, less the cursor's room).
    assert seals[False] == ["one two three four five sixseven,eight", ",nine"]
