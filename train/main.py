"""Train a GSQ tokenizer (GSQ-GAN recipe) with accelerate, on one CPU or many GPUs.

    accelerate launch train/main.py --config train/configs/smoke.yaml --data DIR --output-dir DIR \
        [--max-steps N] [--resume] [--overwrite] [section.key=value ...]

(installed from the wheel, with no checkout: `gsq-train -m gsq_deploy.train.main --config ...`)

Writes <output-dir>/checkpoints/ (full training state, every log.checkpoint_every steps),
<output-dir>/logs/, <output-dir>/samples/ (validation grids) and, at the end,
<output-dir>/model.safetensors: the EMA generator in gsq_core's native format.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from gsq_core.extras import missing_package_message

try:
    import torch
    import yaml
    from accelerate import Accelerator
except ImportError as _missing:  # one line naming the extra, not a ModuleNotFoundError traceback
    sys.exit(f"error: {missing_package_message(_missing.name or 'torch', 'train', 'train/main.py')}")

from gsq_core.checkpoint import config_summary
from gsq_core.errors import GSQError
from gsq_core.model import GSQTokenizer
from gsq_deploy.train import checkpointing, run_log
from gsq_deploy.train.config import TrainConfig, load_config
from gsq_deploy.train.data import (CropSpec, DataError, FolderStream, ShardStream, iter_tar_images, list_images,
                                   list_shards, split_validation)
from gsq_deploy.train.discriminator import PatchDiscriminator
from gsq_deploy.train.ema import make_ema
from gsq_deploy.train.losses import (adversarial_active, discriminator_loss, generator_adversarial_loss,
                                     reconstruction_loss)
from gsq_deploy.train.validation import evaluate, load_validation_images, save_grid

FINAL_MODEL = "model.safetensors"


class RunError(GSQError):
    """The run cannot start as asked (output folder in use, missing data, ...)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; anything after them of the form section.key=value overrides the config."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML training config (train/configs/*.yaml)")
    parser.add_argument("--data", help="training images: a folder (recursive jpg/png/webp) or, with data.format=shards, a folder of .tar shards")
    parser.add_argument("--output-dir", required=True, type=Path, help="run folder: checkpoints, logs, samples, final model")
    parser.add_argument("--max-steps", type=int, help="optimizer steps in total (overrides optim.max_steps)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --output-dir")
    parser.add_argument("--init-from", metavar="CKPT",
                        help="start a new run from a trained tokenizer's weights (.safetensors, upstream .pt or a name); "
                             "its model must match the config's. Ignored when --resume finds a checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="delete an earlier run in --output-dir and start over")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. optim.lr=2e-4 data.batch_size=4")
    return parser.parse_args(argv)


def has_accelerator_device() -> bool:
    """Whether torch sees a GPU-like device accelerate would pick."""
    if torch.cuda.is_available():
        return True
    xpu = getattr(torch, "xpu", None)
    mps = getattr(torch.backends, "mps", None)
    return bool((xpu is not None and xpu.is_available()) or (mps is not None and mps.is_available()))


def make_accelerator(config: TrainConfig, output_dir: Path) -> Accelerator:
    """Accelerator on the configured device (multi-process runs without a GPU use gloo on CPU), with
    gradient accumulation and the run's trackers (logs/metrics.jsonl, TensorBoard when installed)."""
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    cpu = config.optim.device == "cpu" or (config.optim.device == "auto" and not has_accelerator_device())
    precision = config.optim.mixed_precision
    note = None
    if cpu and precision == "fp16":
        note = "mixed precision fp16 needs a GPU; training in fp32 on CPU (bf16 works on CPU)"
        precision = "no"
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=precision,
        gradient_accumulation_steps=config.optim.grad_accum_steps,
        # The schedule is a function of the optimizer step (lr_factor): step it once per step, not once
        # per process per step as accelerate does by default.
        step_scheduler_with_optimizer=False,
        log_with=run_log.trackers(output_dir / "logs"),
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
    )
    if note and accelerator.is_main_process:
        print(note, flush=True)
    return accelerator


def prepare_output_dir(output_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to mix a new run into an old one, and an output folder that cannot be written."""
    from gsq_core.outputs import OutputError, writable_folder

    if resume and overwrite:
        raise RunError("--resume and --overwrite contradict each other; pass one")
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputError(f"{output_dir}: exists and is not a folder; --output-dir takes a folder")
    writable_folder(output_dir)
    holds_run = (
        (checkpointing.checkpoint_root(output_dir) / checkpointing.LATEST).exists()
        or (output_dir / FINAL_MODEL).exists()
        or bool(checkpointing.list_complete(output_dir))
    )
    if not resume and not overwrite and holds_run:
        raise RunError(f"{output_dir} already holds a run; pass --resume to continue it or --overwrite to start over")


def clear_output_dir(output_dir: Path) -> None:
    """Remove what an earlier run wrote (only names this script writes)."""
    for name in ("checkpoints", "logs", "samples", "validation_images"):
        shutil.rmtree(output_dir / name, ignore_errors=True)
    for name in (FINAL_MODEL, "config.yaml"):
        (output_dir / name).unlink(missing_ok=True)


def lr_factor(step: int, config: TrainConfig) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine / linear decay to min_lr_ratio, or constant."""
    optim = config.optim
    if step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return 1.0
    total = optim.schedule_steps or optim.max_steps
    progress = min(1.0, (step - optim.warmup_steps) / max(1, total - optim.warmup_steps))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if optim.schedule == "cosine" else 1 - progress
    return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * shape


def same_model(saved: dict | None, config: TrainConfig) -> bool:
    """Whether a checkpoint's recorded model config is the run's (records without a family are flex)."""
    from gsq_core.families import config_from_dict

    try:
        return config_from_dict(saved).to_dict() == config.tokenizer_config().to_dict()
    except GSQError:
        return False


def run_facts(config: TrainConfig, world_size: int) -> dict:
    """What a checkpoint records about its run besides accelerate's state (state.json)."""
    loss = config.loss
    return {
        "batch_size": config.data.batch_size, "grad_accum_steps": config.optim.grad_accum_steps,
        "world_size": world_size, "num_workers": config.data.num_workers,
        "model_config": config.tokenizer_config().to_dict(),
        "discriminator": [loss.disc_channels, loss.disc_layers] if loss.adversarial_weight > 0 else None,
    }


def check_resumable(directory: Path, state: dict, config: TrainConfig) -> None:
    """RunError when the checkpoint is of another model or discriminator (a user mistake: no fallback)."""
    if not same_model(state.get("model_config"), config):
        raise RunError(f"{directory}: the checkpoint's model differs from the config's model; "
                       "resume with the same model config")
    wanted, saved = run_facts(config, 1)["discriminator"], state.get("discriminator")
    if wanted is not None and wanted != saved:  # a saved discriminator the config no longer trains is left unread
        found = "has no discriminator state" if saved is None else f"its discriminator (channels, layers) is {saved}"
        raise RunError(f"{directory}: {found}, but the config trains {wanted}; resume with the same "
                       "loss.disc_channels and loss.disc_layers")


def load_initial_weights(generator: GSQTokenizer, source: str, config: TrainConfig) -> None:
    """Copy a trained tokenizer's weights into generator; its model config must equal the run's."""
    from gsq_core import load_tokenizer

    trained = load_tokenizer(source)
    wanted, found = config.tokenizer_config().to_dict(), trained.config.to_dict()
    differing = sorted(key for key in wanted.keys() | found.keys() if wanted.get(key) != found.get(key))
    if differing:
        details = ", ".join(f"{key}: {found.get(key)!r} vs config {wanted.get(key)!r}" for key in differing[:4])
        raise RunError(f"--init-from {source}: its model differs from the config's model ({details})")
    generator.load_state_dict(trained.state_dict())


def make_optimizer(module: torch.nn.Module, lr: float, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases, norms and the codebook."""
    decay, no_decay = [], []
    for name, parameter in module.named_parameters():
        (no_decay if parameter.ndim < 2 or "codebook" in name else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": config.optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=config.optim.betas)


def build_perceptual(config: TrainConfig):
    """LPIPS from local weights, or None with a message saying why it is off."""
    loss = config.loss
    if loss.perceptual_weight <= 0:
        return None, "perceptual loss: off (loss.perceptual_weight is 0)"
    if not loss.lpips_vgg_weights or not loss.lpips_linear_weights:
        return None, ("perceptual loss: off: set loss.lpips_vgg_weights and loss.lpips_linear_weights to local "
                      "files (LPIPS weights are never downloaded)")
    from gsq_deploy.train.perceptual import LPIPS

    return LPIPS.from_files(loss.lpips_vgg_weights, loss.lpips_linear_weights), (
        f"perceptual loss: LPIPS from {loss.lpips_vgg_weights} + {loss.lpips_linear_weights}")


@dataclass
class DataSetup:
    """The training stream of this process and the validation files."""

    stream: torch.utils.data.IterableDataset
    validation: list[Path]
    description: str


def build_data(config: TrainConfig, rank: int, world_size: int, start_batch: int, output_dir: Path) -> DataSetup:
    """Training stream (folder or shards) starting at this process's batch `start_batch`, and validation files."""
    data = config.data
    if not data.path:
        raise RunError("no training data: pass --data DIR")
    crop = CropSpec(data.crop_size, data.min_scale, data.hflip, data.vflip, data.color_jitter)
    root = Path(data.path)
    validation = list_images(data.val_dir)[: data.max_val_images] if data.val_dir else []
    if data.format == "folder":
        files = list_images(root)
        if not data.val_dir:
            files, validation = split_validation(files, root, data.val_fraction, data.max_val_images)
        stream = FolderStream(files, crop, data.batch_size, config.seed, rank, world_size, start_batch, data.cache_images)
        return DataSetup(stream, validation, f"{len(files)} training images in {root}, {len(validation)} for validation")
    shards = list_shards(root)
    held_out = ""
    if not data.val_dir and len(shards) > 1 and data.val_fraction > 0:  # the last shard is held out
        # Its first images become validation files in the run folder (only the main process validates).
        scratch = output_dir / "validation_images"
        scratch.mkdir(parents=True, exist_ok=True)
        for index, (name, payload) in enumerate(iter_tar_images(shards[-1])):
            if index >= data.max_val_images or rank != 0:
                break
            target = scratch / f"{index:04d}{Path(name).suffix.lower()}"
            target.write_bytes(payload)
            validation.append(target)
        shards, held_out = shards[:-1], f" (last shard {shards[-1].name} held out for validation)"
    stream = ShardStream(shards, crop, data.batch_size, config.seed, rank, world_size, start_batch, data.shuffle_buffer)
    return DataSetup(stream, validation, f"{len(shards)} training shards in {root}{held_out}, {len(validation)} validation images")


@dataclass
class Progress:
    """Where the run stands: optimizer steps done, batches this process drew from its stream (the data
    position a resumed run continues from) and unreadable images skipped so far. Checkpointed with
    the run through accelerator.register_for_checkpointing."""

    step: int = 0
    batches: int = 0
    skipped_images: int = 0

    def state_dict(self) -> dict[str, int]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, int]) -> None:
        for name in asdict(self):
            setattr(self, name, int(state[name]))


def checkpoint_unwrapped_weights(accelerator: Accelerator) -> None:
    """Save and load the models' own weights (no DDP `module.` prefix), so that a run resumes on another
    number of processes: accelerate's save/load pre-hooks, its documented way to customise model loading."""
    from safetensors.torch import load_model

    def save_hook(models: list, weights: list, output_dir: str) -> None:
        for index, model in enumerate(models):
            weights[index] = accelerator.unwrap_model(model).state_dict()

    def load_hook(models: list, input_dir: str) -> None:
        for index, model in enumerate(models):
            name = "model.safetensors" if index == 0 else f"model_{index}.safetensors"
            load_model(accelerator.unwrap_model(model), os.path.join(input_dir, name))  # via CPU, copied in place
        models.clear()  # loaded: accelerate loads the rest (optimizers, schedulers, scaler, RNG, registered objects)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def clip_gradients(accelerator: Accelerator, model: torch.nn.Module, optimizer, max_norm: float) -> float:
    """Clip a model's gradient norm; returns the norm before clipping. Only this optimizer's fp16 gradients
    are unscaled first: accelerator.clip_grad_norm_ unscales every optimizer's, and each optimizer's step
    updates the shared GradScaler, so the other optimizer's gradients would be unscaled twice."""
    accelerator.unscale_gradients(optimizer)
    return float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))


def generator_losses(generator, discriminator, perceptual, images: torch.Tensor, config: TrainConfig,
                     adversarial: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The generator's weighted loss terms on a batch, and its reconstruction. `discriminator` is the
    unwrapped module: it only scores here, and the generator step must not train it."""
    output = generator(images)
    losses = {
        "reconstruction": reconstruction_loss(output.reconstruction, images, config.loss),
        "quantizer": config.loss.quantizer_weight * output.quantizer_loss.float(),
    }
    if perceptual is not None:
        losses["perceptual"] = config.loss.perceptual_weight * perceptual(output.reconstruction.float(), images)
    if adversarial:
        discriminator.requires_grad_(False)
        losses["generator_adversarial"] = config.loss.adversarial_weight * generator_adversarial_loss(
            discriminator(output.reconstruction), config.loss.adversarial_loss)
        discriminator.requires_grad_(True)
    return losses, output.reconstruction


def resolved_config(args: argparse.Namespace) -> TrainConfig:
    """The config file with the overrides and the command line's --data and --max-steps."""
    config = load_config(args.config, args.overrides)
    if args.data:
        config.data.path = args.data
    if args.max_steps is not None:
        if args.max_steps < 1:
            raise RunError(f"--max-steps {args.max_steps} must be >= 1")
        config.optim.max_steps = args.max_steps
    if not config.data.path:
        raise RunError("no training data: pass --data DIR")
    return config


def save_checkpoint(accelerator: Accelerator, output_dir: Path, step: int, facts: dict, keep: int) -> Path:
    """accelerator.save_state (the models, optimizers, schedulers, scaler, RNG and every object registered
    for checkpointing) into a folder that appears atomically, with a manifest (train.checkpointing)."""
    with checkpointing.staged(accelerator, output_dir, step, facts, keep) as partial:
        accelerator.save_state(str(partial))
    return checkpointing.step_directory(output_dir, step)


def load_checkpoint(accelerator: Accelerator, output_dir: Path, check=None) -> tuple[Path | None, dict, list[str]]:
    """accelerator.load_state from the newest checkpoint that verifies and loads, falling back past
    damaged ones: (its directory or None, its state.json, notes)."""
    return checkpointing.load_newest(output_dir, lambda directory: accelerator.load_state(str(directory)), check)


def resume(accelerator: Accelerator, output_dir: Path, config: TrainConfig, progress: Progress) -> None:
    """Resume from the newest usable checkpoint (saying which, and what it skipped)."""
    directory, state, notes = load_checkpoint(
        accelerator, output_dir, lambda path, saved: check_resumable(path, saved, config))
    if not accelerator.is_main_process:
        return
    for note in notes:
        print(f"warning: {note}", flush=True)
    if directory is None:
        print(f"no checkpoint in {checkpointing.checkpoint_root(output_dir)}; starting from step 0", flush=True)
        return
    print(f"resumed from step {progress.step} ({directory})", flush=True)
    keys = ("batch_size", "grad_accum_steps", "world_size")
    before, now = tuple(state.get(k) for k in keys), tuple(run_facts(config, accelerator.num_processes)[k] for k in keys)
    if before != now:
        print(f"warning: batch size / accumulation / world size changed from {before} to {now}: "
              "the data stream continues from a different position", flush=True)


def train(args: argparse.Namespace) -> int:
    """Run (or resume) training as the arguments say; returns the exit status."""
    from accelerate.utils import set_seed
    from torch.optim.lr_scheduler import LambdaLR
    from tqdm.auto import tqdm

    config = resolved_config(args)
    output_dir: Path = args.output_dir
    accelerator = make_accelerator(config, output_dir)
    is_main, rank, world_size = accelerator.is_main_process, accelerator.process_index, accelerator.num_processes
    prepare_output_dir(output_dir, args.resume, args.overwrite)
    accelerator.wait_for_everyone()
    if is_main:
        if args.overwrite:
            clear_output_dir(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=None))
        print(f"world_size={world_size} device={accelerator.device} distributed={accelerator.distributed_type.value} "
              f"mixed_precision={accelerator.mixed_precision}", flush=True)
        print("resolved config:\n" + yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=None), flush=True)
    accelerator.wait_for_everyone()

    # Models: identical initialisation on every process, then per-process randomness.
    torch.manual_seed(config.seed)
    generator = GSQTokenizer(config.tokenizer_config())
    if args.init_from and not (args.resume and checkpointing.resume_candidates(output_dir)[0]):
        load_initial_weights(generator, args.init_from, config)
        accelerator.print(f"initialised from {args.init_from}", flush=True)
    ema = make_ema(generator, config.optim.ema_decay, accelerator.device)
    use_adversarial = config.loss.adversarial_weight > 0
    discriminator = PatchDiscriminator(3, config.loss.disc_channels, config.loss.disc_layers) if use_adversarial else None
    perceptual, perceptual_note = build_perceptual(config)
    set_seed(config.seed + 1000 * (rank + 1))  # python, numpy and torch: all checkpointed by save_state

    # Optimizers and warm-up/decay schedules, prepared by accelerate (so save_state holds them too).
    def schedule(step: int) -> float:
        return lr_factor(step, config)

    optimizer_g = make_optimizer(generator, config.optim.lr, config)
    generator, optimizer_g, scheduler_g = accelerator.prepare(generator, optimizer_g, LambdaLR(optimizer_g, schedule))
    models, schedulers = [generator], [scheduler_g]
    optimizer_d = raw_discriminator = None
    if discriminator is not None:
        optimizer_d = make_optimizer(discriminator, config.optim.disc_lr or config.optim.lr, config)
        discriminator, optimizer_d, scheduler_d = accelerator.prepare(discriminator, optimizer_d, LambdaLR(optimizer_d, schedule))
        models, schedulers = [generator, discriminator], [scheduler_g, scheduler_d]
        raw_discriminator = accelerator.unwrap_model(discriminator)
        # Its schedule follows the generator's steps from step 0; it trains only from loss.disc_start.
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`")
    device = accelerator.device
    if perceptual is not None:
        perceptual.to(device)
    progress = Progress()
    accelerator.register_for_checkpointing(ema, progress)
    checkpoint_unwrapped_weights(accelerator)
    if args.resume:
        resume(accelerator, output_dir, config, progress)
    accum = config.optim.grad_accum_steps
    accelerator.step = progress.step * accum  # accumulate() syncs every accum-th micro-batch from here

    data = build_data(config, rank, world_size, start_batch=progress.batches, output_dir=output_dir)
    loader = torch.utils.data.DataLoader(
        data.stream, batch_size=None, num_workers=config.data.num_workers,
        pin_memory=device.type == "cuda", persistent_workers=config.data.num_workers > 0,
        generator=torch.Generator().manual_seed(config.seed),  # its worker seed draw leaves the restored RNG alone
    )
    accelerator.init_trackers(run_log.RUN_NAME)
    val_images = torch.empty(0)
    if is_main:
        val_images, _ = load_validation_images(data.validation, config.data.val_size)
        parameters = sum(p.numel() for p in ema.module.parameters())
        print(f"model: {config_summary(ema.module.config)}, {parameters:,} parameters", flush=True)
        print(f"data: {data.description}", flush=True)
        print(perceptual_note, flush=True)
        print("adversarial loss: " + (f"{config.loss.adversarial_loss}, weight {config.loss.adversarial_weight}, "
              f"from step {config.loss.disc_start}" if use_adversarial else "off (loss.adversarial_weight is 0)"), flush=True)
        print(run_log.describe(output_dir / "logs"), flush=True)
        if not val_images.shape[0]:
            print("validation: off (no validation images)", flush=True)

    def validate(at_step: int) -> None:
        if is_main and val_images.shape[0]:
            metrics, recon = evaluate(ema.module, val_images, batch_size=config.data.batch_size)
            grid = save_grid(output_dir / "samples" / f"step_{at_step:08d}.png", val_images, recon, config.log.num_grid_images)
            accelerator.log({f"val/{k}": v for k, v in metrics.items()}, step=at_step)
            print(f"step {at_step} validation (EMA, {val_images.shape[0]} images): PSNR {metrics['psnr']:.2f} dB "
                  f"SSIM {metrics['ssim']:.4f} usage {metrics['codebook_usage']:.3f} perplexity {metrics['perplexity']:.1f} "
                  f"grid {grid}", flush=True)
        accelerator.wait_for_everyone()

    # -- the loop ------------------------------------------------------------------------------------
    max_steps, start_step, run_start = config.optim.max_steps, progress.step, time.time()
    progress_bar = tqdm(total=max_steps, initial=progress.step, disable=not is_main, desc="train", dynamic_ncols=True,
                        mininterval=0.1 if sys.stderr.isatty() else 30.0)
    batches = iter(loader)
    window: dict[str, float] = {}
    window_steps, window_start, window_skipped = 0, time.time(), 0
    generator.train()
    while progress.step < max_steps:
        adversarial = use_adversarial and adversarial_active(progress.step, config.loss)
        for _ in range(accum):
            batch = next(batches)
            progress.batches += 1
            window_skipped += int(batch["skipped"])
            images = batch["images"].to(device, non_blocking=True)
            with accelerator.accumulate(*models):
                with accelerator.autocast():
                    losses, reconstruction = generator_losses(generator, raw_discriminator, perceptual, images, config, adversarial)
                accelerator.backward(sum(losses.values()))
                if adversarial:
                    with accelerator.autocast():
                        losses["discriminator"] = discriminator_loss(
                            discriminator(images), discriminator(reconstruction.detach()), config.loss.adversarial_loss)
                    accelerator.backward(losses["discriminator"])
                if accelerator.sync_gradients and config.optim.grad_clip > 0:
                    norm = clip_gradients(accelerator, generator, optimizer_g, config.optim.grad_clip)
                    window["grad_norm"] = window.get("grad_norm", 0.0) + norm
                optimizer_g.step()
                optimizer_g.zero_grad(set_to_none=True)
                if adversarial:
                    if accelerator.sync_gradients and config.optim.grad_clip > 0:
                        clip_gradients(accelerator, discriminator, optimizer_d, config.optim.grad_clip)
                    optimizer_d.step()
                    optimizer_d.zero_grad(set_to_none=True)
            for name, value in losses.items():
                window[name] = window.get(name, 0.0) + float(value.detach()) / accum
        lr = scheduler_g.get_last_lr()[0]
        for scheduler in schedulers:
            scheduler.step()
        ema.update_parameters(accelerator.unwrap_model(generator))
        progress.step += 1
        progress_bar.update(1)
        window_steps += 1

        if progress.step % config.log.every == 0 or progress.step == max_steps:
            names = sorted(window)
            reduced = accelerator.reduce(torch.tensor([window[n] / window_steps for n in names], device=device), "mean")
            skipped = int(accelerator.reduce(torch.tensor([window_skipped], device=device), "sum").item())
            progress.skipped_images += skipped
            values = {f"train/{n}": float(v) for n, v in zip(names, reduced.tolist())}
            values["train/lr"] = lr
            values["train/images_per_second"] = (window_steps * accum * config.data.batch_size * world_size
                                                 / max(1e-9, time.time() - window_start))
            values["data/skipped_images"] = progress.skipped_images
            accelerator.log(values, step=progress.step)
            if is_main:
                progress_bar.set_postfix(rec=f"{values.get('train/reconstruction', 0):.4f}",
                                         ips=f"{values['train/images_per_second']:.1f}")
                if skipped:
                    print(f"warning: {skipped} unreadable images skipped in the last {window_steps} steps "
                          f"({progress.skipped_images} in total)", flush=True)
            window, window_steps, window_start, window_skipped = {}, 0, time.time(), 0
        if progress.step % config.log.val_every == 0 and progress.step < max_steps:
            validate(progress.step)
        if progress.step % config.log.checkpoint_every == 0 or progress.step == max_steps:
            save_checkpoint(accelerator, output_dir, progress.step, run_facts(config, world_size),
                               config.log.keep_checkpoints)
    progress_bar.close()
    # -- end of the loop -----------------------------------------------------------------------------
    validate(progress.step)

    if is_main:
        final = ema.module.save(output_dir / FINAL_MODEL, overwrite=True)
        trained, seconds = progress.step - start_step, time.time() - run_start
        rate = trained * accum * config.data.batch_size * world_size / seconds if trained else 0.0
        print(f"trained {trained} steps in {seconds:.1f} s ({rate:.1f} images/s); step {progress.step} of {max_steps}")
        print(f"unreadable images skipped: {progress.skipped_images}")
        print(f"final EMA model: {final}", flush=True)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry: one-line errors for bad configs, data and checkpoints."""
    args = parse_args(argv)
    warnings.formatwarning = lambda message, category, *rest, **kw: f"warning: {message}\n"
    try:
        return train(args)
    except (GSQError, DataError, FileExistsError) as error:
        # Every process of a launch meets the same config, output folder and checkpoints, so those
        # errors are printed once (by rank 0); data errors can differ per process and say which.
        rank = int(os.environ.get("RANK", "0") or 0)
        if isinstance(error, DataError) and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
            print(f"error: [process {rank}] {error}", file=sys.stderr, flush=True)
        elif rank == 0:
            print(f"error: {error}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
