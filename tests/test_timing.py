"""mprec.timing.in_blocks and fastest: which calls they make, in which order, and which they time."""

import time

import pytest

from mprec.timing import calls_in_blocks, fastest, in_blocks, round_orders


def test_steps_take_turns_in_blocks_whose_first_call_is_untimed():
    calls = []

    def step(key):
        def run(i):
            calls.append((key, i))
            if key == "slow":
                time.sleep(0.01)
        return run

    times = in_blocks({"slow": step("slow"), "fast": step("fast")}, {"slow": 5, "fast": 2}, block=3, start=10,
                      before=lambda: calls.append("before"))
    # "before" (a barrier, say) comes before each timed call only; the keys' call numbers run on through the
    # untimed calls; a key with its count timed sits out the later turns.
    assert calls == [("slow", 10), "before", ("slow", 11), "before", ("slow", 12),
                     ("fast", 10), "before", ("fast", 11), "before", ("fast", 12),
                     ("slow", 13), "before", ("slow", 14), "before", ("slow", 15),
                     ("slow", 16), "before", ("slow", 17)]
    assert [len(times["slow"]), len(times["fast"])] == [5, 2]
    assert [calls_in_blocks(5, 3), calls_in_blocks(2, 3)] == [sum(c[0] == k for c in calls if c != "before")
                                                              for k in ("slow", "fast")]
    assert all(t >= 0.01 for t in times["slow"])  # the timed span holds the call


def test_a_block_needs_a_timed_call():
    with pytest.raises(ValueError, match=r"in_blocks: block must be at least 2 .* got 1"):
        in_blocks({"a": lambda i: None}, {"a": 3}, block=1)


def test_fastest_runs_before_ahead_of_every_timed_call_only():
    calls = []

    def candidate(key, seconds):
        def run():
            calls.append(key)
            time.sleep(seconds)
        return run

    best = fastest({"slow": candidate("slow", 0.006), "fast": candidate("fast", 0.001)}, rounds=3,
                   before=lambda: calls.append("before"))
    assert best == "fast"
    # Each candidate once untimed, then rounds that time each once, each timed call after its own "before".
    assert calls[:2] == ["slow", "fast"]
    rounds = calls[2:]
    assert len(rounds) == 3 * 4
    assert rounds[0::2] == ["before"] * 6
    assert all(sorted(rounds[1::2][i:i + 2]) == ["fast", "slow"] for i in range(0, 6, 2))


def test_round_orders_vary_what_each_item_follows():
    """Every round holds each item once, and over rounds an item follows different others (a rotating order would
    put the same one before it in most rounds); the same seed gives the same orders."""
    orders = list(round_orders("abcd", 24, seed=3))
    assert all(sorted(order) == list("abcd") for order in orders)
    followed = {item: {order[order.index(item) - 1] for order in orders if order.index(item) > 0} for item in "abcd"}
    assert all(len(others) >= 2 for others in followed.values())
    assert list(round_orders("abcd", 24, seed=3)) == orders
    assert list(round_orders("abcd", 24, seed=4)) != orders
