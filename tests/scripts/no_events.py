"""Does a little work and raises no events of its own."""


def work(n):
    return sum(i * i for i in range(n))


print(work(1000))
