"""An OPC UA server simulated by asyncua (PyPI), for Tributary's tests.

It serves the spec's variables in namespace 2 (node ids "ns=2;s=<name>" or
"ns=2;i=<number>") on opc.tcp://127.0.0.1:PORT/ (security None; with
--secure DIR, Basic256Sha256 with SignAndEncrypt only, under a self-signed
certificate it makes in DIR; with --user, only that user name and password
may open a session). Each
variable starts with a first value; every value the server writes carries
a SourceTimestamp it sets itself (whole milliseconds, strictly increasing
per variable) and is logged, one line each:

    <unix ms> <metric> <status> <ticks>

where <status> is "good", "bad" (written with BadSensorFailure) or "text"
(a String variable, not a number) and <ticks> = (value * scale + offset)
/ 10^quantum, exact with fractions from the decimal text of scale and
offset, rounded half away from zero (0 for bad and text lines). The test's
judge reads this log; it is independent of the agent's arithmetic.

Usage: opcua_sim.py --port PORT --spec FILE --log FILE [--user U:P] [--secure DIR]
The spec is JSON: {"seed": 7, "interval_ms": 100, "rounds": 20,
"items": [{"node", "metric", "type", "scale", "offset", "quantum",
"bad_every"}, ...], "refuse_subscriptions": 0, "refuse_items": 0}; type
is Boolean, Int16, Int32, UInt64, Float, Double or String; bad_every N
writes every Nth value with a Bad status; refuse_subscriptions N answers
the first N CreateSubscription requests with BadTooManySubscriptions, and
refuse_items N the first N CreateMonitoredItems requests with
BadTooManyMonitoredItems (the sessions themselves are accepted), as a
server short of resources would.
"ready" is printed on stdout once the first values are set and the server
listens. Each line "go" on stdin starts one run of `rounds` writes of
every variable, `interval_ms` apart (no faster than the agent's sampling
interval, so no change is coalesced); "done" is printed after each run.
"""

import argparse
import asyncio
import datetime
import json
import random
import sys
import time
from decimal import Decimal, ROUND_HALF_UP
from fractions import Fraction
from pathlib import Path

from asyncua import Server, ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.internal_session import InternalSession
from asyncua.server.user_managers import UserManager
from cryptography.x509.oid import ExtendedKeyUsageOID

TYPES = {
    "Boolean": ua.VariantType.Boolean,
    "Int16": ua.VariantType.Int16,
    "Int32": ua.VariantType.Int32,
    "UInt64": ua.VariantType.UInt64,
    "Float": ua.VariantType.Float,
    "Double": ua.VariantType.Double,
    "String": ua.VariantType.String,
}


class OneUser(UserManager):
    def __init__(self, user, password):
        self.user, self.password = user, password

    def get_user(self, iserver, username=None, password=None, certificate=None):
        if username == self.user and password == self.password:
            return User(role=UserRole.User, name=username)
        return None


def draw(item, rng):
    t = item["type"]
    if t == "Boolean":
        return rng.random() < 0.5
    if t == "Int16":
        return rng.randint(-32768, 32767)
    if t == "Int32":
        return rng.randint(-2**31, 2**31 - 1) // 1000
    if t == "UInt64":
        return rng.randint(0, 2**40)
    if t in ("Float", "Double"):
        # Quarters: exact in binary and in decimal.
        return rng.randint(-40000, 40000) / 4
    return "v%d" % rng.randint(0, 999)


def ticks(item, value):
    exact = Fraction(int(value)) if isinstance(value, bool) else Fraction(value)
    x = exact * Fraction(Decimal(repr(item.get("scale", 1.0)))) + Fraction(
        Decimal(repr(item.get("offset", 0.0))))
    x /= Fraction(10) ** item.get("quantum", 0)
    # Half away from zero.
    n = abs(x.numerator) * 2 + x.denominator
    r = n // (2 * x.denominator)
    return r if x >= 0 else -r


class Sim:
    def __init__(self, spec, log):
        self.spec = spec
        self.rng = random.Random(spec.get("seed", 1))
        self.log = log
        self.count = {}
        self.last_ms = {}

    def stamp(self, metric):
        ms = max(int(time.time() * 1000), self.last_ms.get(metric, 0) + 1)
        self.last_ms[metric] = ms
        return ms

    def value(self, item):
        """The next DataValue of `item`, logged."""
        metric = item["metric"]
        n = self.count.get(metric, 0) + 1
        self.count[metric] = n
        ms = self.stamp(metric)
        at = datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc)
        v = draw(item, self.rng)
        vt = TYPES[item["type"]]
        bad_every = item.get("bad_every", 0)
        if item["type"] == "String":
            status, line = ua.StatusCode(ua.StatusCodes.Good), "text 0"
        elif bad_every and n % bad_every == 0:
            status, line = ua.StatusCode(ua.StatusCodes.BadSensorFailure), "bad 0"
        else:
            status, line = ua.StatusCode(ua.StatusCodes.Good), "good %d" % ticks(item, v)
        self.log.write("%d %s %s\n" % (ms, metric, line))
        self.log.flush()
        return ua.DataValue(ua.Variant(v, vt), StatusCode=status, SourceTimestamp=at,
                            ServerTimestamp=at)


async def secure(server, directory):
    """Basic256Sha256 with SignAndEncrypt as the only endpoint, under a
    self-signed certificate made in `directory` (client certificates are
    accepted as they come)."""
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = directory / "server-key.pem", directory / "server-cert.der"
    await setup_self_signed_certificate(
        key, cert, server.get_application_uri(), "127.0.0.1",
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        {"commonName": "tributary-test-server"})
    await server.load_certificate(str(cert))
    await server.load_private_key(str(key))
    server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])


def refuse(service, n, error):
    """Answers the next `n` requests of InternalSession's `service`, of any
    session, with `error`."""
    left = [n]
    serve = getattr(InternalSession, service)

    async def refusing(self, *args, **kwargs):
        if left[0] > 0:
            left[0] -= 1
            raise error()
        return await serve(self, *args, **kwargs)

    setattr(InternalSession, service, refusing)


def node_id(text):
    ns, ident = text.split(";", 1)
    idx = int(ns[3:])
    kind, val = ident.split("=", 1)
    return ua.NodeId(int(val), idx) if kind == "i" else ua.NodeId(val, idx)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--spec", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--user")
    ap.add_argument("--secure")
    args = ap.parse_args()
    spec = json.load(open(args.spec))
    log = open(args.log, "a")
    sim = Sim(spec, log)
    refuse("create_subscription", spec.get("refuse_subscriptions", 0),
           ua.uaerrors.BadTooManySubscriptions)
    refuse("create_monitored_items", spec.get("refuse_items", 0),
           ua.uaerrors.BadTooManyMonitoredItems)

    user_manager = None
    if args.user:
        u, p = args.user.split(":", 1)
        user_manager = OneUser(u, p)
    server = Server(user_manager=user_manager)
    await server.init()
    server.set_endpoint("opc.tcp://127.0.0.1:%d/" % args.port)
    if args.secure:
        await secure(server, Path(args.secure))
    else:
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    server.set_identity_tokens(
        [ua.UserNameIdentityToken] if args.user else [ua.AnonymousIdentityToken])
    idx = await server.register_namespace("urn:tributary:test")
    assert idx == 2, idx
    folder = await server.nodes.objects.add_folder(idx, "Plant")
    nodes = []
    for item in spec["items"]:
        first = sim.value(item)
        node = await folder.add_variable(node_id(item["node"]), item["metric"],
                                         first.Value.Value, TYPES[item["type"]])
        await server.write_attribute_value(node.nodeid, first)
        nodes.append((item, node))
    async with server:
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        interval = spec.get("interval_ms", 100) / 1000
        while True:
            line = await reader.readline()
            if not line:
                return
            if line.strip() != b"go":
                continue
            for _ in range(spec.get("rounds", 10)):
                for item, node in nodes:
                    await server.write_attribute_value(node.nodeid, sim.value(item))
                await asyncio.sleep(interval)
            print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
