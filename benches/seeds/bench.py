"""The Python seeds' own clients, each against its own Python server and
against busline, measured in one run: call round trip (median, p99) and
calls per second, one call in flight.

Run by benches/seeds/run, which builds busline and makes the venv:
    python bench.py BUSLINE_BINARY CALLS
Rounds alternate the two servers of each seed, so a noisy machine weighs on
both alike; the table gives the ratio busline / own of each.
"""

import asyncio
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

BUSLINE = sys.argv[1]
CALLS = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
ROUNDS = 3
WARMUP = 200
TMP = tempfile.mkdtemp(prefix="busline-seeds-")
COUNTER = itertools.count()


def start(args, ready=None):
    """A server process; waits until `ready()` holds (up to 20 s)."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while ready is not None and not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"server {args[:3]} did not start")
        time.sleep(0.05)
    return proc


def python_server(code, *args, ready=None):
    return start([sys.executable, "-c", code, *args], ready)


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def summary(samples):
    samples = sorted(samples)
    median = statistics.median(samples)
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    rate = len(samples) / sum(samples)
    return median * 1e6, p99 * 1e6, rate


def timed(call, count):
    times = []
    for _ in range(count):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return times


# --- codechu-ipc ----------------------------------------------------------

CODECHU_SERVER = """
import sys, time
from codechu_ipc import UnixServer
with UnixServer(sys.argv[1], lambda req: req):
    while True:
        time.sleep(3600)
"""


def codechu(path):
    from codechu_ipc import JsonLineProtocol, UnixClient

    client = UnixClient(path)
    request = {"cmd": "echo", "n": 1}
    # The client as shipped: a connection per request.
    per_request = lambda: client.request(request)  # noqa: E731
    # And on a kept connection, one line out, one line in.
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    reader = sock.makefile("rb")
    line = JsonLineProtocol.encode(request)

    def kept():
        sock.sendall(line)
        reader.readline()

    return {"UnixClient.request": per_request, "kept connection": kept}, sock.close


# --- shm-rpc-bridge -------------------------------------------------------

SRB_SERVER = """
import sys
from shm_rpc_bridge import RPCServer
server = RPCServer(sys.argv[1])
server.register("echo", lambda **kw: kw)
server.start()
"""


def srb(name):
    from shm_rpc_bridge import RPCClient

    client = RPCClient(name, wait_for_server=20)
    return {"RPCClient.call": lambda: client.call("echo", x=1)}, client.close


# --- comm-ipc -------------------------------------------------------------

COMM_SERVER = """
import asyncio, sys
from comm_ipc import CommIPCServer
asyncio.run(CommIPCServer(socket_path=sys.argv[1]).run())
"""

COMM_PROVIDER = """
import asyncio, sys
from comm_ipc import CommIPC

async def main():
    c = CommIPC(client_id="bench-provider", socket_path=sys.argv[1])
    await c.connect()
    ch = await c.open("bench")
    async def echo(cd):
        return cd.data
    await ch.add_event("echo", echo)
    open(sys.argv[2], "w").close()
    await asyncio.Event().wait()

asyncio.run(main())
"""


def comm_ipc(path):
    from comm_ipc import CommIPC

    loop = asyncio.new_event_loop()
    client = CommIPC(socket_path=path, auto_reconnect=False)
    loop.run_until_complete(client.connect())
    channel = loop.run_until_complete(client.open("bench"))

    def call():
        loop.run_until_complete(channel.event("echo", {"x": 1}))

    def close():
        loop.run_until_complete(client.close())
        loop.close()

    return {"channel.event": call}, close


def exists(path):
    return lambda: os.path.exists(path)


def listening(path):
    """Whether a Unix socket at `path` takes connections."""

    def check():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(path)
                return True
            except OSError:
                return False

    return check


def comm_ipc_servers(path, own):
    """The server (comm-ipc's or busline's) and a Python provider on it."""
    if own:
        server = python_server(COMM_SERVER, path, ready=listening(path))
    else:
        url = f"unix://{path}?codec=comm-ipc"
        native = f"unix://{path}.native"
        server = start([BUSLINE, "broker", "--listen", native, "--listen", url], listening(path))
    marker = path + ".provider"
    provider = python_server(COMM_PROVIDER, path, marker, ready=exists(marker))
    return [provider, server]


def seeds():
    """Each seed: (name, own servers, busline servers, client)."""

    def fresh(stem):
        return os.path.join(TMP, f"{stem}-{next(COUNTER)}")

    def codechu_own():
        path = fresh("codechu") + ".sock"
        return [python_server(CODECHU_SERVER, path, ready=listening(path))], path

    def codechu_busline():
        path = fresh("codechu") + ".sock"
        url = f"unix://{path}?codec=plain-jsonline&method=echo"
        return [start([BUSLINE, "serve", url], listening(path))], path

    def srb_own():
        name = f"bench-{os.getpid()}-{next(COUNTER)}"
        return [python_server(SRB_SERVER, name, ready=exists(f"/dev/shm/srb_{name}_req"))], name

    def srb_busline():
        name = f"bench-{os.getpid()}-{next(COUNTER)}"
        proc = start([BUSLINE, "serve", "--shm-rpc-bridge", name], exists(f"/dev/shm/srb_{name}_req"))
        return [proc], name

    def comm(own):
        def make():
            path = fresh("comm") + ".sock"
            return comm_ipc_servers(path, own), path

        return make

    return [
        ("codechu-ipc", codechu_own, codechu_busline, codechu),
        ("shm-rpc-bridge", srb_own, srb_busline, srb),
        ("comm-ipc (brokered call to a Python provider)", comm(True), comm(False), comm_ipc),
    ]


def main():
    results = {}
    for _ in range(ROUNDS):
        for seed, own, busline, client in seeds():
            for server, make in (("own Python server", own), ("busline", busline)):
                procs, where = make()
                try:
                    calls, close = client(where)
                    for variant, call in calls.items():
                        timed(call, WARMUP)
                        key = (seed, variant, server)
                        results.setdefault(key, []).extend(timed(call, CALLS))
                    close()
                finally:
                    for proc in procs:
                        stop(proc)

    print(f"{CALLS} calls x {ROUNDS} rounds per row, one in flight; "
          f"ratio = busline / own server, median round trip\n")
    print("| seed | client call | server | median µs | p99 µs | calls/s | ratio |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for (seed, variant, server), samples in results.items():
        median, p99, rate = summary(samples)
        own = summary(results[(seed, variant, "own Python server")])[0]
        ratio = f"{median / own:.2f}x" if server == "busline" else ""
        print(f"| {seed} | {variant} | {server} | {median:.0f} | {p99:.0f} | {rate:.0f} | {ratio} |")
    json.dump({" / ".join(k): summary(v) for k, v in results.items()},
              open(os.path.join(TMP, "results.json"), "w"))


if __name__ == "__main__":
    main()
