"""One worker process of the redelivery scenario.

`python -m tests.reliability.worker_process PLAN` builds a service from the
environment's settings, prints "ready", waits for a line on stdin, then runs the
users of PLAN (JSON: the LoadPlan's fields and the user ids, the same for every
worker, so each platform event reaches each worker) and prints its attempts as one
JSON line.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from bot.config import load_settings
from bot.runtime import build_service, create_redis
from bot.store.engine import create_engine
from tests.reliability.load import Load, LoadPlan


async def main(spec: dict[str, Any]) -> None:
    settings = load_settings(_env_file=None)
    assert settings.database_url is not None and settings.redis_url is not None
    engine = create_engine(settings, settings.database_url.get_secret_value())
    redis = create_redis(settings, settings.redis_url.get_secret_value())
    service = build_service(settings, engine, redis)
    try:
        await redis.ping()  # connected before the start, so both workers go together
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        load = Load(service.handle, LoadPlan(**spec["plan"]), users=spec["users"])
        await load.run()
        print(json.dumps([attempt.as_json() for attempt in load.attempts]), flush=True)
    finally:
        await redis.aclose()
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
