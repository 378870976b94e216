"""`skipped_samples.txt`: every unreadable sample of a run, kept across resumes.

One tab-separated line per skip: the step during which it was met (or `startup` for files the
start-up scan left out), the file, the reason. `#` lines mark each session (fresh start or resume),
each checkpoint, and close a session with its per-file summary. Records reach the file with each
checkpoint (then a `# checkpoint at step S` line), so a run killed after its last checkpoint re-meets
those skips when it re-does the steps; on resume from step S everything after the last
`# checkpoint at step S` line (the records of a timeline that was abandoned, e.g. when a damaged
checkpoint sent the run back to an older one) is dropped first.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable

HEADER = "# vla_dino pretraining: unreadable samples, one line each: step<TAB>file<TAB>reason (appended across resumes)"


class SkipLog:
    def __init__(self, path: str | Path, resume_step: int | None = None) -> None:
        self.path = Path(path)
        if resume_step is None or not self.path.is_file():
            self.path.write_text(HEADER + "\n")
            return
        lines = self.path.read_text().splitlines()
        marker = checkpoint_marker(resume_step)
        if marker in lines:
            lines = lines[: len(lines) - lines[::-1].index(marker)]
        else:  # no marker (a file from an older version): keep the records up to the step
            lines = [line for line in lines if _keep(line, resume_step)]
        self.path.write_text("\n".join(lines) + "\n")

    def start_session(self, step: int, resumed_from: Path | None, unreadable: list[tuple[str, str]]) -> None:
        how = f"resumed from {resumed_from} at step {step}" if resumed_from is not None else "fresh run"
        lines = [f"# session {time.strftime('%Y-%m-%d %H:%M:%S')}: {how}; start-up scan left out "
                 f"{len(unreadable)} unreadable file(s)"]
        lines += [f"startup\t{file}\t{_one_line(reason)}" for file, reason in unreadable]
        self._append(lines)

    def append(self, records: Iterable[tuple[int, str, str]], checkpoint_step: int) -> None:
        """The skips that the checkpoint of `checkpoint_step` covers, then its marker."""
        lines = [f"{step}\t{file}\t{_one_line(reason)}" for step, file, reason in records]
        self._append(lines + [checkpoint_marker(checkpoint_step)])

    def end_session(self, step: int, summary: str) -> None:
        self._append([f"# session end at step {step}"] + [f"# {line}" for line in summary.splitlines()])

    def _append(self, lines: list[str]) -> None:
        if lines:
            with open(self.path, "a") as handle:
                handle.write("\n".join(lines) + "\n")


def checkpoint_marker(step: int) -> str:
    return f"# checkpoint at step {step}"


def read_skips(path: str | Path) -> list[tuple[str, str, str]]:
    """(step or 'startup', file, reason) of every record line."""
    path = Path(path)
    if not path.is_file():
        return []
    return [tuple(line.split("\t", 2)) for line in path.read_text().splitlines() if line and not line.startswith("#")]


def _keep(line: str, resume_step: int) -> bool:
    if not line or line.startswith("#") or line.startswith("startup\t"):
        return bool(line)
    head = line.split("\t", 1)[0]
    return not head.isdigit() or int(head) <= resume_step


def _one_line(text: str) -> str:
    return " ".join(text.replace("\t", " ").split())
