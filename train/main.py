"""Train a GSQ tokenizer (GSQ-GAN recipe) with accelerate, on one CPU or many GPUs.

    accelerate launch train/main.py --config train/configs/smoke.yaml --data DIR --output-dir DIR \
        [--max-steps N] [--resume] [--overwrite] [section.key=value ...]

Writes <output-dir>/checkpoints/ (full training state, every log.checkpoint_every steps),
<output-dir>/logs/, <output-dir>/samples/ (validation grids) and, at the end,
<output-dir>/model.safetensors: the EMA generator in gsq_core's native format.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the `train` package from the repository root
    _ROOT = Path(__file__).resolve().parents[1]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _ROOT / "train"]
    sys.path.insert(0, str(_ROOT))

import argparse
import contextlib
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass

from gsq_core.extras import missing_package_message

try:
    import torch
    import yaml
except ImportError as _missing:  # one line naming the extra, not a ModuleNotFoundError traceback
    sys.exit(f"error: {missing_package_message(_missing.name or 'torch', 'train', 'train/main.py')}")

from gsq_core.checkpoint import config_summary
from gsq_core.errors import CheckpointError, GSQError
from gsq_core.model import GSQTokenizer
from train import checkpointing
from train.config import TrainConfig, load_config
from train.data import (CropSpec, DataError, FolderStream, ShardStream, iter_tar_images, list_images, list_shards,
                        split_validation)
from train.discriminator import PatchDiscriminator
from train.ema import EMA
from train.losses import adversarial_active, discriminator_loss, generator_adversarial_loss, reconstruction_loss
from train.run_log import RunLog
from train.validation import evaluate, load_validation_images, save_grid

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


def make_accelerator(config: TrainConfig):
    """Accelerator on the configured device; multi-process runs without a GPU use gloo on CPU."""
    from gsq_core.extras import require

    require("accelerate", "train", "train/main.py")  # one error line, not a traceback, without it
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    cpu = config.optim.device == "cpu" or (config.optim.device == "auto" and not has_accelerator_device())
    precision = config.optim.mixed_precision
    note = None
    if cpu and precision == "fp16":
        note = "mixed precision fp16 needs a GPU; training in fp32 on CPU (bf16 works on CPU)"
        precision = "no"
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=precision,
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


def check_resumable(loaded: checkpointing.LoadedState, generator: GSQTokenizer, config: TrainConfig) -> None:
    """RunError when the checkpoint is of another model (a user mistake: no fallback); CheckpointError
    when its weights do not fit the model it records (damage: the caller tries an older checkpoint)."""
    from gsq_core.checkpoint import weight_problems

    if not same_model(loaded.state.get("model_config"), config):
        raise RunError(f"{loaded.directory}: the checkpoint's model differs from the config's model; "
                       "resume with the same model config")
    expected = {key: tuple(value.shape) for key, value in generator.state_dict().items()}
    for name, tensors in (("generator", loaded.generator), ("ema", loaded.ema)):
        problems = weight_problems(expected, {key: tuple(value.shape) for key, value in tensors.items()})
        if problems:
            raise CheckpointError(f"{loaded.directory / (name + '.safetensors')}: " + "; ".join(problems))


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
    from train.perceptual import LPIPS

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


def save_checkpoint(accelerator, output_dir: Path, step: int, generator, discriminator, ema: EMA,
                    optimizers: dict, facts: dict, keep: int) -> None:
    """Write the full training state for `step` (all processes take part), then publish it atomically."""
    partial = checkpointing.partial_directory(output_dir, step)
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    checkpointing.write_json(partial / f"rng_rank{accelerator.process_index}.json", checkpointing.rng_state())
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        checkpointing.save_tensors(partial / "generator.safetensors", accelerator.unwrap_model(generator).state_dict())
        checkpointing.save_tensors(partial / "ema.safetensors", ema.state_tensors())
        if discriminator is not None:
            checkpointing.save_tensors(partial / "discriminator.safetensors", accelerator.unwrap_model(discriminator).state_dict())
        for name, optimizer in optimizers.items():
            checkpointing.save_torch_state(partial / f"optimizer_{name}.pt", optimizer.state_dict())
        checkpointing.write_json(partial / checkpointing.STATE, {**facts, "step": step, "ema_updates": ema.updates})
        checkpointing.publish(output_dir, step, keep)
    accelerator.wait_for_everyone()


def train(args: argparse.Namespace) -> int:
    """Run (or resume) training as the arguments say; returns the exit status."""
    config = load_config(args.config, args.overrides)
    if args.data:
        config.data.path = args.data
    if args.max_steps is not None:
        if args.max_steps < 1:
            raise RunError(f"--max-steps {args.max_steps} must be >= 1")
        config.optim.max_steps = args.max_steps
    if not config.data.path:
        raise RunError("no training data: pass --data DIR")

    accelerator = make_accelerator(config)
    is_main, rank, world_size = accelerator.is_main_process, accelerator.process_index, accelerator.num_processes
    output_dir: Path = args.output_dir
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
    eval_model = GSQTokenizer(config.tokenizer_config())
    loaded, resume_notes = (None, [])
    if args.resume:  # the newest checkpoint that reads, falling back past damaged ones (and saying so)
        loaded, resume_notes = checkpointing.load_resume_state(
            output_dir, rank, lambda state: check_resumable(state, generator, config))
    if is_main:
        for note in resume_notes:
            print(f"warning: {note}", flush=True)
    if args.init_from and loaded is None:
        load_initial_weights(generator, args.init_from, config)
        if is_main:
            print(f"initialised from {args.init_from}", flush=True)
    ema = EMA(generator, config.optim.ema_decay)
    use_adversarial = config.loss.adversarial_weight > 0
    discriminator = PatchDiscriminator(3, config.loss.disc_channels, config.loss.disc_layers) if use_adversarial else None
    perceptual, perceptual_note = build_perceptual(config)
    torch.manual_seed(config.seed + 1000 * (rank + 1))

    optimizer_g = make_optimizer(generator, config.optim.lr, config)
    optimizer_d = make_optimizer(discriminator, config.optim.disc_lr or config.optim.lr, config) if discriminator else None

    step, skipped_total, facts_before = 0, 0, {}
    if args.resume and loaded is None and is_main:
        print(f"no checkpoint in {checkpointing.checkpoint_root(output_dir)}; starting from step 0", flush=True)
    if loaded is not None:
        resume_dir = loaded.directory
        facts_before = loaded.state
        generator.load_state_dict(loaded.generator)
        ema.load_state_tensors(loaded.ema, int(facts_before.get("ema_updates", 0)))
        optimizer_g.load_state_dict(loaded.optimizer_generator)
        if discriminator is not None:
            if loaded.discriminator is None or loaded.optimizer_discriminator is None:
                raise RunError(f"{resume_dir}: has no discriminator state, but the config trains one")
            try:
                discriminator.load_state_dict(loaded.discriminator)
                optimizer_d.load_state_dict(loaded.optimizer_discriminator)
            except (RuntimeError, ValueError, KeyError) as error:
                raise RunError(f"{resume_dir}: its discriminator does not match the config's ({str(error).splitlines()[0]})") from None
        if loaded.rng is not None:
            checkpointing.restore_rng_state(loaded.rng)
        step = int(facts_before["step"])
        skipped_total = int(facts_before.get("skipped_images", 0))
        per_step = (config.data.batch_size, config.optim.grad_accum_steps, world_size)
        before = (facts_before.get("batch_size"), facts_before.get("grad_accum_steps"), facts_before.get("world_size"))
        if is_main:
            print(f"resumed from step {step} ({resume_dir})", flush=True)
            if before != per_step:
                print(f"warning: batch size / accumulation / world size changed from {before} to {per_step}: "
                      "the data stream continues from a different position", flush=True)

    if discriminator is not None:
        generator, discriminator, optimizer_g, optimizer_d = accelerator.prepare(generator, discriminator, optimizer_g, optimizer_d)
    else:
        generator, optimizer_g = accelerator.prepare(generator, optimizer_g)
    device = accelerator.device
    ema.shadow = {k: v.to(device) for k, v in ema.shadow.items()}
    eval_model.to(device)
    if perceptual is not None:
        perceptual.to(device)
    raw_generator = accelerator.unwrap_model(generator)
    raw_discriminator = accelerator.unwrap_model(discriminator) if discriminator is not None else None

    accum = config.optim.grad_accum_steps
    data = build_data(config, rank, world_size, start_batch=step * accum, output_dir=output_dir)
    loader = torch.utils.data.DataLoader(
        data.stream, batch_size=None, num_workers=config.data.num_workers,
        pin_memory=device.type == "cuda", persistent_workers=config.data.num_workers > 0,
    )
    run_log = RunLog(output_dir / "logs", enabled=is_main)
    val_images = torch.empty(0)
    if is_main:
        val_images, _ = load_validation_images(data.validation, config.data.val_size)
        parameters = sum(p.numel() for p in raw_generator.parameters())
        print(f"model: {config_summary(raw_generator.config)}, {parameters:,} parameters", flush=True)
        print(f"data: {data.description}", flush=True)
        print(perceptual_note, flush=True)
        print("adversarial loss: " + (f"{config.loss.adversarial_loss}, weight {config.loss.adversarial_weight}, "
              f"from step {config.loss.disc_start}" if use_adversarial else "off (loss.adversarial_weight is 0)"), flush=True)
        print(run_log.describe(), flush=True)
        if not val_images.shape[0]:
            print("validation: off (no validation images)", flush=True)

    facts = {
        "batch_size": config.data.batch_size, "grad_accum_steps": accum, "world_size": world_size,
        "num_workers": config.data.num_workers, "model_config": config.tokenizer_config().to_dict(),
    }
    optimizers = {"generator": optimizer_g} | ({"discriminator": optimizer_d} if optimizer_d is not None else {})

    def validate_and_log(at_step: int) -> None:
        if is_main and val_images.shape[0]:
            ema.copy_to(eval_model)
            metrics, recon = evaluate(eval_model, val_images, batch_size=config.data.batch_size)
            grid = save_grid(output_dir / "samples" / f"step_{at_step:08d}.png", val_images, recon, config.log.num_grid_images)
            run_log.write(at_step, {f"val/{k}": v for k, v in metrics.items()})
            accelerator.print(
                f"step {at_step} validation (EMA, {val_images.shape[0]} images): PSNR {metrics['psnr']:.2f} dB "
                f"SSIM {metrics['ssim']:.4f} usage {metrics['codebook_usage']:.3f} perplexity {metrics['perplexity']:.1f} "
                f"grid {grid}"
            )
        accelerator.wait_for_everyone()

    from tqdm.auto import tqdm

    progress = tqdm(total=config.optim.max_steps, initial=step, disable=not is_main, desc="train", dynamic_ncols=True,
                    mininterval=0.1 if sys.stderr.isatty() else 30.0)
    batches = iter(loader)
    window: dict[str, float] = {}
    window_steps, window_start, window_skipped = 0, time.time(), 0
    run_start, start_step = time.time(), step
    generator.train()
    while step < config.optim.max_steps:
        factor = lr_factor(step, config)
        for group in optimizer_g.param_groups:
            group["lr"] = config.optim.lr * factor
        adversarial = use_adversarial and adversarial_active(step, config.loss)
        if optimizer_d is not None:
            for group in optimizer_d.param_groups:
                group["lr"] = (config.optim.disc_lr or config.optim.lr) * factor
        terms: dict[str, float] = {}
        for micro in range(accum):
            batch = next(batches)
            images = batch["images"].to(device, non_blocking=True)
            window_skipped += int(batch["skipped"])
            syncing = micro == accum - 1
            with contextlib.nullcontext() if syncing else accelerator.no_sync(generator):
                with accelerator.autocast():
                    output = generator(images)
                    losses = {
                        "reconstruction": reconstruction_loss(output.reconstruction, images, config.loss),
                        "quantizer": config.loss.quantizer_weight * output.quantizer_loss.float(),
                    }
                    if perceptual is not None:
                        losses["perceptual"] = config.loss.perceptual_weight * perceptual(output.reconstruction.float(), images)
                    if adversarial:
                        raw_discriminator.requires_grad_(False)  # the generator step must not train D
                        logits = raw_discriminator(output.reconstruction)
                        losses["generator_adversarial"] = config.loss.adversarial_weight * generator_adversarial_loss(
                            logits, config.loss.adversarial_loss)
                    total = sum(losses.values())
                accelerator.backward(total / accum)
            if adversarial:
                raw_discriminator.requires_grad_(True)
                with contextlib.nullcontext() if syncing else accelerator.no_sync(discriminator):
                    with accelerator.autocast():
                        real_logits = discriminator(images)
                        fake_logits = discriminator(output.reconstruction.detach())
                        losses["discriminator"] = discriminator_loss(real_logits, fake_logits, config.loss.adversarial_loss)
                    accelerator.backward(losses["discriminator"] / accum)
            for name, value in losses.items():
                terms[name] = terms.get(name, 0.0) + float(value.detach()) / accum
        if config.optim.grad_clip > 0:
            terms["grad_norm"] = float(accelerator.clip_grad_norm_(generator.parameters(), config.optim.grad_clip))
        optimizer_g.step()
        optimizer_g.zero_grad(set_to_none=True)
        if adversarial:
            if config.optim.grad_clip > 0:
                accelerator.clip_grad_norm_(discriminator.parameters(), config.optim.grad_clip)
            optimizer_d.step()
            optimizer_d.zero_grad(set_to_none=True)
        ema.update(raw_generator)
        step += 1
        progress.update(1)
        for name, value in terms.items():
            window[name] = window.get(name, 0.0) + value
        window_steps += 1

        if step % config.log.every == 0 or step == config.optim.max_steps:
            names = sorted(window)
            reduced = accelerator.reduce(torch.tensor([window[n] / window_steps for n in names], device=device), "mean")
            skipped = int(accelerator.reduce(torch.tensor([window_skipped], device=device), "sum").item())
            skipped_total += skipped
            elapsed = max(1e-9, time.time() - window_start)
            values = {f"train/{n}": float(v) for n, v in zip(names, reduced.tolist())}
            values["train/lr"] = config.optim.lr * factor
            values["train/images_per_second"] = window_steps * accum * config.data.batch_size * world_size / elapsed
            values["data/skipped_images"] = skipped_total
            run_log.write(step, values)
            if is_main:
                progress.set_postfix(rec=f"{values.get('train/reconstruction', 0):.4f}",
                                     ips=f"{values['train/images_per_second']:.1f}")
                if skipped:
                    print(f"warning: {skipped} unreadable images skipped in the last {window_steps} steps "
                          f"({skipped_total} in total)", flush=True)
            window, window_steps, window_start, window_skipped = {}, 0, time.time(), 0
        if step % config.log.val_every == 0 and step < config.optim.max_steps:
            validate_and_log(step)
        if step % config.log.checkpoint_every == 0 or step == config.optim.max_steps:
            save_checkpoint(accelerator, output_dir, step, generator, discriminator, ema, optimizers,
                            {**facts, "skipped_images": skipped_total}, config.log.keep_checkpoints)
    progress.close()
    validate_and_log(step)

    if is_main:
        ema.copy_to(eval_model)
        final = eval_model.save(output_dir / FINAL_MODEL, overwrite=True)
        trained = step - start_step
        seconds = time.time() - run_start
        rate = trained * accum * config.data.batch_size * world_size / seconds if trained else 0.0
        print(f"trained {trained} steps in {seconds:.1f} s ({rate:.1f} images/s); step {step} of {config.optim.max_steps}")
        print(f"unreadable images skipped: {skipped_total}")
        print(f"final EMA model: {final}", flush=True)
    run_log.close()
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
