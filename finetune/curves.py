"""Training curves as a picture: `loss.png` in the run directory, redrawn at every save and at the end."""

from __future__ import annotations

import os

from transformers import TrainerCallback


def plot_curves(log_history: list[dict], path: str) -> None:
    """Train and eval loss against step, and the learning rate below them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key):
        points = [(entry["step"], entry[key]) for entry in log_history if key in entry]
        return [p[0] for p in points], [p[1] for p in points]

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for key, label in (("loss", "train loss"), ("eval_loss", "eval loss")):
        steps, values = series(key)
        if steps:
            top.plot(steps, values, marker="o" if len(steps) < 30 else None, label=label)
    top.set_ylabel("loss (nats per token)")
    top.legend()
    top.grid(alpha=0.3)
    steps, values = series("learning_rate")
    bottom.plot(steps, values, color="tab:gray")
    bottom.set_ylabel("learning rate")
    bottom.set_xlabel("optimizer step")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


class LossPlotCallback(TrainerCallback):
    """Writes output_dir/loss.png from the Trainer's log history (main process only)."""

    def _plot(self, args, state):
        if state.is_world_process_zero and state.log_history:
            plot_curves(state.log_history, os.path.join(args.output_dir, "loss.png"))

    def on_save(self, args, state, control, **kwargs):
        self._plot(args, state)

    def on_train_end(self, args, state, control, **kwargs):
        self._plot(args, state)
