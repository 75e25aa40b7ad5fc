#!/usr/bin/python3
"""Expected Go strconv.FormatFloat(v, 'g', -1, 64) strings for test_expfmt.

Prints one vector per line: the double's IEEE-754 bits as 16 hex digits, a
space, the string Go's Prometheus text writer would produce.  The set is
deterministic (fixed seed), so a mismatch reproduces.

Why Python is a valid oracle: repr() gives the shortest digit string that
round-trips, and among those the one nearest to the value, which is what Go's
shortest mode gives; only the layout differs, so it is redone here with Go's
'g' rule for the shortest form: exponent form when the decimal exponent X of
the first digit is < -4 or >= 6, with a signed exponent of at least two digits
(EXPOSITION.md section 1.3).  NaN, +Inf, -Inf and 0 (also -0) are Go's
writeFloat special cases.

Usage: gen_float_vectors.py [COUNT_SCALE]   (default 1: about 150,000 vectors)
"""
import decimal
import math
import random
import struct
import sys


def go_g(x):
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    if x == 0:
        return "0"
    _, digits, exp = decimal.Decimal(repr(abs(x))).normalize().as_tuple()
    ds = "".join(map(str, digits))
    nd = len(ds)
    X = exp + nd - 1
    if X < -4 or X >= 6:
        s = ds[0] + ("." + ds[1:] if nd > 1 else "")
        s += "e" + ("-" if X < 0 else "+") + "%02d" % abs(X)
    elif X >= 0:
        ip = ds[: X + 1].ljust(X + 1, "0")
        frac = ds[X + 1 :]
        s = ip + ("." + frac if frac else "")
    else:
        s = "0." + "0" * (-X - 1) + ds
    return ("-" if x < 0 else "") + s


def bits(x):
    return struct.unpack("<Q", struct.pack("<d", x))[0]


def from_bits(b):
    return struct.unpack("<d", struct.pack("<Q", b))[0]


def vectors(scale, rng):
    out = []
    add = out.append

    # Special values and the EXPOSITION.md examples.
    for x in (0.0, -0.0, 1.0, -1.0, math.inf, -math.inf, math.nan, 0.1, 0.1 + 0.2,
              1e6, 123456.0, 1234567.0, 100000.0, 123456.7, 1e-4, 1e-5,
              2.0 ** 53 + 1, 18446744073709551615.0, sys.float_info.max, 5e-324,
              1.395066363e9, 7.120236347223045e-307, 1e21, 999999.0, 12.345,
              sys.float_info.min, 2.2250738585072009e-308):
        add(x)

    # Boundaries of the layout rule and of the fast paths (integers < 2^53,
    # the 128-bit exact domain ~1e-15 .. 2^126): every power of ten and its
    # neighbours, and the same around powers of two.
    for k in range(-323, 309):
        p = float("1e%d" % k)
        for x in (p, math.nextafter(p, 0), math.nextafter(p, math.inf)):
            add(x)
            add(-x)
            add(x * 9.999999)
    for e in range(-1074, 1024):
        p = math.ldexp(1.0, e)
        for x in (p, math.nextafter(p, 0), math.nextafter(p, math.inf), p * 1.5, p * 3):
            if math.isfinite(x):
                add(x)
    for x in (99999.0, 99999.9, 999999.4, 999999.5, 999999.6, 1000001.0, 0.00009999,
              0.000099999999, 0.0001000001, 9.9999e-5, 2.0 ** 53, 2.0 ** 53 - 1,
              2.0 ** 64, 2.0 ** 126, 2.0 ** 127, 1e-15, 9.99e-16, 1.0000000000000002e-15):
        add(x)

    # Uniform over all bit patterns (mostly huge and tiny magnitudes).
    for _ in range(40000 * scale):
        x = from_bits(rng.getrandbits(64))
        if math.isfinite(x):
            add(x)
    # Subnormals.
    for _ in range(5000 * scale):
        add(from_bits(rng.getrandbits(52)))
    # What metrics look like: fractions, latencies, ratios, rates.
    for _ in range(25000 * scale):
        add(rng.random())
        add(rng.random() * 10.0 ** rng.randint(-12, 20))
    for _ in range(10000 * scale):
        add(rng.expovariate(1.0 / rng.choice((0.001, 0.1, 1.0, 100.0, 1e6))))
        add(rng.randint(1, 10 ** 9) / 1000.0)
    # Short decimals (the shortest form is much shorter than 17 digits).
    for _ in range(20000 * scale):
        d = rng.randint(1, 10 ** rng.randint(1, 15))
        add(float("%de%d" % (d, rng.randint(-30, 30))))
    # Integers: small, near 2^53, up to and past 2^64.
    for i in range(0, 3001):
        add(float(i))
    for _ in range(10000 * scale):
        add(float(rng.randint(0, 2 ** rng.randint(1, 80))))
        add(-float(rng.randint(0, 2 ** 53)))
    return out


def main():
    scale = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    rng = random.Random(20230425)
    w = sys.stdout.write
    for x in vectors(scale, rng):
        w("%016x %s\n" % (bits(x), go_g(x)))


if __name__ == "__main__":
    main()
