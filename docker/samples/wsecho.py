#!/usr/bin/python3
"""Sample sandbox service: a WebSocket echo. Every message comes back as it
was sent; the text message "__host__" is answered with the Host header of
the upgrade request (what sandgate forwarded). Plain HTTP GETs get 426."""
import argparse
import asyncio
import signal
import sys

import websockets


async def echo(ws, path=None):
    host = ws.request_headers.get("Host", "")
    async for msg in ws:
        await ws.send(host if msg == "__host__" else msg)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8000)
    args = ap.parse_args()
    stop = asyncio.get_running_loop().create_future()
    # PID 1 in its container: without a handler SIGTERM would be ignored.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with websockets.serve(echo, "0.0.0.0", args.port):
        print(f"wsecho: listening on :{args.port}", file=sys.stderr, flush=True)
        await stop


if __name__ == "__main__":
    asyncio.run(main())
