"""A deadline-aware, resumable plan of measurement steps (what scripts/gpu_plan.py runs on a lent GPU).

Each step is a command run in its own process (its output appended to one log); a step that ends
with status 0 has written `RESULTS/<name>.json`, which the plan embeds. The plan's state,
`RESULTS/plan.json`, is rewritten (atomically) the moment anything changes, so whatever is read
from it at any time is valid JSON with every result gathered so far.

Order and readiness: steps are listed by value. The first pending step whose prerequisites are
done and whose resources (files, e.g. "the CUDA onnxruntime is installed") exist runs next; while
an earlier step waits for a resource, only steps marked `filler` may go ahead of it. Steps marked
`parallel` (the exports: nothing in them is timed) may run beside each other, up to `max_parallel`
at a time; every other step (whatever is timed) runs alone. A step whose
prerequisite failed or was left out is left out. A step starts only if its estimate fits in the
time left; at the deadline the running step's process group is stopped (SIGTERM, then SIGKILL),
every step not run is marked so, and the plan returns. Run again, the plan resumes: steps done
stay done, the others are tried again.

The clock, the sleep and the process launcher are parameters, so the deadline logic is tested
with a fake clock (tests/test_gpu_plan.py). Standard library only.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

DONE, FAILED, STOPPED, LEFT_OUT, PENDING = "done", "failed", "stopped at the deadline", "not run", "pending"


@dataclass
class Step:
    name: str
    argv: list[str]
    estimate_s: float
    needs: tuple[str, ...] = ()  # steps that must be done first
    resources: tuple[str, ...] = ()  # files that must exist before it starts
    part: str = ""  # what it belongs to, e.g. "a", "b", "c", "prep"
    filler: bool = False  # may run while an earlier step waits for a resource
    parallel: bool = False  # may run beside other parallel steps (exports: no timing); others run alone
    env: dict = field(default_factory=dict)


def write_json(path: Path, obj) -> None:
    """Write `obj` as JSON to `path` atomically (a reader sees the old file or the new one)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def _utc(ts: float | None = None) -> str:
    return datetime.datetime.fromtimestamp(ts or time.time(), datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Process:
    """A step's process in its own process group (so that the builder's children stop with it)."""

    def __init__(self, step: Step, log) -> None:
        env = dict(os.environ, **step.env)
        self.p = subprocess.Popen(step.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  env=env, start_new_session=True)

    def poll(self) -> int | None:
        return self.p.poll()

    def stop(self, grace_s: float = 5.0) -> None:
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.p.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.p.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


class Plan:
    def __init__(self, steps: list[Step], results: Path, deadline: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, launch=_Process, log: Callable[[str], None] = print,
                 poll_s: float = 1.0, info: dict | None = None, max_parallel: int = 2) -> None:
        """`deadline`: in `clock`'s units (seconds)."""
        self.steps, self.results, self.deadline = steps, Path(results), deadline
        self.clock, self.sleep, self.launch, self.log, self.poll_s = clock, sleep, launch, log, poll_s
        self.max_parallel = max_parallel
        self.results.mkdir(parents=True, exist_ok=True)
        self.path = self.results / "plan.json"
        old = json.loads(self.path.read_text()) if self.path.is_file() else {}
        old_steps = old.get("steps", {})
        self.state = {"info": info or old.get("info", {}), "started_utc": _utc(), "deadline_utc": _utc(
            time.time() + deadline - clock()), "finished": False, "runs": old.get("runs", 0) + 1, "steps": {}}
        for s in steps:
            prev = old_steps.get(s.name, {})
            keep = prev.get("status") == DONE and (self.results / f"{s.name}.json").is_file()
            self.state["steps"][s.name] = prev if keep else {"status": PENDING, "part": s.part,
                                                              "estimate_s": s.estimate_s}
        self._save()

    def _save(self) -> None:
        write_json(self.path, self.state)

    def _set(self, name: str, **fields) -> None:
        self.state["steps"][name].update(fields)
        self._save()

    def _status(self, name: str) -> str:
        return self.state["steps"][name]["status"]

    def _blocked_by(self, step: Step) -> str | None:
        """Why `step` cannot start now: None if it can; 'never: ...' if it never will."""
        for n in step.needs:
            st = self._status(n)
            if st in (FAILED, LEFT_OUT, STOPPED) or st.startswith(LEFT_OUT):
                return f"never: needs {n}, which is {st}"
            if st != DONE:
                return f"needs {n}"
        for r in step.resources:
            if not Path(r).exists():
                return f"waits for {r}"
        return None

    def _pick(self, running: dict) -> Step | None:
        """The next step to start now, or None (nothing may start: wait)."""
        left = self.deadline - self.clock()
        waiting = False
        for s in self.steps:
            if self._status(s.name) != PENDING:
                continue
            why = self._blocked_by(s)
            if why is not None and why.startswith("never"):
                self._set(s.name, status=LEFT_OUT, reason=why[len("never: "):])
                continue
            if why is not None:
                waiting = waiting or why.startswith("waits")
                continue
            if s.estimate_s > left:
                self._set(s.name, status=LEFT_OUT, reason=f"estimate {s.estimate_s:.0f} s > {left:.0f} s left "
                          "before the deadline")
                continue
            if waiting and not s.filler:
                continue
            if not running:
                return s
            # beside running steps: only a parallel step beside parallel ones, and no jumping ahead of
            # a ready step that must run alone
            ok = s.parallel and all(r.parallel for r, _p, _t in running.values()) and len(running) < self.max_parallel
            return s if ok else None
        return None

    def run(self) -> dict:
        running: dict[str, tuple] = {}  # name -> (step, process, start time)
        with open(self.results / "plan.log", "a") as logf:
            while True:
                for name, (step, proc, t0) in list(running.items()):
                    rc = proc.poll()
                    if rc is not None:
                        del running[name]
                        self._finish(step, rc, t0)
                if self.clock() >= self.deadline:
                    for name, (step, proc, t0) in running.items():
                        proc.stop()
                        self._set(name, status=STOPPED, seconds=round(self.clock() - t0, 1))
                        self.log(f"[plan {_utc()}] {name} stopped at the deadline")
                    break
                chosen = self._pick(running)
                if chosen is not None:
                    running[chosen.name] = (chosen, self._start(chosen, logf), self.clock())
                    continue
                if not running and not any(self._status(s.name) == PENDING for s in self.steps):
                    break
                self.sleep(min(self.poll_s, max(self.deadline - self.clock(), 0.0)))
            for s in self.steps:
                if self._status(s.name) == PENDING:
                    self.state["steps"][s.name].update(status=LEFT_OUT, reason=self._blocked_by(s) or "deadline")
            self.state["finished"] = True
            self.state["finished_utc"] = _utc()
            self._save()
        return self.state

    def _start(self, step: Step, logf):
        self.log(f"[plan {_utc()}] {step.name} (part {step.part or '-'}, estimate {step.estimate_s:.0f} s, "
                 f"{self.deadline - self.clock():.0f} s left)")
        logf.write(f"\n===== {_utc()} {step.name}: {' '.join(step.argv)}\n")
        logf.flush()
        self._set(step.name, status="running", started_utc=_utc())
        return self.launch(step, logf)

    def _finish(self, step: Step, rc: int, t0: float) -> None:
        secs = round(self.clock() - t0, 1)
        out = self.results / f"{step.name}.json"
        if rc == 0 and out.is_file():
            self._set(step.name, status=DONE, seconds=secs, result=json.loads(out.read_text()))
        else:
            self._set(step.name, status=FAILED, seconds=secs, rc=rc,
                      reason="no result file" if rc == 0 else f"exit status {rc} (see plan.log)")
        self.log(f"[plan {_utc()}] {step.name}: {self._status(step.name)} in {secs:.0f} s")


def steps_table(state: dict) -> str:
    """One line per step: status, seconds, part."""
    rows = [f"{'step':24} {'part':5} {'status':26} {'s':>6}  note"]
    for name, st in state["steps"].items():
        secs = st.get("seconds")
        rows.append(f"{name:24} {st.get('part', ''):5} {st['status']:26} {'' if secs is None else secs:>6}  "
                    f"{st.get('reason', '')}")
    return "\n".join(rows)


__all__ = ["Plan", "Step", "write_json", "steps_table", "asdict"]
