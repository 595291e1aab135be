"""asyncio tasks whose chains and counts are known (tests/test_asyncio.py).

Usage: async_tasks.py STEPS BURN SLEEP [uvloop]

main-task gathers: group (a TaskGroup running alpha and beta, each calling
top() STEPS times, one step each, burning BURN loop turns), sleepy
(waits SLEEP seconds at sleepy -> waiter -> asyncio.sleep), gathered-1
and -2 (gather's own tasks, renamed in their first step; top() once in
each step), and canceller, which cancels doomed while doomed sleeps.
A thread runs a loop of its own, beside the main one, with task side-alpha (top() STEPS
times), and a coroutine is driven by hand with send(), outside any task,
before the loop and from one of its callbacks.
"""
import asyncio
import sys
import threading

STEPS = int(sys.argv[1])
BURN = int(sys.argv[2])
SLEEP = float(sys.argv[3])
UVLOOP = sys.argv[4:] == ["uvloop"]


def burn(n):
    total = 0
    for i in range(n):
        total += i
    return total


def leaf():
    return burn(BURN)


def mid():
    return leaf()


def top():
    return mid()


async def cpu(steps):
    for _ in range(steps):
        top()
        await asyncio.sleep(0)


async def group():
    async with asyncio.TaskGroup() as tg:
        tg.create_task(cpu(STEPS), name="alpha")
        tg.create_task(cpu(STEPS), name="beta")


async def waiter():
    await asyncio.sleep(SLEEP)


async def sleepy():
    await waiter()


async def gathered(k):
    asyncio.current_task().set_name(f"gathered-{k}")
    top()
    await asyncio.sleep(0)
    top()


async def doomed():
    await asyncio.sleep(60)


async def canceller(task):
    await asyncio.sleep(0.05)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


async def handmade():
    top()


def by_hand():
    coroutine = handmade()
    try:
        coroutine.send(None)
    except StopIteration:
        pass


async def main():
    asyncio.current_task().set_name("main-task")
    doomed_task = asyncio.create_task(doomed(), name="doomed")
    await asyncio.gather(
        asyncio.create_task(group(), name="group"),
        asyncio.create_task(sleepy(), name="sleepy"),
        gathered(1), gathered(2),
        asyncio.create_task(canceller(doomed_task), name="canceller"))
    asyncio.get_running_loop().call_soon(by_hand)
    await asyncio.sleep(0)


async def side_main():
    asyncio.current_task().set_name("side-main")
    await asyncio.create_task(cpu(STEPS), name="side-alpha")


def run(coroutine):
    if UVLOOP:
        import uvloop
        loop = uvloop.new_event_loop()
        try:
            return loop.run_until_complete(coroutine)
        finally:
            loop.close()
    return asyncio.run(coroutine)


by_hand()
# The side thread's loop runs beside the main one (at once, on a
# free-threaded build).
side = threading.Thread(target=run, args=(side_main(),), name="side")
side.start()
run(main())
side.join()
