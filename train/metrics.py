"""What a run records: ``metrics.jsonl``, TensorBoard event files and ``curves.png``.

Only process 0 writes; on every other process :class:`MetricsLog` is inert, so a
multi-process run leaves exactly one copy of each file.

- ``metrics.jsonl``: one JSON object per line (``kind`` = ``train``, ``epoch`` or
  ``final``), appended and flushed each line, so a resumed run continues it.
- ``tb/``: TensorBoard scalars (``tensorboardX``): ``train/loss``, ``train/accuracy``,
  ``train/learning_rate``, ``train/images_per_sec``, ``train/grad_norm``,
  ``eval/loss``, ``eval/accuracy``. ``tensorboard --logdir <workdir>/tb``.
- ``curves.png``: loss and accuracy against the step, train and held-out, drawn
  from the whole ``metrics.jsonl`` (a resumed run's included) by :func:`plot_curves`.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax

# metrics.jsonl fields -> TensorBoard tags, per record kind.
TB_TAGS = {
    "train": {
        "loss": "train/loss",
        "accuracy": "train/accuracy",
        "learning_rate": "train/learning_rate",
        "images_per_sec": "train/images_per_sec",
        "grad_norm": "train/grad_norm",
    },
    "epoch": {"eval_loss": "eval/loss", "eval_accuracy": "eval/accuracy"},
}


class MetricsLog:
    """Appends records to ``metrics.jsonl`` and TensorBoard (process 0 only)."""

    def __init__(self, workdir: str | Path, *, tensorboard: bool = True):
        self.workdir = Path(workdir)
        self.active = jax.process_index() == 0
        self.path = self.workdir / "metrics.jsonl"
        self._tb = None
        if self.active:
            self.workdir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(str(self.workdir / "tb"), flush_secs=10)

    def write(self, **record) -> None:
        if not self.active:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for field, tag in TB_TAGS.get(record.get("kind"), {}).items():
                value = record.get(field)
                if value is not None:
                    self._tb.add_scalar(tag, float(value), int(record["step"]))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_records(path: str | Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` (a torn last line is skipped)."""
    out = []
    path = Path(path)
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def plot_curves(metrics_path: str | Path, out: str | Path) -> Path | None:
    """Draw loss and accuracy (train per log interval, held-out per epoch) to ``out``.

    A resumed run repeats steps after its checkpoint; the later record of a step
    wins, so the curve shows what the finished run computed.
    """
    records = read_records(metrics_path)
    train = {r["step"]: r for r in records if r.get("kind") == "train"}
    epochs = {r["step"]: r for r in records if r.get("kind") == "epoch"}
    if not train and not epochs:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    steps = sorted(train)
    if steps:
        ax_loss.plot(steps, [train[s]["loss"] for s in steps], label="train", lw=1)
        ax_acc.plot(steps, [train[s]["accuracy"] for s in steps], label="train", lw=1)
    esteps = sorted(epochs)
    if esteps:
        ax_loss.plot(esteps, [epochs[s]["eval_loss"] for s in esteps], "o-", label="held-out")
        ax_acc.plot(esteps, [epochs[s]["eval_accuracy"] for s in esteps], "o-", label="held-out")
    for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    ax_acc.set_ylim(0, 1)
    title = Path(metrics_path).parent.name
    fig.suptitle(f"{title}: loss and accuracy")
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out)
    return out
