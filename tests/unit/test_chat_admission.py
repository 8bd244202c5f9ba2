"""Fair admission of chat requests: the per-account cap and the round-robin model queue."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from tunery.serving.admission import Admission, Busy, ModelQueue


def run(coroutine):
    """Run the scenario on an event loop of its own thread: a test before it in the session
    (Playwright's sync API) may have left a loop running on this one."""
    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(asyncio.run, coroutine).result()


def test_an_account_past_its_cap_is_refused_with_a_retry_time() -> None:
    async def scenario() -> None:
        admission = Admission(per_account=2, per_model=8)
        first = await admission.admit("a", "m")
        waiting = asyncio.create_task(admission.admit("a", "m"))
        await asyncio.sleep(0)
        with pytest.raises(Busy) as refused:
            await admission.admit("a", "m")
        assert refused.value.code == "rate_limit_exceeded"
        assert refused.value.retry_after >= 1
        # Another account is not refused: it waits its turn.
        other = asyncio.create_task(admission.admit("b", "m"))
        await asyncio.sleep(0)
        assert not other.done()
        admission.done(first)
        admission.done(await waiting)
        admission.done(await other)
        assert admission.in_flight("a") == admission.in_flight("b") == 0

    run(scenario())


def test_turns_go_round_robin_across_accounts() -> None:
    async def scenario() -> list[str]:
        queue = ModelQueue(capacity=16)
        served: list[str] = []
        await queue.turn("holder", 1)

        async def request(account: str) -> None:
            await queue.turn(account, 1)
            served.append(account)
            await asyncio.sleep(0)
            queue.release()

        # The noisy account queues six requests before the quiet one queues two.
        tasks = [asyncio.create_task(request("noisy")) for _ in range(6)]
        await asyncio.sleep(0)
        tasks += [asyncio.create_task(request("quiet")) for _ in range(2)]
        await asyncio.sleep(0)
        queue.release()
        await asyncio.gather(*tasks)
        assert not queue.busy and queue.waiting == 0
        return served

    served = run(scenario())
    assert served[:4] == ["noisy", "quiet", "noisy", "quiet"]
    assert served[4:] == ["noisy"] * 4


def test_a_full_model_queue_refuses_and_a_caller_who_leaves_frees_its_place() -> None:
    async def scenario() -> None:
        queue = ModelQueue(capacity=2)
        await queue.turn("a", 1)
        first = asyncio.create_task(queue.turn("b", 1))
        second = asyncio.create_task(queue.turn("c", 1))
        await asyncio.sleep(0)
        with pytest.raises(Busy) as refused:
            await queue.turn("d", 3)
        assert (refused.value.code, refused.value.retry_after) == ("model_queue_full", 3)
        first.cancel()
        await asyncio.sleep(0)
        assert queue.waiting == 1
        queue.release()
        await second  # c's turn, although b queued first and left
        queue.release()
        assert not queue.busy

    run(scenario())


def test_one_account_alone_cannot_fill_a_model_queue() -> None:
    async def scenario() -> None:
        admission = Admission(per_account=3, per_model=4)
        holder = await admission.admit("noisy", "m")
        waiting = [asyncio.create_task(admission.admit("noisy", "m")) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(Busy):
            await admission.admit("noisy", "m")
        quiet = asyncio.create_task(admission.admit("quiet", "m"))
        await asyncio.sleep(0)
        assert not quiet.done()  # queued, not refused
        admission.done(holder)
        # The quiet account queued after both of noisy's waiting requests, and goes second.
        admission.done(await waiting[0])
        ticket = await quiet
        assert ticket.account_id == "quiet"
        admission.done(ticket)
        admission.done(await waiting[1])

    run(scenario())
