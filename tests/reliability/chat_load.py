"""A chat load: CONCURRENCY clients of one account, each asking again as soon as it is
answered, for SECONDS; a 429 is waited out for its Retry-After. Run as a process of its
own, so the load's own work does not slow the test's measurements:

    python chat_load.py URL TOKEN MODEL PROMPT_FILE SECONDS CONCURRENCY OUT_JSON

It writes what it saw to OUT_JSON: answers by status, 429s without Retry-After, and the
latency of each answered request.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path

import httpx


async def client(
    http: httpx.AsyncClient, body: dict, deadline: float, seen: Counter, latencies: list
) -> None:
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            response = await http.post("/v1/chat/completions", json=body)
        except httpx.HTTPError as error:
            seen[f"transport:{type(error).__name__}"] += 1
            await asyncio.sleep(1)
            continue
        seen[str(response.status_code)] += 1
        if response.status_code == 200:
            latencies.append(time.monotonic() - started)
        elif response.status_code == 429:
            after = response.headers.get("retry-after")
            if after is None or not after.isdigit():
                seen["429 without Retry-After"] += 1
                after = "1"
            await asyncio.sleep(int(after))
        else:
            seen[f"error body: {response.text[:200]}"] += 1
            await asyncio.sleep(1)


async def main(
    url: str, token: str, model: str, prompt: str, seconds: float, concurrency: int
) -> dict:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 16,
        "temperature": 0,
    }
    seen: Counter = Counter()
    latencies: list[float] = []
    # Idle connections are dropped before the server's keep-alive (5 s) could close them
    # under a request, a race of HTTP keep-alive itself rather than of the server.
    limits = httpx.Limits(
        max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=2
    )
    async with httpx.AsyncClient(
        base_url=url,
        headers={"Authorization": f"Bearer {token}"},
        timeout=httpx.Timeout(300, connect=30),
        limits=limits,
    ) as http:
        deadline = time.monotonic() + seconds
        await asyncio.gather(
            *(client(http, body, deadline, seen, latencies) for _ in range(concurrency))
        )
    return {"statuses": dict(seen), "latencies": latencies}


if __name__ == "__main__":
    url, token, model, prompt_file, seconds, concurrency, out = sys.argv[1:8]
    result = asyncio.run(
        main(url, token, model, Path(prompt_file).read_text(), float(seconds), int(concurrency))
    )
    Path(out).write_text(json.dumps(result))
