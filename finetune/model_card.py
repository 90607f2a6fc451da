"""The model card every run writes (`output_dir/README.md`, the first thing a hub user reads), in the hub's
conventions: `Trainer.create_model_card` drafts it at the end of training (YAML metadata: library_name, tags,
base_model for a fine-tune, datasets, license; the hyperparameters and training results), and
evaluate_checkpoints.py adds the evaluation (`model-index`) and a sample tune through `huggingface_hub.ModelCard`.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .args import BUILTIN_DATASET

CARD = "README.md"
TAGS = ["abc-notation", "music", "symbolic-music", "text-generation"]
# The evaluation's numbers the card's model-index reports, for the last step's own tunes (name: pretty name).
CARD_METRICS = {
    "bits_per_char": "bits per character",
    "validity": "ABC validity",
    "bar_consistency": "bars on the meter",
    "overlapped_area": "overlapped area with real tunes",
}
EVALUATION_HEADING = "## Evaluation"


def hub_dataset(dataset_name_or_path: str) -> str | None:
    """The data's hub id, for the card's `datasets`; None for music21's corpus or a local path (no hub page)."""
    if dataset_name_or_path == BUILTIN_DATASET or Path(dataset_name_or_path).expanduser().exists():
        return None
    return dataset_name_or_path


def draft_model_card(trainer, model_args, data_args, run_args) -> None:
    """Trainer's own draft of the card, with what a tune model's card needs: the recipe's description where the
    draft asks for a description, and the data and how to sample where it asks for those (main process only)."""
    if not trainer.is_world_process_zero():
        return
    hub_id = hub_dataset(data_args.dataset_name_or_path)
    trainer.create_model_card(
        model_name=Path(trainer.args.output_dir).name,
        license=run_args.license,
        tags=TAGS,
        finetuned_from=model_args.model_name_or_path or None,
        tasks="text-generation",
        dataset=data_args.dataset_name_or_path,
        dataset_tags=hub_id,
    )
    path = Path(trainer.args.output_dir) / CARD
    card = ModelCard.load(path)
    described = run_args.description or "A causal language model of tunes in ABC notation."
    # A new model's config names no checkpoint, which Trainer's draft reads as a fine-tune of "".
    card.text = card.text.replace("is a fine-tuned version of [](https://huggingface.co/) on", "was trained from scratch on")
    card.text = card.text.replace(
        "## Model description\n\nMore information needed",
        f"## Model description\n\n{described} Trained with `run_finetune.py`; the resolved recipe is `recipe.json` "
        "beside this card, so the same command trains it again.",
    ).replace(
        "## Intended uses & limitations\n\nMore information needed",
        "## Intended uses & limitations\n\nIt writes tunes in ABC notation from a header such as `M:6/8\\nL:1/8\\nK:D`:"
        f"\n\n```bash\npython sample.py {trainer.args.output_dir} --prompt \"M:6/8\\nL:1/8\\nK:D\" --num_samples 4\n```\n\n"
        "Sample within the meter policy (`--constrain meter`, the default) for tunes that pass the checker.",
    ).replace(
        "## Training and evaluation data\n\nMore information needed",
        f"## Training and evaluation data\n\n`{data_args.dataset_name_or_path}`, cleaned as the recipe says (kept "
        f"fields `{data_args.keep_fields}`) and split by a hash of each tune's text.",
    )
    card.save(path)


def add_evaluation(run_dir: str, rows: list[dict], reference: dict, sample: str | None, settings: dict) -> Path:
    """The run's card with the evaluation of its last evaluated step (model-index and a table) and one of its tunes;
    a card is made if the run has none. Replaces what an earlier evaluation added."""
    path = Path(run_dir) / CARD
    card = ModelCard.load(path) if path.is_file() else ModelCard.from_template(
        ModelCardData(library_name="transformers", tags=TAGS), model_id=Path(run_dir).name
    )
    last = [row for row in rows if row["step"] == rows[-1]["step"]]
    own = next((row for row in last if row["tunes"] == "own"), last[0])
    name = card.data.model_name or Path(run_dir).name
    card.data.model_name = name
    card.data.eval_results = [
        EvalResult(
            task_type="text-generation", dataset_type="abc-tunes", dataset_name=f"held-out {settings['split']} tunes",
            dataset_split=settings["split"], metric_type=metric, metric_name=pretty, metric_value=float(own[metric]),
        )
        for metric, pretty in CARD_METRICS.items() if own.get(metric) is not None
    ]
    lines = [
        EVALUATION_HEADING,
        "",
        f"`evaluate_checkpoints.py` at step {own['step']}: {settings['prompts']} prompts (the headers of held-out "
        f"{settings['split']} tunes), checker {settings['checker']}; *own* tunes are sampled with nothing masked, "
        "*constrained* ones within the meter policy; the last column is the real tunes'.",
        "",
        "| measure | " + " | ".join(row["tunes"] for row in last) + " | real |",
        "|---|" + "---|" * (len(last) + 1),
    ]
    for metric in ("validity", "bar_consistency", "overlapped_area", "tonic_ending", "repeat_sign", "distinct_bars"):
        cells = [row.get(metric) for row in last] + [reference.get(metric)]
        lines.append(f"| {metric} | " + " | ".join("–" if v is None else f"{v:.3f}" for v in cells) + " |")
    if sample:
        lines += ["", "A tune it wrote (own, the first prompt):", "", "```abc", sample.strip(), "```"]
    text = card.text.split(EVALUATION_HEADING)[0].rstrip()
    card.text = text + "\n\n" + "\n".join(lines) + "\n"
    card.save(path)
    return path

