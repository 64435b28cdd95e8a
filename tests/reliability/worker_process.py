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

from tests.reliability.load import Load, LoadPlan
from tests.support import service_told_to_go


async def main(spec: dict[str, Any]) -> None:
    async with service_told_to_go() as service:
        load = Load(service, LoadPlan(**spec["plan"]), users=spec["users"])
        await load.run()
        print(json.dumps([attempt.as_json() for attempt in load.attempts]), flush=True)


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
