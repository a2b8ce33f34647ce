"""`python -m cascadia_sky.reschedule NAME`: the re-schedule loop of one deployment (what the local supervisor runs
with reschedule.enabled; `cascadia watch NAME` is the same loop by hand). Exits when the deployment is gone."""

from __future__ import annotations

import signal
import sys
import time


def main(argv: list[str] | None = None) -> None:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print("usage: python -m cascadia_sky.reschedule DEPLOYMENT", file=sys.stderr)
        sys.exit(2)
    from cascadia_sky.reschedule.loop import watch

    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))

    def log(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)

    watch(args[0], apply=True, report=lambda r: log(r.describe()), stop=lambda: bool(stopping), progress=log)


if __name__ == "__main__":
    main()
