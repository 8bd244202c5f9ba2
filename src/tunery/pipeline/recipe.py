"""The training recipe, top to bottom: setup → train → save → export → samples.

``run_recipe`` is what ``tunery train`` and a worker both call. It writes into ``out_dir``:

- ``checkpoints/``: resumable checkpoints while training (removed once the adapter is saved);
- ``adapter/``: the PEFT adapter directory;
- ``<name>-lora.zip``: the LoRA bundle;
- ``<name>-gguf.zip``: the GGUF bundle, when ``export.gguf`` is on;
- ``metrics.jsonl``: one line per optimizer step, with the eval loss where one was measured;
- ``run.json``: the configuration snapshot, data summary, final metrics, evaluation (final
  and best eval loss, early stop), samples (tuned beside base answers), artifacts.

Calling it again with the same recipe and ``out_dir`` resumes from the newest complete
checkpoint. Every step checks its inputs before any gradient step runs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from tunery.errors import ConfigError, FieldProblem, TuneryError
from tunery.gguf.export import QUANTIZATION, ExportResult, export_gguf, preflight
from tunery.phases import Phase
from tunery.pipeline.config import RunRecipe
from tunery.pipeline.distributed import DataParallel
from tunery.pipeline.load import ModelReference, parse_model_reference
from tunery.pipeline.outcome import (
    RunResult,
    after_save_failure,
    kept_step_summary,
    objective_summary,
    run_summary,
)
from tunery.pipeline.reporting import Reporter
from tunery.pipeline.timings import PhaseTimer

if TYPE_CHECKING:
    from tunery.pipeline.chat import PairExample


def recipe_fingerprint(recipe: RunRecipe, dataset_paths: list[Path]) -> str:
    """Identifies what determines the training trajectory: model, data bytes, hyperparameters,
    the rows held out for validation and when training stops early."""
    digest = hashlib.sha256()
    identity: dict[str, Any] = {
        "base_model": recipe.base_model,
        "training": recipe.training.model_dump(),
        "lora": recipe.lora.model_dump(),
        "validation": recipe.validation.model_dump(),
        "early_stopping": recipe.early_stopping.model_dump(),
    }
    # Only where set: an SFT run from scratch keeps the fingerprint it had before these
    # fields existed, so its checkpoints resume across the upgrade.
    if recipe.method.preference:
        identity["method"] = recipe.method.model_dump()
    if recipe.init_from is not None:
        identity["init_from"] = recipe.init_from
    digest.update(json.dumps(identity, sort_keys=True).encode())
    for path in dataset_paths:
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def check_recipe(
    recipe: RunRecipe,
    dataset_paths: list[Path],
    validation_paths: list[Path] | None = None,
    init_adapter_dir: Path | None = None,
) -> ModelReference:
    """Problems the pipeline can see without loading anything; raises ConfigError.

    Returns the parsed base model reference, so the recipe parses it once.
    """
    problems = []
    if recipe.init_from is not None and init_adapter_dir is None:
        if recipe.init_from_run:
            problems.append(
                FieldProblem(
                    "init_from",
                    f"{recipe.init_from} is a run on a server; tunery train starts from a local "
                    "run's output directory",
                )
            )
        elif not Path(recipe.init_from).is_dir():
            problems.append(
                FieldProblem("init_from", f"{recipe.init_from} does not exist or is no directory")
            )
    reference: ModelReference | None = None
    try:
        reference = parse_model_reference(recipe.base_model)
    except ConfigError as error:
        problems.extend(error.problems)
    if not dataset_paths:
        problems.append(
            ConfigError.single(
                "datasets", "tunery train needs local dataset files under 'datasets'"
            ).problems[0]
        )
    named = [("datasets", dataset_paths), ("validation.datasets", validation_paths or [])]
    for field, paths in named:
        for index, path in enumerate(paths):
            if not path.is_file():
                problems.append(
                    ConfigError.single(
                        f"{field}.{index}", f"{path} does not exist or is not a file"
                    ).problems[0]
                )
    if problems or reference is None:
        raise ConfigError(problems)
    return reference


def run_recipe(
    recipe: RunRecipe,
    out_dir: Path,
    reporter: Reporter,
    *,
    dataset_paths: list[Path] | None = None,
    validation_paths: list[Path] | None = None,
    checkpoint_dir: Path | None = None,
    base_cache_dir: Path | None = None,
    on_checkpoint: Callable[[Path], None] | None = None,
    init_adapter_dir: Path | None = None,
    data_parallel: DataParallel | None = None,
    estimate: dict[str, Any] | None = None,
) -> RunResult | None:
    """Run the whole pipeline; raises a TuneryError subclass on failure or cancel.

    ``init_adapter_dir``: where the adapter ``recipe.init_from`` names is (a worker fetches
    it); None takes ``init_from`` as a local directory.

    Checkpoints go to ``checkpoint_dir`` (default ``out_dir/checkpoints``): a worker keeps
    them where every node of its tier reaches them, or hands each complete one to
    ``on_checkpoint`` to keep it elsewhere, so another node resumes the run. The base
    model's sample answers are cached in ``base_cache_dir`` (None: not cached). ``estimate``:
    what the run was estimated to take (a server's ``RunEstimate``), kept in ``run.json``
    beside the ``timings`` each phase took.

    ``data_parallel``: this process is one rank of a data-parallel run
    (``pipeline.ranks`` starts them). Every rank trains; rank 0 alone goes on to save,
    export and sample, and the others return None once training ends.
    """
    import torch

    from tunery.pipeline.chat import Encoder
    from tunery.pipeline.checkpoints import complete_checkpoints
    from tunery.pipeline.data import prepare_data
    from tunery.pipeline.divergence import (
        TrainingDiverged,
        divergence_hint,
        restore_kept_adapter,
    )
    from tunery.pipeline.early_stopping import EarlyStopping, best_adapter_dir
    from tunery.pipeline.evaluation import (
        EvaluationPlan,
        evaluation_summary,
        keep_best_adapter,
        with_evaluations,
    )
    from tunery.pipeline.kernels import choose_kernels
    from tunery.pipeline.load import (
        check_quantization,
        choose_device,
        choose_precision,
        load_model,
        load_tokenizer,
        max_context,
        resolve_model_dir,
    )
    from tunery.pipeline.lora import attach_lora, initial_adapter_dir, load_initial_adapter
    from tunery.pipeline.preference import PreferenceObjective
    from tunery.pipeline.preference_data import prepare_preference_data
    from tunery.pipeline.samples import add_base_answers, generate_samples
    from tunery.pipeline.save import model_card, save_adapter, write_lora_bundle
    from tunery.pipeline.train import train
    from tunery.pipeline.train_setup import TrainerState, TrainSetup

    paths = dataset_paths if dataset_paths is not None else [Path(p) for p in recipe.datasets]
    if validation_paths is None:
        validation_paths = [Path(p) for p in recipe.validation.datasets]
    reference = check_recipe(recipe, paths, validation_paths, init_adapter_dir)
    if recipe.init_from is not None and init_adapter_dir is None:
        init_adapter_dir = Path(recipe.init_from)
    config = recipe.training
    out_dir.mkdir(parents=True, exist_ok=True)

    # Setup: model, data, adapter.
    reporter = timer = PhaseTimer(reporter)
    reporter.phase(Phase.LOADING_MODEL)
    model_dir = resolve_model_dir(reference)
    tokenizer, chat_format, notes = load_tokenizer(model_dir)
    if recipe.export.gguf:
        _preflight_gguf(model_dir, chat_format.end_of_turn)
    device = data_parallel.device if data_parallel is not None else choose_device()
    check_quantization(recipe.lora.quantize_base, device)
    precision = choose_precision(config.mixed_precision, device)
    model = load_model(model_dir, precision, device, quantize_base=recipe.lora.quantize_base)
    for note in notes:
        reporter.log(note)
    context = max_context(model)
    max_length = min(config.max_seq_length or context, context)
    if config.max_seq_length and config.max_seq_length > context:
        reporter.log(
            f"max_seq_length {config.max_seq_length} exceeds the model's context; using {context}"
        )
    reporter.log(f"loaded {reference.name} on {device.type} ({precision.weights})")

    reporter.phase(Phase.PREPARING_DATA)
    data_options: dict[str, Any] = {
        "max_length": max_length,
        "seed": config.seed,
        "custom_prompts": recipe.samples.prompts,
        "validation": recipe.validation,
        "validation_paths": validation_paths,
        "require_validation": recipe.early_stopping.patience > 0,
    }
    if recipe.method.preference:
        data = prepare_preference_data(paths, tokenizer, chat_format, **data_options)
    else:
        data = prepare_data(
            paths, tokenizer, chat_format, train_on_inputs=config.train_on_inputs, **data_options
        )
    unit = "pairs" if recipe.method.preference else "examples"
    reporter.log(
        f"{len(data.examples)} {unit}, {data.total_tokens} tokens "
        f"({data.trained_tokens} trained), {data.truncated_rows} truncated, "
        f"{data.dropped_rows} dropped, {data.held_out_rows} held out for samples, "
        f"{len(data.validation)} for validation"
    )

    reporter.phase(Phase.ATTACHING_LORA)
    torch.manual_seed(config.seed)
    peft_model, adapter = attach_lora(
        model, recipe.lora, gradient_checkpointing=config.gradient_checkpointing
    )
    reporter.log(
        f"LoRA rank {recipe.lora.rank} on {', '.join(adapter.target_modules)}: "
        f"{adapter.trainable_parameters:,} trainable parameters "
        f"({adapter.trainable_percent:.2f}%)"
    )
    if init_adapter_dir is not None:
        load_initial_adapter(
            peft_model, initial_adapter_dir(init_adapter_dir), recipe.lora, adapter
        )
        reporter.log(f"the adapter starts from {recipe.init_from}")

    # Train.
    kernels = choose_kernels(
        peft_model,
        device,
        max_length=max_length,
        half_precision=precision.autocast is not None,
        compile_setting=config.compile,
    )
    reporter.log(
        f"attention {kernels.attention}, loss {kernels.loss}, "
        f"compile {'on' if kernels.compiled else 'off'}"
    )

    reporter.phase(Phase.TRAINING)
    is_main = data_parallel is None or data_parallel.world.is_main
    checkpoint_dir = checkpoint_dir if checkpoint_dir is not None else out_dir / "checkpoints"
    fingerprint = recipe_fingerprint(recipe, [*paths, *validation_paths])
    patience = recipe.early_stopping.patience
    preference = (
        PreferenceObjective(
            recipe.method.dpo_beta,
            batch_pairs=config.batch_size,
            validation=cast("list[PairExample]", data.validation),
        )
        if recipe.method.preference
        else None
    )
    evaluation = (
        EvaluationPlan(
            data.validation,
            config.eval_every_steps,
            EarlyStopping(patience, recipe.early_stopping.min_delta),
            best_adapter_dir(checkpoint_dir) if patience and is_main else None,
            preference=preference,
        )
        if data.validation
        else None
    )
    setup = TrainSetup(
        model=peft_model,
        examples=data.examples,
        config=config,
        precision=precision,
        device=device,
        pad_id=tokenizer.pad_token_id,
        checkpoint_dir=checkpoint_dir,
        fingerprint=fingerprint,
        kernels=kernels,
        evaluation=evaluation,
        on_checkpoint=on_checkpoint,
        preference=preference,
        data_parallel=data_parallel,
    )
    diverged: TrainingDiverged | None = None
    try:
        state = train(setup, reporter)
    except TrainingDiverged as failure:
        share = adapter.trainable_parameters / max(1, adapter.total_parameters)
        failure.hint = divergence_hint(recipe, trainable_share=share)
        if failure.kept_weights is None:
            raise
        # The run fails, but delivers the best adapter it reached before the loss blew up.
        diverged = failure
        state = TrainerState(step=failure.step - 1, history=failure.history)
        restore_kept_adapter(peft_model, failure, reporter)
    if not is_main:
        return None
    final_metrics = state.history[-1] if state.history else {}
    evaluated = None
    kept_step = diverged.kept_step if diverged is not None else None
    if evaluation is not None and diverged is None:
        kept_step = keep_best_adapter(
            evaluation, peft_model, last_step=state.step, device=device, reporter=reporter
        )
        evaluated = evaluation_summary(
            state.evaluations, evaluation.early_stopping, finished_early=state.finished_early
        )

    # Save.
    reporter.phase(Phase.SAVING)
    card = model_card(
        recipe,
        chat_format=chat_format,
        data_summary=data.summary(),
        final_metrics=final_metrics,
        trainable_parameters=adapter.trainable_parameters,
        evaluation=evaluated,
    )
    adapter_dir = save_adapter(
        peft_model,
        tokenizer,
        chat_format,
        base_model=reference.name,
        adapter_dir=out_dir / "adapter",
        model_card=card,
    )
    lora_bundle = write_lora_bundle(adapter_dir, out_dir / f"{recipe.name}-lora.zip")
    with (out_dir / "metrics.jsonl").open("w", encoding="utf-8") as file:
        for row in with_evaluations(state.history, state.evaluations):
            file.write(json.dumps(row) + "\n")
    reporter.log(f"saved {lora_bundle.name}")

    # Export and samples. The LoRA bundle is complete: from here on a failure of any kind
    # costs the GGUF or the samples, never the LoRA the run delivers.
    gguf: ExportResult | None = None
    # A diverged run delivers its kept LoRA and samples from it, but no GGUF: exporting a
    # model the user will retrain anyway would only add to its bill.
    error: dict[str, str] | None = diverged.as_dict() if diverged is not None else None
    samples: list[dict[str, Any]] = []
    if recipe.export.gguf and diverged is None:
        reporter.phase(Phase.EXPORTING)
        try:
            gguf = export_gguf(
                adapter_dir=adapter_dir,
                base_model_dir=model_dir,
                out_dir=out_dir,
                run_name=recipe.name,
                base_model=reference.name,
                dataset_names=[Path(str(item["file"])).name for item in data.files],
                end_of_turn=chat_format.end_of_turn,
                sample_prompts=data.samples,
                max_new_tokens=recipe.samples.max_new_tokens,
            )
            samples = gguf.samples
            reporter.log(
                f"saved {gguf.bundle.name}: {gguf.gguf_bytes / 2**20:.1f} MiB {QUANTIZATION}, "
                f"logits cosine ≥ {gguf.checks['min_cosine']:.6f}"
            )
        except Exception as failure:
            error = after_save_failure(failure, "the GGUF export").as_dict()
            reporter.log(f"GGUF export failed: {error['message']}; the LoRA bundle is saved")

    # Samples: from the GGUF itself when it exists, else from the trained model.
    reporter.phase(Phase.SAMPLING)
    sample_encoder = Encoder(tokenizer, chat_format.end_of_turn, train_on_inputs=False)
    if gguf is None:
        try:
            samples = generate_samples(
                peft_model,
                tokenizer,
                sample_encoder,
                data.samples,
                end_of_turn=chat_format.end_of_turn,
                max_new_tokens=recipe.samples.max_new_tokens,
                device=device,
            )
        except Exception as failure:
            failed = after_save_failure(failure, "the sample generations")
            error = error or failed.as_dict()
            reporter.log(f"samples failed: {failed.message}; the LoRA bundle is saved")
    samples = add_base_answers(
        samples,
        peft_model,
        tokenizer,
        sample_encoder,
        data.samples,
        base_model=reference.name,
        end_of_turn=chat_format.end_of_turn,
        max_new_tokens=recipe.samples.max_new_tokens,
        device=device,
        cache_dir=base_cache_dir,
        reporter=reporter,
    )
    for sample in samples:
        if not sample["stopped"]:
            reporter.log(
                f"sample did not stop within {sample['tokens']} tokens: {sample['prompt'][:60]!r}"
            )

    summary = run_summary(
        recipe,
        error=error,
        reference=reference,
        model_dir=model_dir,
        chat_format=chat_format,
        notes=notes,
        data_summary=data.summary(),
        kernels=kernels.as_dict(),
        batch=(data_parallel or DataParallel.single(device)).batch_summary(
            config, state.micro_batch_examples
        ),
        adapter=adapter,
        final_metrics=final_metrics,
        evaluation=evaluated,
        kept=kept_step_summary(state.history, kept_step, evaluated),
        samples=samples,
        lora_bundle=lora_bundle,
        gguf=gguf,
        objective=objective_summary(recipe, data.summary()),
        timings=timer.timings(),
        estimate=estimate,
    )
    (out_dir / "run.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    for checkpoint in complete_checkpoints(checkpoint_dir):
        shutil.rmtree(checkpoint, ignore_errors=True)
    shutil.rmtree(best_adapter_dir(checkpoint_dir), ignore_errors=True)
    return RunResult(out_dir, adapter_dir, lora_bundle, gguf.bundle if gguf else None, summary)


def _preflight_gguf(model_dir: Path, end_of_turn: str) -> None:
    """Refuse, before training, a base model whose GGUF export would fail."""
    try:
        preflight(model_dir, end_of_turn)
    except TuneryError as failure:
        raise ConfigError.single(
            "export.gguf",
            f"this base model cannot be exported to GGUF: {failure.message}",
            hint="set export.gguf to false to train the LoRA adapter alone",
        ) from None
