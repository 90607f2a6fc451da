"""The run directory: what makes a run reproducible, and when re-running a command resumes it.

Re-running the same command resumes from the newest checkpoint in `output_dir`. The recipe that wrote
those checkpoints is kept as `recipe.json`; a different recipe into the same folder is refused, except
for keys that only say how long to train or how often to log, evaluate and save.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from importlib import metadata
from pathlib import Path

from tokenizers import Tokenizer
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, sort_checkpoints

from .errors import UserError

RECIPE_FILE = "recipe.json"
EVAL_FOLDER = "eval"  # evaluate_checkpoints.py's results on the run's own data
ENVIRONMENT_FILE = "environment.json"
PACKAGES = ("torch", "transformers", "datasets", "accelerate", "tokenizers", "bitsandbytes", "peft", "music21")

# Keys that may change between a run and its resumption without making it a different experiment.
RESUMABLE_CHANGES = frozenset(
    {
        "description", "license", "max_steps", "num_train_epochs", "output_dir", "dry_run", "allow_recipe_change", "resume_from_checkpoint",
        "logging_steps", "logging_strategy", "logging_first_step", "report_to", "run_name", "disable_tqdm",
        "save_steps", "save_strategy", "save_total_limit", "eval_steps", "eval_strategy", "eval_on_start",
        "per_device_eval_batch_size", "dataloader_num_workers", "preprocessing_num_workers", "sampling",
    }
)


def complete_checkpoints(output_dir: str) -> list[str]:
    """Checkpoints oldest first, without those cut off mid-save (Trainer writes trainer_state.json last)."""
    if not os.path.isdir(output_dir):
        return []
    return [c for c in sort_checkpoints(output_dir) if os.path.isfile(os.path.join(c, TRAINER_STATE_NAME))]


def last_checkpoint(output_dir: str) -> str | None:
    """The newest complete checkpoint."""
    complete = complete_checkpoints(output_dir)
    return complete[-1] if complete else None


def global_step(folder: str) -> int | None:
    """The optimizer step a checkpoint or finished run was saved at, from its trainer_state.json."""
    path = os.path.join(folder, TRAINER_STATE_NAME)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f).get("global_step")


def saved_recipe(output_dir: str) -> dict | None:
    """The resolved recipe a run saved in `output_dir`, or None where there is none."""
    recipe_file = Path(output_dir) / RECIPE_FILE
    if not recipe_file.is_file():
        return None
    try:
        recipe = json.loads(recipe_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{recipe_file} is not valid JSON ({e}); restore it, or run the recipe again") from None
    if not isinstance(recipe, dict):
        raise UserError(f"{recipe_file} holds no JSON object; restore it, or run the recipe again")
    return recipe


def run_recipe(path: str) -> dict | None:
    """The recipe of the run whose output_dir or checkpoint `path` is; None for a model saved anywhere else (a hub
    model, a merged one)."""
    folder = Path(path)
    is_checkpoint = folder.name.startswith(f"{PREFIX_CHECKPOINT_DIR}-")
    return saved_recipe(folder) or (saved_recipe(folder.parent) if is_checkpoint else None)


def recipe_changes(old: dict, new: dict) -> list[str]:
    """The keys whose values differ between two resolved recipes, ignoring RESUMABLE_CHANGES."""
    keys = (old.keys() | new.keys()) - RESUMABLE_CHANGES
    return sorted(key for key in keys if old.get(key) != new.get(key))


def check_output_dir(output_dir: str, resolved: dict, allow_recipe_change: bool) -> str | None:
    """The checkpoint to resume from, or None for a fresh run; refuses a folder holding another run."""
    checkpoint = last_checkpoint(output_dir)
    if checkpoint is None or allow_recipe_change:
        return checkpoint
    recipe_file = Path(output_dir) / RECIPE_FILE
    if not recipe_file.is_file():
        raise UserError(
            f"output_dir {output_dir} holds checkpoints of a run without {RECIPE_FILE}; choose another "
            "output_dir, or pass --allow_recipe_change to resume from them anyway"
        )
    changed = recipe_changes(json.loads(recipe_file.read_text()), resolved)
    if changed:
        raise UserError(
            f"output_dir {output_dir} holds checkpoints of a different recipe (differs in: {', '.join(changed)}); "
            "choose another output_dir, or pass --allow_recipe_change to resume from them anyway"
        )
    return checkpoint


def check_resume_tokenizer(checkpoint: str, vocab: dict[str, int]) -> None:
    """Refuse to resume when the tokenizer built for this run gives other ids than the checkpoint's own
    (`tokenizer_merges` learnt from changed data): its weights would read every tune wrong."""
    saved = Path(checkpoint) / "tokenizer.json"
    if saved.is_file() and Tokenizer.from_file(str(saved)).get_vocab() != vocab:
        raise UserError(
            f"{checkpoint} was trained with another tokenizer than this run builds (its data changed?); "
            "choose another output_dir, or restore the data it was trained on"
        )


def existing_ancestor(output_dir: str) -> Path:
    """output_dir itself, or the nearest folder above it that exists: where it would be created."""
    path = Path(output_dir).expanduser().resolve()
    while not path.exists():
        path = path.parent
    return path


def check_disk_space(output_dir: str, num_parameters: int, optim: str) -> None:
    """Refuse to start when one checkpoint cannot fit: fp32 weights plus the optimizer's two moments."""
    bytes_per_parameter = 4 + (2 if "8bit" in optim else 8)
    needed = num_parameters * bytes_per_parameter
    free = shutil.disk_usage(existing_ancestor(output_dir)).free
    if free < needed:
        raise UserError(
            f"output_dir {output_dir}: {free / 2**20:.0f} MiB free, but one checkpoint needs about "
            f"{needed / 2**20:.0f} MiB; free some space or choose another output_dir"
        )


def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def write_run_files(output_dir: str, resolved: dict, command: list[str]) -> None:
    """`recipe.json` (the resolved recipe, runnable as is) and `environment.json` (versions, command)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / RECIPE_FILE, resolved)
    _write_json(
        out / ENVIRONMENT_FILE,
        {
            "command": command,
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "packages": {name: _version(name) for name in PACKAGES},
        },
    )
