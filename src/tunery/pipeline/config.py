"""The run recipe: what a user submits to train, as typed, validated data.

Importing this module needs no torch, so the control plane validates submissions with the
same classes the pipeline trains from. ``load_recipe`` reads a recipe YAML and reports every
problem with its dotted field path.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from tunery.errors import ConfigError, problems_from

RUN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MODULE_NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.]{0,99}\Z"
MAX_TARGET_MODULES = 64
"""The most module names lora.target_modules may list."""

MAX_STEPS = 1_000_000
"""The most optimizer steps a run may ask for; more is a typo, not a fine-tune."""
MAX_SEED = 2**32 - 1
"""The largest seed: every RNG tunery seeds (Python, torch, CUDA) takes 32 bits exactly."""
MAX_LORA_ALPHA = 4096.0
"""The largest LoRA alpha; alpha / rank scales the update, and beyond this it only diverges."""
MAX_GRAD_NORM = 1e6
"""The largest clipping norm; a larger one means no clipping, which this already is."""
MIN_SEQ_LENGTH = 64
"""The shortest max_seq_length: a chat template's own tokens take a few dozen."""
MAX_BASE_MODEL_CHARS = 1000
"""The longest base_model reference (an id, URL or path)."""
MAX_DATASETS_PER_RUN = 64
"""The most training (or validation) datasets one run may name."""
MAX_DATASET_REF_CHARS = 4096
"""The longest dataset id or local dataset path."""
MAX_VALIDATION_SPLIT = 0.5
"""The largest share of rows validation.split may hold out; more leaves too little to train."""
AUTO_VALIDATION_MIN_ROWS = 200
"""Data with this many rows or more gets a default validation split when none is set."""
AUTO_VALIDATION_SHARE = 0.05
"""The default validation split's share of the rows..."""
AUTO_VALIDATION_MAX_ROWS = 500
"""...and its most rows: evaluation time stays small next to training time."""
AUTO_VALIDATION_RULE = (
    f"{AUTO_VALIDATION_SHARE:.0%} of the rows (at most {AUTO_VALIDATION_MAX_ROWS}) of data "
    f"with {AUTO_VALIDATION_MIN_ROWS} rows or more"
)
"""The default validation split in words, for messages and the field's description."""
DEFAULT_DPO_BETA = 0.1
"""DPO's beta when the recipe sets none (the DPO paper's and OpenAI's "auto")."""
MAX_DPO_BETA = 10.0
"""The largest beta: far above what DPO uses (0.01-0.5); beyond it the loss only saturates."""
RUN_ID_PATTERN = r"^run_[A-Za-z0-9]{1,64}\Z"
"""How init_from names a run of the server's (``run_`` and its id)."""


DatasetRef = Annotated[str, Field(min_length=1, max_length=MAX_DATASET_REF_CHARS)]
"""An uploaded dataset's id, or a local dataset file's path."""


class _Strict(BaseModel):
    # No NaN or infinity in any float: they pass every bound and poison training.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class TrainingConfig(_Strict):
    """Hyperparameters of the gradient steps."""

    epochs: int = Field(3, ge=1, le=1000, description="Passes over the data when max_steps is 0.")
    max_steps: int = Field(
        0,
        ge=0,
        le=MAX_STEPS,
        description="Optimizer steps; > 0 makes the run step-based and wins over epochs.",
    )
    learning_rate: float = Field(2e-4, gt=0, le=1, description="Peak AdamW learning rate.")
    batch_size: int = Field(8, ge=1, le=4096, description="Examples per micro-batch.")
    gradient_accumulation_steps: int = Field(
        1, ge=1, le=1024, description="Micro-batches per optimizer step."
    )
    max_seq_length: int | None = Field(
        None,
        ge=MIN_SEQ_LENGTH,
        description="Token limit per example; None means the model's max context.",
    )
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "cosine", description="Learning-rate schedule after warmup."
    )
    warmup_ratio: float = Field(
        0.03, ge=0, lt=1, description="Share of the steps spent warming up."
    )
    weight_decay: float = Field(0.0, ge=0, le=1, description="AdamW decoupled weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, le=MAX_GRAD_NORM, description="Gradient clipping norm.")
    seed: int = Field(42, ge=0, le=MAX_SEED, description="Seeds shuffling, LoRA init and dropout.")
    gradient_checkpointing: bool = Field(
        True, description="Recompute activations in the backward pass to save memory."
    )
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU."
    )
    checkpoint_every_steps: int = Field(
        50, ge=1, description="Optimizer steps between resumable checkpoints."
    )
    eval_every_steps: int = Field(
        0,
        ge=0,
        le=MAX_STEPS,
        description="Optimizer steps between evaluations on the validation data; 0: only at "
        "the end. Ignored when the run has no validation data.",
    )
    train_on_inputs: bool = Field(
        False, description="Also train on system/user tokens (default: assistant tokens only)."
    )
    compile: Literal["auto", "on", "off"] = Field(
        "auto",
        description="torch.compile the decoder's MLPs and norms. auto: only where it was "
        "measured to pay for its compile time (on CPU it did not; see bench/README.md).",
    )


class LoraSettings(_Strict):
    """The adapter attached to the frozen base."""

    rank: int = Field(16, ge=1, le=1024, description="LoRA rank r.")
    alpha: float = Field(
        32, gt=0, le=MAX_LORA_ALPHA, description="LoRA scaling numerator (scale = alpha / rank)."
    )
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: Literal["all-linear"] | list[str] = Field(
        "all-linear",
        max_length=MAX_TARGET_MODULES,
        description="'all-linear' or module names such as q_proj, v_proj; checked against "
        "the model when it is loaded, before training.",
    )
    quantize_base: Literal["none", "nf4"] = Field(
        "none",
        description="nf4: load the frozen base in 4 bits with bitsandbytes (QLoRA; needs a CUDA "
        "GPU). The GGUF export still merges the adapter into the 16-bit base weights.",
    )

    @field_validator("target_modules")
    @classmethod
    def _non_empty_names(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list):
            if not value:
                raise ValueError("list is empty; name at least one module or use 'all-linear'")
            blank = [name for name in value if not name.strip()]
            if blank:
                raise ValueError("module names must not be blank")
            odd = [name for name in value if not re.match(MODULE_NAME_PATTERN, name)]
            if odd:
                raise ValueError(
                    f"{odd[0][:40]!r} is not a module name (letters, digits, '_' and '.')"
                )
        return value


class ExportSettings(_Strict):
    gguf: bool = Field(True, description="Merge, convert and quantize to a GGUF bundle.")
    quantization: Literal["Q4_K_M"] = Field("Q4_K_M", description="GGUF quantization type.")


class Attestations(_Strict):
    # Strict: an attestation is a yes only when it is a real boolean true, never "yes" or 1.
    dataset_rights: StrictBool = Field(
        False, description="You hold the rights to train on the data."
    )
    model_license: StrictBool = Field(False, description="You accept the base model's license.")


class SampleSettings(_Strict):
    """The smoke-test prompts run through the trained model."""

    prompts: list[str] = Field(
        default_factory=list, max_length=10, description="Empty: three held-out dataset rows."
    )
    max_new_tokens: int = Field(96, ge=1, le=2048)


class ValidationSettings(_Strict):
    """Held-out data the run is evaluated on: eval loss and mean token accuracy.

    Separate validation data (``datasets`` for ``tunery train``, ``dataset_ids`` on a
    server) wins over ``split``. With neither and ``split`` unset, data of
    AUTO_VALIDATION_MIN_ROWS rows or more holds out AUTO_VALIDATION_SHARE of them, at most
    AUTO_VALIDATION_MAX_ROWS; smaller data holds out none (``AUTO_VALIDATION_RULE``).
    """

    split: float | None = Field(
        None,
        ge=0,
        le=MAX_VALIDATION_SPLIT,
        description="Share of the rows held out for evaluation; 0: none. Unset: "
        f"{AUTO_VALIDATION_RULE}, else none.",
    )
    datasets: list[DatasetRef] = Field(
        default_factory=list,
        max_length=MAX_DATASETS_PER_RUN,
        description="Local validation files; win over split.",
    )
    dataset_ids: list[DatasetRef] = Field(
        default_factory=list,
        max_length=MAX_DATASETS_PER_RUN,
        description="Uploaded validation dataset ids; win over split.",
    )

    @property
    def separate(self) -> bool:
        """Whether the run evaluates on separate validation data rather than a split."""
        return bool(self.datasets or self.dataset_ids)


class EarlyStoppingSettings(_Strict):
    """Stop when the eval loss stops improving, keeping the best evaluation's adapter."""

    patience: int = Field(
        0,
        ge=0,
        le=1000,
        description="Evaluations without improvement before training stops; 0: off.",
    )
    min_delta: float = Field(
        0.0, ge=0, le=1000, description="How much lower an eval loss must be to count as better."
    )


class MethodSettings(_Strict):
    """The training objective: supervised fine-tuning, or preference tuning with DPO."""

    type: Literal["sft", "dpo"] = Field(
        "sft",
        description="sft: learn the answers of chat rows. dpo: learn which of two answers is "
        "better from preference pairs (Direct Preference Optimization, sigmoid loss).",
    )
    beta: float | None = Field(
        None,
        gt=0,
        le=MAX_DPO_BETA,
        description=f"dpo only: how far the tuned model may move from the reference (the "
        f"starting point); lower moves further. Unset: {DEFAULT_DPO_BETA}.",
    )

    @model_validator(mode="after")
    def _beta_is_for_dpo(self) -> MethodSettings:
        if self.beta is not None and self.type != "dpo":
            raise _field_error(self, ("beta",), "applies to method.type dpo only; remove it")
        return self

    @property
    def preference(self) -> bool:
        """Whether the run trains on preference pairs."""
        return self.type == "dpo"

    @property
    def dpo_beta(self) -> float:
        return self.beta if self.beta is not None else DEFAULT_DPO_BETA


MAX_TAGS = 20
MAX_TAG_CHARS = 32
TAG_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/+-]*")
MAX_NOTE_CHARS = 4000
TAG_RULE = (
    f"a tag is 1 to {MAX_TAG_CHARS} letters, digits or . _ : / + -, starting with a letter "
    "or a digit"
)


def check_tags(tags: list[str]) -> list[str]:
    """The tags without repeats, in their order; ValueError naming the first bad one."""
    if len(tags) > MAX_TAGS:
        raise ValueError(f"a run has at most {MAX_TAGS} tags; {len(tags)} given")
    for tag in tags:
        if len(tag) > MAX_TAG_CHARS or not TAG_PATTERN.fullmatch(tag):
            raise ValueError(f"{tag[:40]!r}: {TAG_RULE}")
    return list(dict.fromkeys(tags))


def check_note(note: str) -> str:
    """The note, trimmed; ValueError when too long or holding control characters."""
    if len(note) > MAX_NOTE_CHARS:
        raise ValueError(f"a note has at most {MAX_NOTE_CHARS} characters; {len(note)} given")
    if any(unicodedata.category(char) == "Cc" and char not in "\n\t" for char in note):
        raise ValueError("a note holds text, new lines and tabs only (no control characters)")
    return note.strip()


RUN_NAME_RULE = (
    "use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or a digit (it "
    "names the run's files)"
)


def _run_name(name: str) -> str:
    if not re.fullmatch(RUN_NAME_PATTERN, name):
        raise ValueError(RUN_NAME_RULE)
    return name


W_AND_B_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,127}$"


class WandbSettings(_Strict):
    """Where a run's metrics go in Weights & Biases (as OpenAI's ``wandb`` integration)."""

    project: Annotated[str, Field(pattern=W_AND_B_NAME_PATTERN)] = Field(
        description="The W&B project the run is logged to."
    )
    name: Annotated[str, Field(pattern=W_AND_B_NAME_PATTERN)] | None = Field(
        None, description="The W&B run's display name; default the run id."
    )
    entity: Annotated[str, Field(pattern=W_AND_B_NAME_PATTERN)] | None = Field(
        None, description="The team or user; default the key's own."
    )
    tags: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=50, description="Tags for the W&B run."
    )


class Integration(_Strict):
    """A service the run reports to while it trains."""

    type: Literal["wandb"] = Field(description="wandb: Weights & Biases.")
    wandb: WandbSettings


class RunRecipe(_Strict):
    """A run as submitted: model, data (uploaded ids or local files), hyperparameters, export."""

    name: Annotated[str, AfterValidator(_run_name)] = Field(
        description="Run name; also names the artifact files.",
        json_schema_extra={"pattern": RUN_NAME_PATTERN},
    )
    base_model: str = Field(
        min_length=1,
        max_length=MAX_BASE_MODEL_CHARS,
        description="Catalog id, Hugging Face id or URL, or a local directory.",
    )
    dataset_ids: list[DatasetRef] = Field(
        default_factory=list, max_length=MAX_DATASETS_PER_RUN, description="Uploaded dataset ids."
    )
    datasets: list[DatasetRef] = Field(
        default_factory=list, max_length=MAX_DATASETS_PER_RUN, description="Local dataset files."
    )
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    gpu_tier: str | None = Field(None, description="Tier id; None takes the default node's tier.")
    export: ExportSettings = Field(default_factory=ExportSettings)
    attestations: Attestations = Field(default_factory=Attestations)
    samples: SampleSettings = Field(default_factory=SampleSettings)
    validation: ValidationSettings = Field(default_factory=ValidationSettings)
    early_stopping: EarlyStoppingSettings = Field(default_factory=EarlyStoppingSettings)
    method: MethodSettings = Field(default_factory=MethodSettings)
    init_from: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_BASE_MODEL_CHARS,
        description="Start from a completed run's adapter instead of a fresh one (SFT, then "
        "DPO): its id (run_...) on a server; for tunery train, the run's output or adapter "
        "directory. It must use the same base_model and LoRA rank, alpha and target modules.",
    )
    tags: list[str] = Field(
        default_factory=list,
        description="Labels to find the run by (also editable later: PATCH /runs/{id}).",
    )
    note: str = Field("", description="A free-text note on the run (also editable later).")
    accept_warnings: StrictBool = Field(
        False,
        description="Submit even with settings far outside what usually works (a learning "
        "rate above 1e-2, an adapter that is a large share of the model, a batch larger than "
        "the data): a server refuses such a submission until this is true.",
    )

    @field_validator("tags")
    @classmethod
    def _tags(cls, tags: list[str]) -> list[str]:
        return check_tags(tags)

    @field_validator("note")
    @classmethod
    def _note(cls, note: str) -> str:
        return check_note(note)

    integrations: list[Integration] = Field(
        default_factory=list,
        max_length=1,
        description="Where metrics go while training: Weights & Biases (the server's W&B "
        "settings; docs/openai.md).",
    )

    @model_validator(mode="after")
    def _has_data(self) -> RunRecipe:
        if not self.dataset_ids and not self.datasets:
            raise ValueError("no data: list dataset files under 'datasets' or ids in 'dataset_ids'")
        return self

    @model_validator(mode="after")
    def _preference_scores_answers_only(self) -> RunRecipe:
        if self.method.preference and self.training.train_on_inputs:
            raise _field_error(
                self,
                ("training", "train_on_inputs"),
                "must be false with method.type dpo: DPO scores the two answers, not the prompt",
            )
        return self

    @property
    def init_from_run(self) -> bool:
        """Whether ``init_from`` names a server's run (else a local directory)."""
        return self.init_from is not None and re.match(RUN_ID_PATTERN, self.init_from) is not None

    @model_validator(mode="after")
    def _early_stopping_has_evaluations(self) -> RunRecipe:
        # Checked here with the field named; a default split that the data turns out too
        # small for is refused when the rows are counted (``holdout.validation_rows``).
        if self.early_stopping.patience == 0:
            return self
        problems = []
        if self.validation.split == 0 and not self.validation.separate:
            problems.append(
                (
                    ("early_stopping", "patience"),
                    "needs validation data: set validation.split above 0 or list "
                    "validation datasets",
                )
            )
        if self.training.eval_every_steps == 0:
            problems.append(
                (
                    ("training", "eval_every_steps"),
                    "is 0 (evaluate only at the end); early stopping needs evaluations during "
                    "training",
                )
            )
        if problems:
            raise ValidationError.from_exception_data(
                type(self).__name__,
                [
                    InitErrorDetails(
                        type=PydanticCustomError("value_error", message), loc=loc, input=None
                    )
                    for loc, message in problems
                ],
            )
        return self


def _field_error(model: BaseModel, loc: tuple[str, ...], message: str) -> ValidationError:
    return ValidationError.from_exception_data(
        type(model).__name__,
        [InitErrorDetails(type=PydanticCustomError("value_error", message), loc=loc, input=None)],
    )


def parse_recipe(data: Any) -> RunRecipe:
    """Validate a payload; raises ConfigError listing every problem."""
    if not isinstance(data, dict):
        raise ConfigError.single("recipe", "must be a mapping of fields")
    try:
        return RunRecipe.model_validate(data)
    except ValidationError as error:
        raise ConfigError(problems_from(error), total=error.error_count()) from None


def load_recipe(path: Path) -> RunRecipe:
    """Read a recipe YAML; relative dataset paths are taken relative to the recipe file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError.single(str(path), f"cannot read recipe: {error.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError.single(str(path), "recipe is not valid UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError.single(str(path), f"not valid YAML{where}") from None
    except RecursionError:
        raise ConfigError.single(str(path), "not valid YAML: nested too deeply") from None
    recipe = parse_recipe(data)
    base = path.parent
    resolved = [str((base / entry).resolve()) for entry in recipe.datasets]
    validation = [str((base / entry).resolve()) for entry in recipe.validation.datasets]
    local_model = base / recipe.base_model
    updates: dict[str, Any] = {
        "datasets": resolved,
        "validation": recipe.validation.model_copy(update={"datasets": validation}),
    }
    if recipe.init_from is not None and not recipe.init_from_run:
        updates["init_from"] = str((base / recipe.init_from).resolve())
    if (
        not Path(recipe.base_model).is_absolute()
        and recipe.base_model.startswith(".")
        and (local_model.is_dir())
    ):
        updates["base_model"] = str(local_model.resolve())
    return recipe.model_copy(update=updates)
