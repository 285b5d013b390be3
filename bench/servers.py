"""The two comparison servers, one process each: ``python -m bench.servers ceiling|redis --port P``.

* ``ceiling``: a bare aiohttp handler returning a small JSON 200: what one
  Python process on one core can answer at all.
* ``redis``: the same aiohttp app deciding through Redis: one token bucket per
  user in a Lua script (``EVALSHA``), the centralized design the seed argues
  against. Same answer shape as bucketstream (JSON body, RateLimit headers,
  429 + Retry-After when refused), redis-py's asyncio client with the hiredis
  parser, a connection pool as large as wrk's connection count.

Both use the default asyncio event loop, like the Faust worker.
"""

from __future__ import annotations

import argparse
import json
import math

from aiohttp import web

CEILING_BODY = b'{"allowed": true, "remaining": 9, "limit": 10, "reset": 1, "policy": "default"}'

#: Token bucket per key: a hash {tokens, ts}; refill, then take ``cost`` if there
#: is that much. Time from the Redis server (one clock for every app server).
TOKEN_BUCKET_LUA = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1])
local ts = tonumber(b[2])
if tokens == nil then tokens = capacity; ts = now end
tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate)
local allowed = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate * 1000) + 1000)
return {allowed, tostring(tokens)}
"""


def ceiling_app() -> web.Application:
    async def protected(request: web.Request) -> web.Response:
        return web.Response(body=CEILING_BODY, content_type="application/json")

    app = web.Application()
    app.router.add_post("/protected", protected)
    app.router.add_get("/healthz", protected)
    return app


def redis_app(redis_port: int, capacity: float, rate: float, pool_size: int) -> web.Application:
    import redis.asyncio as aioredis

    client = aioredis.Redis(host="127.0.0.1", port=redis_port, max_connections=pool_size)
    bucket = client.register_script(TOKEN_BUCKET_LUA)
    window = math.ceil(capacity / rate)
    limit = int(capacity) if capacity == int(capacity) else capacity
    policy_header = f'"default";q={limit};w={window}'

    async def protected(request: web.Request) -> web.Response:
        user = request.headers.get("X-User-ID")
        if not user:
            return web.Response(status=400, body=b'{"error": "missing X-User-ID header"}',
                                content_type="application/json")
        allowed, left = await bucket(keys=["tb:" + user], args=[capacity, rate, 1])
        left = float(left)
        remaining = max(0, math.floor(left))
        reset = max(0, math.ceil((capacity - left) / rate))
        headers = {"RateLimit-Policy": policy_header, "RateLimit": f'"default";r={remaining};t={reset}'}
        body = {"allowed": bool(allowed), "remaining": remaining, "limit": limit, "reset": reset, "policy": "default"}
        status = 200
        if not allowed:
            retry = max(1, math.ceil((1 - left) / rate))
            headers["Retry-After"] = str(retry)
            body["retry_after"] = retry
            status = 429
        return web.Response(body=json.dumps(body).encode(), status=status, headers=headers,
                            content_type="application/json")

    async def healthz(request: web.Request) -> web.Response:
        await client.ping()
        return web.Response(body=b'{"status": "ok"}', content_type="application/json")

    async def close(app: web.Application) -> None:
        await client.aclose()

    app = web.Application()
    app.router.add_post("/protected", protected)
    app.router.add_get("/healthz", healthz)
    app.on_cleanup.append(close)
    return app


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.servers")
    ap.add_argument("kind", choices=["ceiling", "redis"])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--redis-port", type=int, default=6379)
    ap.add_argument("--capacity", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=1.0)
    ap.add_argument("--pool", type=int, default=64, help="Redis connections (at least wrk's connection count)")
    args = ap.parse_args(argv)
    app = ceiling_app() if args.kind == "ceiling" else redis_app(args.redis_port, args.capacity, args.rate, args.pool)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
