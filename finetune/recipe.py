"""Read a recipe (JSON, with `extends`), apply command-line flags, and validate everything up front.

A recipe's keys are the fields of `TrainingArguments` and of the dataclasses in `finetune.args`. The
file sets defaults; flags after it win (`--learning_rate 3e-4`), exactly as TRL's parser does. Every
problem is collected and reported together, before a model, a dataset or the output directory is touched.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import enum
import importlib.util
import json
import math
import os
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import HfArgumentParser, TrainingArguments
from transformers.hf_argparser import string_to_bool

from .args import BUILTIN_DATASET, DataArguments, ModelArguments, RunArguments
from .errors import UserError
from .generation import sampling_problems
from .run_dir import existing_ancestor
from .tables import markdown_table

RECIPE_DATACLASSES = (ModelArguments, DataArguments, RunArguments, TrainingArguments)
DATA_SUFFIXES = (".abc", ".txt", ".jsonl", ".json", ".csv", ".parquet")
# `"bf16": "auto"`: bf16 where the hardware runs it natively, fp32 elsewhere (as in DeepSpeed's configs); see _native_bf16.
BF16_AUTO = "auto"


@dataclasses.dataclass
class ParsedRecipe:
    model_args: ModelArguments
    data_args: DataArguments
    run_args: RunArguments
    training_args: TrainingArguments
    # The recipe after `extends` and flags: only the keys that were set, so it can be run again as is.
    resolved: dict[str, Any]
    notes: list[str]


def _bool_or_auto(text: str) -> bool | str:
    try:
        return BF16_AUTO if text == BF16_AUTO else string_to_bool(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f'got {text!r}, expected true, false or "{BF16_AUTO}"') from None


def _json_object(text: str) -> dict:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


class CliParser(HfArgumentParser):
    """HfArgumentParser whose mistakes raise UserError (one line) instead of printing usage and exiting."""

    def __init__(self, dataclass_types, prog: str, usage: str):
        super().__init__(dataclass_types, prog=prog, usage=usage, allow_abbrev=False)

    def error(self, message: str):
        raise UserError(f"command line: {message}")

    def parse_command_line(self, argv: list[str]) -> tuple:
        """The dataclasses, then a namespace of any plain arguments; an unknown flag is a one-line error."""
        *parsed, remaining = self.parse_args_into_dataclasses(argv, return_remaining_strings=True)
        if remaining:
            self.error(f"unrecognized arguments: {' '.join(remaining)}")
        return tuple(parsed)


class RecipeParser(CliParser):
    """The recipe's parser: `dict` fields read JSON objects from the command line."""

    def __init__(self, dataclass_types=RECIPE_DATACLASSES, prog: str = "run_finetune.py",
                 usage: str = "run_finetune.py RECIPE.json [--field value ...] [--dry_run]"):
        super().__init__(dataclass_types, prog=prog, usage=usage)
        # HfArgumentParser hands `dict` itself to argparse as the type of dict fields; read JSON instead.
        for action in self._actions:
            if action.type is dict or typing.get_origin(action.type) is dict:
                action.type = _json_object
        self._option_string_actions["--bf16"].type = _bool_or_auto

    @property
    def field_types(self) -> dict[str, Any]:
        hints = {}
        for dtype in self.dataclass_types:
            type_hints = typing.get_type_hints(dtype)
            hints.update({f.name: type_hints[f.name] for f in dataclasses.fields(dtype) if f.init})
        return hints


def read_recipe(path: Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The recipe at `path` merged over its `extends` chain (paths relative to the recipe that names them)."""
    path = path.resolve()
    if path in _chain:
        cycle = " -> ".join(p.name for p in (*_chain, path))
        raise UserError(f"{path}: 'extends' cycle ({cycle}); remove one of these links")
    if not path.is_file():
        named_by = f" (named by 'extends' in {_chain[-1]})" if _chain else ""
        raise UserError(f"{path}: no such recipe file{named_by}; check the path")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (bad byte at offset {e.start}); save the recipe as UTF-8") from None
    if not text.strip():
        raise UserError(f'{path}: empty file; a recipe is a JSON object such as {{"extends": "music_abc.json"}}')
    try:
        recipe = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
    if not isinstance(recipe, dict):
        raise UserError(f"{path}: a recipe is a JSON object {{...}}, not a JSON {type(recipe).__name__}")
    parent = recipe.pop("extends", None)
    if parent is None:
        return recipe
    if not isinstance(parent, str) or not parent.strip() or "\0" in parent:
        raise UserError(f"{path}: 'extends' must be a path string such as \"music_abc.json\"")
    return merge_recipes(read_recipe(path.parent / parent, (*_chain, path)), recipe)


def merge_recipes(base: dict, override: dict) -> dict:
    """`override` over `base`; nested objects (model_config) merge key by key, so a variant names one field."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_recipes(merged[key], value)
        else:
            merged[key] = value
    return merged


def type_problem(value: Any, hint: Any) -> str | None:
    """Why `value` (from JSON) does not fit the type `hint`, or None when it fits."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return None
    if origin in (typing.Union, types.UnionType):
        # HF writes choices as `SomeEnum | str`; the string arm is the enum's values, not any string.
        enums = [arm for arm in args if isinstance(arm, type) and issubclass(arm, enum.Enum)]
        if enums and isinstance(value, str):
            return type_problem(value, enums[0])
        problems = [type_problem(value, arm) for arm in args]
        return None if None in problems else " or ".join(p.removeprefix("expected ") for p in problems)
    if hint is type(None):
        return None if value is None else "expected null"
    if origin is typing.Literal:
        return _choice_problem(value, list(args))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _choice_problem(value, [member.value for member in hint])
    if hint is bool:
        return None if isinstance(value, bool) else "expected true or false"
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            return "expected an integer"
        return None if abs(value) < 2**31 else "expected an integer below 2**31"
    if hint is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return "expected a number"
        return None if math.isfinite(value) and abs(value) < 2**31 else "expected a finite number below 2**31"
    if hint is str:
        return None if isinstance(value, str) else "expected a string"
    if hint is dict or origin is dict:
        return None if isinstance(value, dict) else "expected a JSON object"
    if origin is list:
        if not isinstance(value, list):
            return "expected a list"
        problems = [type_problem(item, args[0]) for item in value] if args else []
        return next((f"list item {p}" for p in problems if p), None)
    return None


def _choice_problem(value: Any, choices: list) -> str | None:
    if value in choices:
        return None
    close = difflib.get_close_matches(value, choices, n=1) if isinstance(value, str) else []
    if close:
        return f"expected one of {len(choices)} choices, did you mean {json.dumps(close[0])}?"
    return f"expected one of {', '.join(map(json.dumps, choices))}"


def _describe(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _did_you_mean(key: str, known: typing.Iterable[str], prog: str = "run_finetune.py") -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else f"; see `python {prog} --help` for the keys"


def _recipe_problems(recipe: dict, field_types: dict, prog: str = "run_finetune.py") -> tuple[dict, list[str]]:
    """Split the recipe into the keys that type-check and a list of problems with the others."""
    good, problems = {}, []
    for key, value in recipe.items():
        if key not in field_types:
            problems.append(f"unknown key '{key}'{_did_you_mean(key, field_types, prog)}")
        elif key == "bf16" and value == BF16_AUTO:
            good[key] = value
        elif problem := type_problem(value, field_types[key]):
            problem = f'expected true, false or "{BF16_AUTO}"' if key == "bf16" else problem
            problems.append(f"'{key}': got {_describe(value)}, {problem}")
        else:
            good[key] = value
    return good, problems


def _flag_names(parser: RecipeParser, flags: list[str]) -> tuple[list[str], list[str]]:
    """The field names that the command-line flags set, and the flags that name no field."""
    given, unknown = [], []
    for token in flags:
        if not token.startswith("--"):
            continue
        action = parser._option_string_actions.get(token.split("=", 1)[0])
        if action is None:
            unknown.append(token)
        elif action.dest != "help":
            given.append(action.dest)
    return given, unknown


def _value_problems(ns: dict) -> list[str]:
    """Cross-field and range checks on the merged values: each a problem with its fix."""
    problems = []
    positive = ["per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"]
    problems += [f"'{k}' must be at least 1, got {ns[k]}" for k in positive if ns[k] < 1]
    if ns["learning_rate"] <= 0:
        problems.append(f"'learning_rate' must be positive, got {ns['learning_rate']}")
    if ns["max_steps"] <= 0 and ns["num_train_epochs"] <= 0:
        problems.append("'num_train_epochs' must be positive (or set 'max_steps' > 0)")
    for key in ("warmup_steps", "weight_decay", "max_grad_norm"):
        if ns[key] < 0:
            problems.append(f"'{key}' must not be negative, got {ns[key]}")
    for key in ("logging_steps", "save_steps", "eval_steps"):
        if ns[key] is not None and ns[key] <= 0:
            problems.append(f"'{key}' must be positive, got {ns[key]}")
    if ns["streaming"] and ns["attn_implementation"] == "flash_attention_2":
        problems.append(
            "'streaming' with flash_attention_2: accelerate splits a streamed batch by rows, which tune boundaries "
            "are not; use sdpa or flex_attention"
        )
    if any(not -11 <= n <= 11 or n == 0 for n in ns["transpose_train"]) or len(set(ns["transpose_train"])) < len(ns["transpose_train"]):
        problems.append(f"'transpose_train' takes distinct shifts from -11 to 11 other than 0, got {ns['transpose_train']}")
    if ns["streaming"] and ns["max_steps"] <= 0:
        problems.append("'streaming' reads a corpus of unknown length: set 'max_steps' (or turn 'streaming' off)")
    if ns["bf16"] and ns["fp16"]:
        problems.append("'bf16' and 'fp16' are both true; keep one (bf16 where the hardware has it)")
    if ns["max_seq_length"] is not None and ns["max_seq_length"] < 2:
        problems.append(f"'max_seq_length' must be at least 2, got {ns['max_seq_length']}")
    if not 0 <= ns["validation_split_percentage"] < 50:
        problems.append(f"'validation_split_percentage' must be in [0, 50), got {ns['validation_split_percentage']}")
    for key in ("max_train_samples", "max_eval_samples"):
        if ns[key] is not None and ns[key] < 1:
            problems.append(f"'{key}' must be at least 1, got {ns[key]}")
    if ns["model_name_or_path"] is None and not ns["model_config"].get("model_type"):
        problems.append("no model: set 'model_name_or_path', or 'model_config' with a 'model_type' such as \"llama\"")
    if ns["balance_meters"] < 0:
        problems.append(f"'balance_meters' must be 0 (no copies) or a number of tunes, got {ns['balance_meters']}")
    elif ns["balance_meters"] and ns["streaming"]:
        problems.append("'balance_meters' counts the tunes of each meter over the whole training split, which "
                        "'streaming' never holds; set 'balance_meters' to 0, or turn 'streaming' off")
    if ns["loop_penalty"] < 0:
        problems.append(f"'loop_penalty' must be 0 (off) or a positive weight, got {ns['loop_penalty']}")
    elif ns["loop_penalty"] and ns["streaming"]:
        problems.append("'loop_penalty' draws its pseudo-loops from the whole training split, which 'streaming' "
                        "never holds; set 'loop_penalty' to 0, or turn 'streaming' off")
    if ns["loop_penalty_rows"] < 0:
        problems.append(
            f"'loop_penalty_rows' must be 0 (half the batch) or a number of rows, got {ns['loop_penalty_rows']}"
        )
    if found := sampling_problems(ns["sampling"]):
        problems.append(f"'sampling': {'; '.join(found)}")
    if ns["tokenizer_merges"] < 0:
        problems.append(f"'tokenizer_merges' must be 0 (character level) or more, got {ns['tokenizer_merges']}")
    elif ns["tokenizer_merges"] and (
        given := next((k for k in ("model_name_or_path", "tokenizer_name_or_path", "streaming") if ns[k]), None)
    ):
        problems.append(
            f"'tokenizer_merges' learns a new tokenizer from the whole training split, which '{given}' rules out; "
            "set 'tokenizer_merges' to 0, or unset the other"
        )
    if ns["use_peft"] and not ns["model_name_or_path"]:
        problems.append("'use_peft' adapts a pretrained model: set 'model_name_or_path' (or turn 'use_peft' off)")
    for key in ("load_in_4bit", "merge_adapter"):
        if ns[key] and not ns["use_peft"]:
            problems.append(f"'{key}' needs 'use_peft': true (4-bit base weights are trained through LoRA adapters)")
    problems += _attention_problems(ns)
    problems += _path_problems(ns)
    if "8bit" in str(ns["optim"]) and (reason := _bitsandbytes_problem(ns)):
        problems.append(f"'optim' {ns['optim']} cannot run here ({reason}); use adamw_torch, or fix bitsandbytes")
    return problems


def _on_cuda(ns: dict) -> bool:
    """Whether the run will train on a CUDA GPU: one is there and the recipe does not ask for the CPU."""
    return torch.cuda.is_available() and not ns["use_cpu"]


def _attention_problems(ns: dict) -> list[str]:
    """Attention kernels that would fail mid-run on this machine (checked in torch 2.13)."""
    impl, on_cpu = ns["attn_implementation"], not _on_cuda(ns)
    if impl == "flex_attention" and on_cpu and not ns["dry_run"]:
        return ["'attn_implementation' flex_attention has no backward pass on the CPU; use sdpa"]
    if impl == "flash_attention_2" and (on_cpu or importlib.util.find_spec("flash_attn") is None):
        return ["'attn_implementation' flash_attention_2 needs a CUDA GPU and `pip install flash-attn`; use sdpa"]
    return []


def _bitsandbytes_problem(ns: dict) -> str | None:
    """Why bitsandbytes' 8-bit AdamW cannot step on this machine, found by taking one step on a small tensor."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed"
    device = "cuda" if _on_cuda(ns) else "cpu"
    try:
        import bitsandbytes as bnb

        # 4096 elements: bitsandbytes keeps smaller tensors in 32-bit state, which would prove nothing.
        param = torch.nn.Parameter(torch.ones(4096, device=device))
        param.grad = torch.ones_like(param)
        bnb.optim.AdamW8bit([param]).step()
    except Exception as e:  # bitsandbytes fails in many ways where its kernels are missing
        return f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else 'no message'}"
    return None


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.endswith(DATA_SUFFIXES) or name.count("/") != 1


def writable_problem(output_dir: str | None) -> str | None:
    """Can output_dir be created and written? Checked on its nearest existing ancestor, creating nothing."""
    if not output_dir:
        return "'output_dir' is not set; name the folder the run writes to, e.g. \"output_dir\": \"runs/mine\""
    path = existing_ancestor(output_dir)
    if not path.is_dir():
        return f"'output_dir': {path} is a file, not a folder"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"'output_dir': cannot write in {path}; choose a folder you can write to"
    return None


def _path_problems(ns: dict) -> list[str]:
    problems = [p for p in [writable_problem(ns["output_dir"])] if p]
    dataset = ns["dataset_name_or_path"]
    if dataset != BUILTIN_DATASET and _looks_like_path(dataset) and not Path(dataset).expanduser().exists():
        problems.append(f"'dataset_name_or_path': no such file or folder: {dataset}")
    elif Path(dataset).is_file() and not dataset.endswith(DATA_SUFFIXES):
        problems.append(f"'dataset_name_or_path': {dataset} is not one of {', '.join(DATA_SUFFIXES)}")
    for key in ("model_name_or_path", "tokenizer_name_or_path"):
        name = ns[key]
        if name and name.startswith((".", "/", "~")) and not Path(name).expanduser().is_dir():
            problems.append(f"'{key}': no such folder: {name}")
    return problems


def _reporting_notes(ns: dict) -> list[str]:
    """TensorBoard logs where tensorboard is installed; without it the run goes on unlogged, and says so."""
    report_to = [ns["report_to"]] if isinstance(ns["report_to"], str) else list(ns["report_to"] or [])
    if "tensorboard" in report_to and importlib.util.find_spec("tensorboard") is None:
        ns["report_to"] = [r for r in report_to if r != "tensorboard"] or "none"
        return ["tensorboard is not installed: no TensorBoard logs (pip install tensorboard)"]
    return []


def _has_accelerator() -> bool:
    return torch.cuda.is_available() or torch.backends.mps.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 autocast trains faster than fp32;
    with AVX2 alone bf16 is emulated, about 100x slower."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def _native_bf16(ns: dict) -> tuple[bool, str]:
    """Whether the run's device computes in bf16 natively, and why, for `"bf16": "auto"`."""
    if _on_cuda(ns):
        name = torch.cuda.get_device_name()
        return (True, f"{name} has bf16") if torch.cuda.is_bf16_supported() else (False, f"{name} has no bf16")
    if _has_accelerator() and not ns["use_cpu"]:
        return False, "not chosen on this accelerator ('bf16': true asks for it)"
    if cpu_has_native_bf16():
        return True, "this CPU has native bf16 (AVX512-BF16/AMX)"
    return False, "this CPU would emulate bf16 (no AVX512-BF16/AMX), far slower than fp32"


def _device_notes(ns: dict) -> tuple[list[str], list[str]]:
    """On a machine without an accelerator, train on the CPU: `use_cpu` is what makes accelerate form a
    gloo process group under `accelerate launch --multi_gpu` / torchrun, and what lets bf16 run as CPU
    autocast. `"bf16": "auto"` becomes true or false for this machine. On a GPU without bf16, refuse bf16
    here rather than mid-run."""
    notes, no_accelerator = [], not _has_accelerator()
    if no_accelerator:
        ns["use_cpu"] = True
    if ns["bf16"] == BF16_AUTO:
        if ns["fp16"]:
            ns["bf16"] = False  # one problem, not also "both true"
            return [], [f"'bf16' \"{BF16_AUTO}\" with 'fp16' true; keep one (set 'bf16' false for fp16)"]
        ns["bf16"], why = _native_bf16(ns)
        notes.append(f"bf16 \"{BF16_AUTO}\": {'bf16' if ns['bf16'] else 'fp32'}, {why}")
    if no_accelerator:
        if not ns["bf16"]:
            return notes, []
        note = "no GPU found: training on the CPU with bf16 autocast"
        if not cpu_has_native_bf16():
            note += "; this CPU has no native bf16 (AVX512-BF16/AMX), so bf16 runs far slower than fp32 (--bf16 false)"
        return [*notes, note], []
    if ns["bf16"] and _on_cuda(ns) and not torch.cuda.is_bf16_supported():
        name = torch.cuda.get_device_name()
        return notes, [f"'bf16' is not supported by {name} (it needs an Ampere or newer GPU); use --bf16 false --fp16 true"]
    return notes, []


def parse_recipe(argv: list[str]) -> ParsedRecipe:
    """Parse `RECIPE.json [--field value ...]` into the four argument objects, or raise UserError."""
    outputs, resolved, notes = parse_with(RecipeParser(), argv, _value_problems, "recipes/music_abc.json")
    return ParsedRecipe(*outputs, resolved=resolved, notes=notes)


def parse_with(
    parser: RecipeParser, argv: list[str], value_problems: Callable[[dict], list[str]], example: str
) -> tuple[list, dict[str, Any], list[str]]:
    """Parse `RECIPE.json [--field value ...]` into `parser`'s dataclasses, or raise UserError: one instance of each,
    the recipe as resolved (after `extends` and flags: only the keys set, so it can be run again as is), and notes
    on what this machine chose. `value_problems` checks the merged values (a TrainingArguments' are always there)."""
    if argv and argv[0] in ("-h", "--help"):
        parser.print_help()
        raise SystemExit(0)
    if not argv or argv[0].startswith("-"):
        raise UserError(f"usage: {parser.usage}; the first argument is a recipe such as {example}")
    recipe_path, flags = Path(argv[0]), argv[1:]
    recipe = read_recipe(recipe_path)
    field_types = parser.field_types
    good, problems = _recipe_problems(recipe, field_types, parser.prog)
    given, unknown_flags = _flag_names(parser, flags)
    problems += [f"unknown flag '{flag}'{_did_you_mean(flag.lstrip('-').split('=')[0], field_types, parser.prog)}"
                 for flag in unknown_flags]
    if problems:
        raise UserError(_join(recipe_path, problems))
    parser.set_defaults(**good)
    ns = vars(parser.parse_args(flags))
    for key in given:  # a JSON-object flag merges into the recipe's object, as `extends` does
        if isinstance(ns[key], dict) and isinstance(good.get(key), dict):
            ns[key] = merge_recipes(good[key], ns[key])
    flagged = {key: ns[key] for key in given}  # as asked, before this machine resolves any (`"bf16": "auto"`)
    notes, device_problems = _device_notes(ns)
    notes += _reporting_notes(ns)
    problems = value_problems(ns) + device_problems
    if problems:
        raise UserError(_join(recipe_path, problems))
    outputs = []
    for dtype in parser.dataclass_types:
        names = {f.name for f in dataclasses.fields(dtype) if f.init}
        try:
            outputs.append(dtype(**{k: v for k, v in ns.items() if k in names}))
        except (ValueError, TypeError) as e:
            raise UserError(_join(recipe_path, [" ".join(str(e).split())])) from None
    return outputs, {**recipe, **flagged}, notes


def recipe_table(folder: Path) -> str:
    """The README's table of the recipes in `folder`: each file, the recipe it extends, and its own description."""
    rows = []
    for path in sorted(folder.glob("*.json")):
        own = json.loads(path.read_text(encoding="utf-8"))
        rows.append([f"`{path.name}`", f"`{own['extends']}`" if "extends" in own else "–", own.get("description", "")])
    return markdown_table(["recipe", "extends", "what it is"], rows)


def read_data_args(path: Path) -> DataArguments:
    """The data keys of the recipe at `path`, type-checked as a run checks them; its other keys are not read, so a
    recipe that names only its data will do."""
    recipe = read_recipe(path)
    names = {f.name for f in dataclasses.fields(DataArguments) if f.init}
    good, problems = _recipe_problems({k: v for k, v in recipe.items() if k in names}, RecipeParser().field_types)
    if problems:
        raise UserError(_join(path, problems))
    return DataArguments(**good)


def _join(recipe_path: Path, problems: list[str]) -> str:
    if len(problems) == 1:
        return f"{recipe_path}: {problems[0]}"
    return f"{recipe_path}: {len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems)


if __name__ == "__main__":
    cli = argparse.ArgumentParser(prog="python -m finetune.recipe", description="Tools for the recipe files.")
    cli.add_argument("--table", action="store_true", help="print the README's table of recipes (Markdown)")
    cli.add_argument("folder", nargs="?", default="recipes", help="the folder of recipes (default: recipes)")
    options = cli.parse_args()
    if options.table:
        print(recipe_table(Path(options.folder)), end="")
    else:
        cli.print_help()
