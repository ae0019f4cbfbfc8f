"""Where metrics go: a progress bar, one summary line per step, JSONL, TensorBoard, a plot.

Only the main process logs; the metrics it receives are already global (all-reduced).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from tqdm.auto import tqdm

from rpp_learner.config import LoggingConfig

# (metric key, short label) shown on the bar and in the per-step line
KEY_NUMBERS = [
    ("reward/total", "reward"),
    ("reward/process_step_mean", "prm/step"),
    ("kl", "kl"),
    ("response_length", "len"),
    ("clip_frac", "clip"),
    ("eval/accuracy", "acc"),
    ("time/step_s", "s"),
]

PLOTTED = [
    ("reward/total", "reward"),
    ("reward/process_sum", "process reward per response (sum of steps)"),
    ("kl", "KL (k1, per token)"),
    ("response_length", "response length"),
    ("eval/accuracy", "eval accuracy"),
]


def _fmt(value: float) -> str:
    return f"{value:.4g}"


class MetricsLogger:
    def __init__(self, out_dir: str | Path, cfg: LoggingConfig, *, total_steps: int, start_step: int = 0):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.cfg = cfg
        self.jsonl_path = self.out_dir / "metrics.jsonl"
        self._last_acc: float | None = None
        if cfg.jsonl:
            _truncate_after(self.jsonl_path, start_step)  # a resumed run rewrites later steps
        self._jsonl = self.jsonl_path.open("a") if cfg.jsonl else None
        self._tb = None
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=start_step + 1)
        self._bar = tqdm(total=total_steps, initial=start_step, disable=not cfg.progress_bar, dynamic_ncols=True)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if "eval/accuracy" in metrics:
            self._last_acc = metrics["eval/accuracy"]
        if self._jsonl is not None:
            self._jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
            self._jsonl.flush()
        if self._tb is not None:
            for key, value in metrics.items():
                self._tb.add_scalar(key, value, step)
        shown = dict(metrics)
        if self._last_acc is not None:
            shown.setdefault("eval/accuracy", self._last_acc)
        parts = [f"{label} {_fmt(shown[key])}" for key, label in KEY_NUMBERS if key in shown]
        self._bar.set_postfix_str(" | ".join(parts), refresh=False)
        if step > 0:  # step 0 is the evaluation before training, not a step
            self._bar.update(1)
        self._bar.write(f"step {step}: " + " | ".join(parts))

    def close(self) -> Path | None:
        self._bar.close()
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self.cfg.plot and self.jsonl_path.is_file():
            return plot_metrics(self.jsonl_path, self.out_dir / "curves.png")
        return None


def _truncate_after(path: Path, step: int) -> None:
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))


def plot_metrics(jsonl_path: str | Path, png_path: str | Path) -> Path:
    """One panel per curve of PLOTTED (those present in the log), saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(jsonl_path).read_text().splitlines() if line]
    panels = [(k, title) for k, title in PLOTTED if any(k in r for r in rows)]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(4 * max(len(panels), 1), 3), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels, strict=False):
        points = [(r["step"], r[key]) for r in rows if key in r and math.isfinite(r[key])]
        if points:
            ax.plot(*zip(*points, strict=True), marker="." if len(points) < 30 else None)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return Path(png_path)
