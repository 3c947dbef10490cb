#!/usr/bin/env python3
"""Exact reference for the sketch's bucket indices (shared/tests/sketch_index.rs).

Independent of the Rust tables: exact integer arithmetic only. For every
quantum exponent e in -18..18 it prints, for the scale-8 boundaries
B_i = 2^(i/256) around the tick range 1..2^53, the floors F_i = floor(B_i / q)
(q = 10^e), and the two boundary tables the Rust code builds (QuantumIndex:
64-bit mantissa at scale 8; DeviceIndex: 32-bit mantissa at scale 6).

2^(r/256) is bracketed exactly by an integer 256th root: L <= 2^(r/256) * 2^K
< L + 1, so every quantity below lies in an interval of exact rationals whose
floor is asserted to be decided (it always is with K = 256).

Output, one line per quantum:
  q <e> <first i> <F_first> <F_first+1> ...
  t <e> <offset8> <64-bit bound 0> ... <bound 255>
  d <e> <offset6> <32-bit bound 0> ... <bound 63>
"""
import sys
from decimal import Decimal, getcontext

K = 256  # bits below the binary point of the brackets of 2^(r/256)


def iroot(x, n, guess):
    """floor(x ** (1/n)) for integers x >= 2, n >= 1: Newton from a guess
    above the root, then exact checks (the guess only saves time)."""
    y = max(guess, 1 << ((x.bit_length() - 1) // n))
    while y ** n <= x:
        y *= 2
    while True:
        z = ((n - 1) * y + x // y ** (n - 1)) // n
        if z >= y:
            break
        y = z
    while y ** n > x:
        y -= 1
    while (y + 1) ** n <= x:
        y += 1
    return y


def _guess(r):
    getcontext().prec = 120
    return int(Decimal(2) ** (Decimal(r) / 256 + K)) + 2


ROOTS = [1 << K] + [iroot(1 << (r + 256 * K), 256, _guess(r)) for r in range(1, 256)]


def floor_of(a, r, e, extra_bits=0):
    """floor(2^(a + r/256) * 10^-e * 2^extra_bits), exactly; and whether the
    value is an integer (only possible when r == 0)."""
    lo = ROOTS[r]
    hi = lo if r == 0 else lo + 1  # exclusive upper bracket when r != 0
    shift = a + extra_bits - K
    num_mul = (1 << max(shift, 0)) * (10 ** max(-e, 0))
    den = (1 << max(-shift, 0)) * (10 ** max(e, 0))
    f_lo = lo * num_mul // den
    if r == 0:
        return f_lo, lo * num_mul % den == 0
    f_hi = (hi * num_mul - 1) // den
    assert f_lo == f_hi, ("undecided", a, r, e)
    return f_lo, False


def ceil_c(e, n):
    """ceil(n * e * log2(10)), exactly, for n a power of two."""
    if e == 0:
        return 0
    x = 10 ** (n * abs(e))  # not a power of two, so ceil(log2 x) = bit_length
    return x.bit_length() if e > 0 else -(x.bit_length() - 1)


def table(e, scale, w):
    n = 1 << scale
    c = ceil_c(e, n)
    bounds = []
    for k in range(n):
        a, r = divmod(k + c, n)
        v, _ = floor_of(a, r << (8 - scale), e, w - 1)
        assert (1 << (w - 1)) <= v < (1 << w)
        bounds.append(v)
    return c - 1, bounds


def main():
    out = sys.stdout
    for e in range(-18, 19):
        # Boundaries from below one tick to above 2^53 ticks, widened to
        # multiples of 4096 (a bucket at scale -4) so every scale's search
        # has a boundary on either side; floors past 2^63 are cut there
        # (every tick checked is at most 2^53).
        step = 4096
        lo = ((ceil_c(e, 256) - 3) // step - 1) * step
        hi = ((53 * 256 + ceil_c(e, 256) + 3) // step + 2) * step
        floors = []
        for i in range(lo, hi + 1):
            a, r = divmod(i, 256)
            f, _ = floor_of(a, r, e)
            floors.append(min(f, 1 << 63))
        assert all(x <= y for x, y in zip(floors, floors[1:]))
        out.write("q %d %d %s\n" % (e, lo, " ".join(map(str, floors))))
        off, b = table(e, 8, 64)
        out.write("t %d %d %s\n" % (e, off, " ".join(map(str, b))))
        off, b = table(e, 6, 32)
        out.write("d %d %d %s\n" % (e, off, " ".join(map(str, b))))


if __name__ == "__main__":
    main()
