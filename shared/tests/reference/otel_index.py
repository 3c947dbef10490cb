#!/usr/bin/env python3
"""The OpenTelemetry SDK's exponential-histogram bucket index of ordinary
values (shared/tests/sketch_index.rs).

Reads lines "<e> <v>" (a reading of v ticks of the quantum 10^e) and prints,
for each, the SDK's index of the value at scales 8, 7, ..., -4 — from
LogarithmMapping for scales above 0 and ExponentMapping for 0 and below —
or "near" when the value lies within float reach of a bucket boundary, where
the SDK's float mapping is not exact (the exact reference covers those).
"""
import math
import sys
from decimal import Decimal

from opentelemetry.sdk.metrics._internal.exponential_histogram.mapping.exponent_mapping import (
    ExponentMapping,
)
from opentelemetry.sdk.metrics._internal.exponential_histogram.mapping.logarithm_mapping import (
    LogarithmMapping,
)

SCALES = list(range(8, -5, -1))
MAPPINGS = [LogarithmMapping(s) if s > 0 else ExponentMapping(s) for s in SCALES]
LOG2_10 = math.log2(10)


def main():
    out = []
    for line in sys.stdin:
        e, v = map(int, line.split())
        x = float(Decimal(v).scaleb(e))  # correctly rounded
        t = math.log2(v) + e * LOG2_10  # log2 of the exact value, ~1e-13 off
        near = any(abs(t * 2**s - round(t * 2**s)) < 1e-7 for s in SCALES)
        if near:
            out.append("near")
        else:
            out.append(" ".join(str(m.map_to_index(x)) for m in MAPPINGS))
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
