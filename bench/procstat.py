"""
bench/procstat.py: CPU time and memory of server processes, read from /proc.

A :class:`ProcGroup` is one server under test: a root process and, when ``tree`` is set, all
its descendants (Postfix's master and the daemons it runs). Its CPU time is the user + system
time of every live member plus the children's time of the roots (processes that exited and
were waited for: Postfix's smtpd after max_use, say), so that a difference of two readings
counts the work of processes that came and went in between.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from dataclasses import dataclass, field

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (state first), or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2:].split()


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """utime + stime of a process (+ cutime + cstime with ``children``), in seconds."""
    fields = _stat(pid)
    if fields is None:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def system_busy_seconds() -> float:
    """CPU time the whole machine spent not idle (all cores, steal included), in seconds."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def own_seconds() -> float:
    """CPU time of this process and of its children that have been waited for."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def status_kb(pid: int, key: str) -> int:
    """A ``kB`` line of /proc/<pid>/status (``VmRSS``, ``VmHWM``); 0 if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def pss_kb(pid: int) -> int:
    """Proportional set size (shared pages split between their users), from smaps_rollup."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def parent_map() -> dict[int, int]:
    """pid -> ppid of every process."""
    result = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat(int(name))
            if fields is not None:
                result[int(name)] = int(fields[1])
    return result


def descendants(root: int, parents: dict[int, int] | None = None) -> list[int]:
    """``root`` and every process below it."""
    parents = parent_map() if parents is None else parents
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in parents or pid == root:
            out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


@dataclass
class ProcGroup:
    """A named set of processes whose CPU and memory are measured together."""

    name: str
    roots: list[int]
    tree: bool = False   # include descendants (Postfix)

    def pids(self) -> list[int]:
        if not self.tree:
            return [p for p in self.roots if _stat(p) is not None]
        parents = parent_map()
        out: list[int] = []
        for root in self.roots:
            out += descendants(root, parents)
        return out

    def cpu(self) -> float:
        pids = self.pids()
        total = sum(cpu_seconds(p) for p in pids)
        if self.tree:
            total += sum(cpu_seconds(r, children=True) - cpu_seconds(r) for r in self.roots)
        return total

    def rss_kb(self) -> int:
        return sum(status_kb(p, "VmRSS") for p in self.pids())

    def pss_kb(self) -> int:
        return sum(pss_kb(p) for p in self.pids())

    def hwm_kb(self) -> int:
        """Sum of the members' own peaks (exact for a single process)."""
        return sum(status_kb(p, "VmHWM") for p in self.pids())

    def count(self) -> int:
        return len(self.pids())


@dataclass
class Meter:
    """CPU before/after and a sampled memory peak for some process groups during a load."""

    groups: list[ProcGroup]
    interval: float = 0.25
    cpu0: dict[str, float] = field(default_factory=dict)
    cpu1: dict[str, float] = field(default_factory=dict)
    peak_pss_kb: dict[str, int] = field(default_factory=dict)
    peak_procs: dict[str, int] = field(default_factory=dict)
    busy0: float = 0.0
    busy1: float = 0.0
    own0: float = 0.0
    own1: float = 0.0
    t0: float = 0.0
    t1: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> "Meter":
        self.cpu0 = {g.name: g.cpu() for g in self.groups}
        self.busy0, self.own0, self.t0 = system_busy_seconds(), own_seconds(), time.monotonic()
        self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True, name="meter")
        self._thread.start()
        return self

    def _sample(self) -> None:
        for g in self.groups:
            if g.tree:  # single processes: VmHWM at the end is exact
                pids = g.pids()
                self.peak_pss_kb[g.name] = max(self.peak_pss_kb.get(g.name, 0),
                                               sum(pss_kb(p) for p in pids))
                self.peak_procs[g.name] = max(self.peak_procs.get(g.name, 0), len(pids))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def stop(self) -> "Meter":
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        self.cpu1 = {g.name: g.cpu() for g in self.groups}
        self.busy1, self.own1, self.t1 = system_busy_seconds(), own_seconds(), time.monotonic()
        return self

    def other_load(self) -> float | None:
        """Cores used by processes outside the measurement (noise: other work on the machine).

        The machine's busy time minus the servers' and the benchmark's own (with the load
        generators it has waited for), divided by the wall time.
        """
        wall = self.t1 - self.t0
        if wall <= 0:
            return None
        ours = sum(self.cpu_delta().values()) + (self.own1 - self.own0)
        return round(max(0.0, (self.busy1 - self.busy0) - ours) / wall, 2)

    def cpu_so_far(self) -> dict[str, float]:
        """CPU seconds per group since start, read now (the meter keeps running)."""
        return {g.name: round(g.cpu() - self.cpu0[g.name], 3) for g in self.groups}

    def cpu_delta(self) -> dict[str, float]:
        return {name: round(self.cpu1[name] - self.cpu0[name], 3) for name in self.cpu0}

    def peak_memory_kb(self) -> dict[str, int]:
        """Per group: VmHWM for single processes, the sampled peak of summed PSS for trees."""
        out = {}
        for g in self.groups:
            out[g.name] = self.peak_pss_kb.get(g.name, 0) if g.tree else g.hwm_kb()
        return out


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fields = _stat(pid)
        if fields is None or fields[0] == "Z":
            return True
        time.sleep(0.05)
    return False
