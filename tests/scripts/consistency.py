"""Every shape of control flow that must keep pushes and pops matched:
generators, coroutines, exceptions through many frames, recursion to
RecursionError, KeyboardInterrupt, threads, and (with 'midstack') tracing
enabled and disabled in the middle of a call stack."""
import asyncio
import sys
import threading

import etwtrace


def gen(n):
    for i in range(n):
        yield i


def gen_user():
    total = sum(gen(5))
    g = gen(10)
    next(g)
    g.close()
    return total


async def leaf(i):
    await asyncio.sleep(0)
    return i


async def gather():
    return sum(await asyncio.gather(*(leaf(i) for i in range(5))))


def deep_raise(n):
    if n == 0:
        raise ValueError("bottom")
    deep_raise(n - 1)


def catch_deep():
    try:
        deep_raise(30)
    except ValueError:
        pass


def recurse(n):
    return recurse(n + 1)


def hit_recursion_limit():
    try:
        recurse(0)
    except RecursionError:
        pass


def interrupted(n):
    if n == 0:
        raise KeyboardInterrupt
    interrupted(n - 1)


def catch_interrupt():
    try:
        interrupted(10)
    except KeyboardInterrupt:
        pass


def worker():
    gen_user()
    catch_deep()


def threads():
    ts = [threading.Thread(target=worker) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def all_cases():
    gen_user()
    asyncio.run(gather())
    catch_deep()
    hit_recursion_limit()
    catch_interrupt()
    threads()


def inner_enable(tracer):
    tracer.enable()
    all_cases()


def outer_enable(tracer):
    inner_enable(tracer)
    all_cases()
    inner_disable(tracer)


def inner_disable(tracer):
    tracer.disable()


if "midstack" in sys.argv[1:]:
    outer_enable(etwtrace.InstrumentedTracer())
else:
    all_cases()
