"""comm-ipc's brokered call, measured the way bench-peers measures busline's.

A CommIPCServer runs in a process of its own on a Unix socket; a provider
of "echo" and a caller share this process. Prints the median and p99 of
SEQUENTIAL sequential calls, in microseconds, as one JSON line.

Needs `pip install comm-ipc fastapi` (comm-ipc 0.1.16 fails to import
without fastapi). Run by bench-peers; by hand: python3 comm_ipc_call.py
"""

import asyncio
import json
import multiprocessing
import os
import sys
import tempfile
import time

SEQUENTIAL = int(os.environ.get("SEQUENTIAL", "2000"))


def serve(path):
    from comm_ipc.server import CommIPCServer

    asyncio.run(CommIPCServer(socket_path=path).run())


async def measure(path):
    from comm_ipc.client import CommIPC

    for _ in range(100):
        if os.path.exists(path):
            break
        await asyncio.sleep(0.05)
    provider = CommIPC(client_id="bench-provider", socket_path=path)
    await provider.connect()
    channel = await provider.open("bench")
    async def echo(request):
        return request.data

    await channel.add_event("echo", call=echo)

    caller = CommIPC(client_id="bench-caller", socket_path=path)
    await caller.connect()
    bench = await caller.open("bench")
    payload = "x" * 32
    for _ in range(50):  # warm up
        await bench.event("echo", payload)
    samples = []
    for _ in range(SEQUENTIAL):
        start = time.perf_counter()
        await bench.event("echo", payload)
        samples.append(time.perf_counter() - start)
    await caller.close()
    await provider.close()
    samples.sort()
    at = lambda q: samples[int((len(samples) - 1) * q)] * 1e6
    return {"median_us": at(0.5), "p99_us": at(0.99)}


def main():
    path = os.path.join(tempfile.mkdtemp(prefix="comm-ipc-bench-"), "server.sock")
    server = multiprocessing.Process(target=serve, args=(path,), daemon=True)
    server.start()
    try:
        result = asyncio.run(measure(path))
    except BaseException:
        server.terminate()
        raise
    finally:
        server.terminate()
        server.join()
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
