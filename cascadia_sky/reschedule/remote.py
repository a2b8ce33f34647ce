"""The re-schedule loop on the watcher cluster of a SkyServe cascade, and reading its steps back.

`python -m cascadia_sky.reschedule.remote --bundle DIR NAME` is the watcher's run command
(tasks/reschedule-watch.yaml). It makes a writable state home from the bundle `up` wrote
(cascadia_sky/launch/watcher.py), writes the keys it got as SkyPilot secrets into mode-0600 files there, and runs
the same loop as `cascadia watch` (observe -> detect -> re-plan -> apply through `up`, which acts through SkyPilot's
API server). After every step it records it prints one state line to its job log. On the launching machine,
`pull(name)` (run by `cascadia status NAME`) reads those lines back: the plan that runs, its components and the
history, so `status` shows what the watcher did.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

from cascadia_sky.constants import HOME_ENV_VAR
from cascadia_sky.errors import UserInputError
from cascadia_sky.launch.backends import get_backend
from cascadia_sky.launch.keys import ADMIN_KEY_FILE, API_KEY_FILE, ENGINE_KEYS_FILE
from cascadia_sky.launch.state import StateStore
from cascadia_sky.launch.watcher import (
    ADMIN_KEY_ENV,
    ENGINE_KEYS_ENV,
    IN_WATCHER_ENV,
    ROUTER_KEYS_ENV,
    WATCHER_COMPONENT,
    state_line,
)
from cascadia_sky.reschedule.history import Event, History


def _private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def prepare(bundle: Path, name: str, work: Path) -> StateStore:
    """The watcher's state home `work` (copied from the bundle on first start, kept across restarts of its job),
    its key files (from the secrets in the environment), and the record pointing at the bundled cascade file."""
    if not (work / "state.db").is_file():
        shutil.copytree(bundle / "home", work, dirs_exist_ok=True)
    store = StateStore(work)
    if store.get(name) is None:
        raise UserInputError(f"{bundle}: the bundle holds no deployment named {name!r}; relaunch it with "
                             f"`cascadia up`")
    directory = store.deployment_dir(name)
    missing = [v for v in (ROUTER_KEYS_ENV, ADMIN_KEY_ENV, ENGINE_KEYS_ENV) if not os.environ.get(v)]
    if missing:
        raise UserInputError(f"the watcher got no {', '.join(missing)} (SkyPilot secrets of its task); relaunch it "
                             f"with `cascadia up`")
    _private(directory / API_KEY_FILE, os.environ[ROUTER_KEYS_ENV].split(",")[0].strip() + "\n")
    _private(directory / ADMIN_KEY_FILE, os.environ[ADMIN_KEY_ENV].strip() + "\n")
    _private(directory / ENGINE_KEYS_FILE, os.environ[ENGINE_KEYS_ENV])
    specs = sorted((bundle / "spec").glob("*.y*ml"))
    if len(specs) != 1:
        raise UserInputError(f"{bundle / 'spec'}: expected one cascade file, found {len(specs)}")
    store.update(name, spec_path=str(specs[0].resolve()), api_key_file=str(directory / API_KEY_FILE))
    os.environ[IN_WATCHER_ENV] = "1"      # this process's `up` never launches (or removes) a watcher
    os.environ[HOME_ENV_VAR] = str(work)
    return store


class StateReporter:
    """Prints one state line whenever the watcher's history has steps not printed yet."""

    def __init__(self, store: StateStore, name: str, out=None) -> None:
        self.store, self.name = store, name
        self.out = out or sys.stdout
        self.seen = {(e.t, e.step) for e in History(store).events(name, 1000)}

    def __call__(self, *_: object) -> None:
        new = [e for e in History(self.store).events(self.name, 1000) if (e.t, e.step) not in self.seen]
        rec = self.store.get(self.name)
        if not new or rec is None:
            return
        self.seen.update((e.t, e.step) for e in new)
        watcher = rec.component(WATCHER_COMPONENT)
        print(state_line(rec, [asdict(e) for e in new], watcher.fingerprint if watcher else ""),
              file=self.out, flush=True)


def pull(name: str, store: StateStore | None = None) -> int:
    """Read the watcher's state lines back into this machine's store (plan, components, history); the number of
    history steps added. Nothing to do for deployments without a remote watcher."""
    store = store or StateStore()
    rec = store.get(name)
    if rec is None:
        return 0
    impl = get_backend(rec.backend)
    if not hasattr(impl, "sync") or rec.component(WATCHER_COMPONENT) is None:
        return 0
    states = impl.sync(rec, store)
    history = History(store)
    known = {(e.t, e.step) for e in history.events(name, 1000)}
    added = 0
    for state in states:
        for e in state.get("events") or []:
            if (e.get("t"), e.get("step")) in known:
                continue
            history.record(Event(**{**e, "deployment": name}))
            known.add((e["t"], e["step"]))
            added += 1
    return added


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cascadia_sky.reschedule.remote")
    parser.add_argument("--bundle", required=True, type=Path)
    parser.add_argument("--state", type=Path, default=None, help="writable state home (default: beside the bundle)")
    parser.add_argument("name")
    args = parser.parse_args(argv)
    from cascadia_sky.reschedule.loop import watch

    bundle = args.bundle.expanduser().resolve()
    store = prepare(bundle, args.name, (args.state or bundle.parent / "state").expanduser())
    stopping: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    reporter = StateReporter(store, args.name)

    def log(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)

    def report(result: object) -> None:
        log(result.describe())   # type: ignore[attr-defined]
        reporter()

    watch(args.name, apply=True, store=store, report=report, stop=lambda: bool(stopping), progress=log)
    reporter()


if __name__ == "__main__":
    main()
