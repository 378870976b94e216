"""Metric logs of a run: `metrics.jsonl` and `metrics.csv` (plain, one row per logged step),
tensorboard event files, and the loss-curve PNG drawn at the end."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any


class MetricsLogger:
    """Appends rows `{"step": int, name: float, …}` to `<stem>.jsonl` + `<stem>.csv` (+ tensorboard).

    On resume from step S, rows after S (logged by the interrupted process after its last
    checkpoint) are dropped first, so the files read as one uninterrupted run.
    """

    def __init__(
        self, output_dir: str | Path, tensorboard: bool = True, resume_step: int | None = None, stem: str = "metrics"
    ) -> None:
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.output_dir / f"{stem}.jsonl"
        self.csv_path = self.output_dir / f"{stem}.csv"
        rows = read_metrics(self.jsonl_path) if resume_step is not None else []
        rows = [row for row in rows if row["step"] <= (resume_step or 0)]
        self._write_all(rows)
        self._columns: list[str] | None = list(rows[0]) if rows else None
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides events a killed process wrote after the checkpoint we resume from.
            purge = resume_step + 1 if resume_step is not None else None
            self.writer = SummaryWriter(log_dir=str(self.output_dir / "tensorboard"), purge_step=purge)

    def _write_all(self, rows: list[dict[str, Any]]) -> None:
        with open(self.jsonl_path, "w") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
        with open(self.csv_path, "w", newline="") as handle:
            if rows:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]), extrasaction="ignore", restval="")
                writer.writeheader()
                writer.writerows(rows)

    def log(self, step: int, values: dict[str, float]) -> None:
        row = {"step": step, **{k: _plain(v) for k, v in values.items()}}
        with open(self.jsonl_path, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        with open(self.csv_path, "a", newline="") as handle:
            if self._columns is None:
                self._columns = list(row)
                csv.DictWriter(handle, fieldnames=self._columns).writeheader()
            csv.DictWriter(handle, fieldnames=self._columns, extrasaction="ignore", restval="").writerow(row)
        if self.writer is not None:
            for name, value in row.items():
                if name != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf literals; keep the file parseable
    return value


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss_curve(metrics_path: str | Path, out_path: str | Path) -> Path | None:
    """Total loss and its components against step; None when nothing was logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_metrics(metrics_path) if isinstance(r.get("loss"), (int, float))]
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    components = ["dino_local", "dino_global", "ibot", "koleo", "gram"]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    top.plot(steps, [r["loss"] for r in rows], label="total loss")
    top.set_ylabel("loss")
    top.legend()
    for name in components:
        values = [r.get(name) for r in rows]
        if all(isinstance(v, (int, float)) for v in values) and any(values):
            bottom.plot(steps, values, label=name)
    bottom.set_xlabel("step")
    bottom.set_ylabel("component")
    bottom.legend()
    figure.tight_layout()
    out_path = Path(out_path)
    figure.savefig(out_path, dpi=100)
    plt.close(figure)
    return out_path
