"""Find and kill only the Ray processes a test started (Linux /proc), never ``ray stop``.

``ray stop`` kills every Ray process of the user on the host, including other people's test
clusters. Tests start their Ray under a private ``--temp-dir`` (or as children of a driver they
launched) and clean up with :func:`snapshot` + :func:`kill`:

* the roots are the processes whose command line names the private temp dir (gcs_server,
  raylet, dashboard, monitors) plus any pids given (a driver);
* workers and agents rename themselves (``ray::IDLE``, ``ray::DashboardAgent``) and lose the temp
  dir from their command line, so the descendants of the roots are added while the tree is intact;
* a pid is killed only if its start time is unchanged (no pid reuse accidents).
"""
from __future__ import annotations

import os
import signal
from collections.abc import Iterable
from pathlib import Path


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of ``pid``, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[19])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def snapshot(marker: str | None = None, roots: Iterable[int] = ()) -> dict[int, int]:
    """``{pid: start time}`` of the processes naming ``marker`` or in ``roots``, and their descendants."""
    me = os.getpid()
    table = {pid: st for pid in _pids() if (st := _stat(pid)) is not None}
    chosen = {pid for pid in roots if pid in table}
    if marker:
        chosen |= {pid for pid in table if pid != me and marker in _cmdline(pid)}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    stack = list(chosen)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in chosen and child != me:
                chosen.add(child)
                stack.append(child)
    return {pid: table[pid][1] for pid in chosen}


def alive(procs: dict[int, int]) -> list[int]:
    """The pids of ``procs`` still running as the same process (zombies count as gone)."""
    out = []
    for pid, start in procs.items():
        st = _stat(pid)
        if st is None or st[1] != start:
            continue
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.append(pid)
    return out


def kill(procs: dict[int, int]) -> None:
    """SIGKILL each process of ``procs`` that is still the same process."""
    for pid in alive(procs):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
