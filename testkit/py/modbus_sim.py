"""A Modbus device simulated by pymodbus (TCP server or RTU server on a
serial port / pty), for Tributary's tests.

Every read of a point serves a fresh value (a seeded pseudo-random sequence
per point), encoded by Python's struct with the point's byte and word
order, and logs one line per value served:

    <unix ms> <metric> <value> <ticks>

where <ticks> = (value * scale + offset) / 10^quantum computed with exact
fractions from the decimal text of scale and offset (the test's judge; it
is independent of the agent's arithmetic). Addresses no point covers are
invalid: a read of them is answered with ILLEGAL_ADDRESS.

Usage: modbus_sim.py (--tcp PORT | --rtu DEVICE) --spec FILE --log FILE
The spec is JSON: {"unit": 1, "seed": 7, "points": [{"metric", "address",
"type", "byte_order", "word_order", "scale", "offset", "quantum"}, ...]}.
"ready" is printed on stdout once the server is listening (TCP) or the
port is open (RTU).
"""

import argparse
import asyncio
import json
import random
import struct
import sys
import time
from fractions import Fraction
from decimal import Decimal

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

FORMATS = {
    "int16": ("h", 1), "uint16": ("H", 1),
    "int32": ("i", 2), "uint32": ("I", 2), "float32": ("f", 2),
    "int64": ("q", 4), "uint64": ("Q", 4), "float64": ("d", 4),
}


def words(point, value):
    fmt, n = FORMATS[point["type"]]
    raw = struct.pack(">" + fmt, value)
    ws = [raw[2 * i: 2 * i + 2] for i in range(n)]
    if point.get("word_order", "big") == "little":
        ws.reverse()
    if point.get("byte_order", "big") == "little":
        ws = [w[::-1] for w in ws]
    return [int.from_bytes(w, "big") for w in ws]


def draw(point, rng):
    t = point["type"]
    if t.startswith("float"):
        # Quarters: exact in binary and in decimal.
        return rng.randint(-40000, 40000) / 4
    fmt, n = FORMATS[t]
    bits = 16 * n
    lo, hi = (0, 2 ** bits - 1) if t.startswith("u") else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return rng.randint(max(lo, -10 ** 6), min(hi, 10 ** 6))


def ticks(point, value):
    exact = Fraction(Decimal(repr(value))) * Fraction(Decimal(repr(float(point.get("scale", 1.0))))) \
        + Fraction(Decimal(repr(float(point.get("offset", 0.0)))))
    t = exact / Fraction(10) ** point.get("quantum", 0)
    if t.denominator != 1:
        sys.exit(f"spec error: {point['metric']} value {value} is not whole ticks")
    return t.numerator


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tcp", type=int)
    ap.add_argument("--rtu")
    ap.add_argument("--spec", required=True)
    ap.add_argument("--log", required=True)
    args = ap.parse_args()
    spec = json.load(open(args.spec))
    points = spec["points"]
    rng = {p["metric"]: random.Random(f"{spec.get('seed', 1)}:{p['metric']}") for p in points}
    log = open(args.log, "w", buffering=1)
    # Benchmarks turn the log off ("log": false): it costs more than serving.
    logging = spec.get("log", True)
    by_addr = {}
    for p in points:
        for i in range(FORMATS[p["type"]][1]):
            by_addr[p["address"] + i] = p
    top = max(by_addr) + 1
    simdata = [SimData(a, values=0, datatype=DataType.REGISTERS if a in by_addr else DataType.INVALID)
               for a in range(top)]

    async def action(func_code, start_address, address, count, registers, set_values):
        if set_values is not None or func_code not in (3, 4):
            return ExcCodes.ILLEGAL_FUNCTION
        now = time.time_ns() // 1_000_000
        for p in points:
            a = p["address"]
            n = FORMATS[p["type"]][1]
            if a >= address and a + n <= address + count:
                v = draw(p, rng[p["metric"]])
                for i, w in enumerate(words(p, v)):
                    registers[a - start_address + i] = w
                if logging:
                    log.write(f"{now} {p['metric']} {v!r} {ticks(p, v)}\n")
        return None

    device = SimDevice(id=spec.get("unit", 1), simdata=simdata, action=action)

    async def serve():
        if args.tcp is not None:
            server = ModbusTcpServer(device, address=("127.0.0.1", args.tcp))
        else:
            server = ModbusSerialServer(device, framer=FramerType.RTU, port=args.rtu, baudrate=9600, parity="N")
        task = asyncio.create_task(server.serve_forever())
        await asyncio.sleep(0.5)
        if task.done():
            # The server could not listen (the port taken, the serial line
            # not opened, pyserial missing): fail with its error, never
            # "ready", so a test stops at the start instead of waiting on
            # a device that never answers.
            await task
            sys.exit("the Modbus server stopped before it was ready")
        print("ready", flush=True)
        await task

    asyncio.run(serve())


if __name__ == "__main__":
    main()
