/* Functions whose call frame information differs, compiled into a shared
 * object by fuzz/make_unwind_seeds.py as the unwinder fuzzer's seed file:
 * a leaf, a frame-pointer frame, a stack realigned for a wide local, a
 * variable-length array (CFA by rbp), calls through the PLT. */
#include <stdlib.h>
#include <string.h>

int seed_leaf(int x) { return x * 3 + 1; }

__attribute__((optimize("no-omit-frame-pointer"))) int
seed_framed(int x)
{
    volatile int a[8];
    for (int i = 0; i < 8; i++) {
        a[i] = seed_leaf(x + i);
    }
    return a[3];
}

int
seed_aligned(int x)
{
    _Alignas(64) volatile char wide[128];
    memset((char *)wide, x, sizeof wide);
    return wide[x & 127] + seed_framed(x);
}

int
seed_vla(int n)
{
    volatile char buffer[n > 0 && n < 4096 ? n : 16];
    buffer[0] = (char)n;
    return buffer[0] + seed_aligned(n) + (int)strlen(getenv("HOME") ? "x" : "");
}
