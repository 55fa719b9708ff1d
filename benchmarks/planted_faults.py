"""Planted faults: each one a small patch that must turn the test suite red (issue 11).

    python -m benchmarks.planted_faults [--only NAME ...] [--baseline] [--json out/planted_faults.json]
    python -m benchmarks.planted_faults --list

For every fault in FAULTS: copy the repository's files (tracked and untracked, not ignored) into a
fresh temporary folder, replace the fault's original snippet by the faulty one there (the snippet
must occur exactly once), and run the fault's test selection with `python -m pytest -x` in that copy
(PYTHONPATH points at the copy, so test subprocesses import the patched code too). The working tree
is never touched, so an interrupted run cannot leave a fault behind.

A fault is *red* when pytest reports failed tests (exit status 1), *green* when the selection
passes (the suite misses the fault), *error* for anything else (a collection error, a timeout, no
tests): errors do not count as caught. --baseline first runs every selection once unpatched, which
must pass. Prints a table and writes a JSON report; exits 0 only when every fault is red (and the
baseline green). The selections are subsets of `python -m pytest`, so red here means the suite is red.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Fault:
    """One planted bug: where, the exact text it replaces, and the tests that must catch it."""

    name: str
    what: str  # the bug, in words
    file: str  # relative to the repository root
    original: str  # must occur exactly once in the file
    faulty: str
    tests: tuple[str, ...]  # pytest node ids or files: the selection that must go red


FAULTS: tuple[Fault, ...] = (
    # -- runtimes: what users run -------------------------------------------------------------------------
    Fault(
        "runtime-latent-off-1e-3",
        "every runtime's encode_latent returns the latent off by a relative 1e-3",
        "runtimes/base.py",
        'return run_in_chunks(lambda chunk: self.run_graph("encoder", chunk), images, limit)',
        'return run_in_chunks(lambda chunk: self.run_graph("encoder", chunk), images, limit) * np.float32(1.001)',
        ("tests/runtimes/test_runtime_conformance.py",),
    ),
    Fault(
        "onnx-graph-output-off-1e-3",
        "the ONNX runtime's run_graph scales every float output by 1 + 1e-3 (what validation runs too)",
        "runtimes/onnx.py",
        "return run_in_chunks(run, value, self._lookup_batch_limit(name, value))",
        "out = run_in_chunks(run, value, self._lookup_batch_limit(name, value))\n"
        "        return out * np.float32(1.001) if out.dtype == np.float32 else out",
        ("tests/runtimes/test_runtime_conformance.py",),
    ),
    Fault(
        "runtime-codes-groups-permuted",
        "the runtimes' encode returns each position's G codes in reverse group order",
        "runtimes/base.py",
        'return self.run_graph("tokenize", images)',
        'return np.ascontiguousarray(self.run_graph("tokenize", images)[..., ::-1])',
        ("tests/runtimes/test_runtime_conformance.py",),
    ),
    Fault(
        "runtime-codes-positions-permuted",
        "the runtimes' encode returns the token grid mirrored left to right",
        "runtimes/base.py",
        'return self.run_graph("tokenize", images)',
        'return np.ascontiguousarray(self.run_graph("tokenize", images)[:, :, ::-1])',
        ("tests/runtimes/test_runtime_conformance.py",),
    ),
    # -- the exported graphs --------------------------------------------------------------------------------
    Fault(
        "graph-codes-groups-permuted",
        "the exported quantizer / tokenize graphs emit each position's G codes in reverse group order",
        "exporters/graphs.py",
        "return flat_codes.reshape(batch, height, width, self.num_group)",
        "return flat_codes.reshape(batch, height, width, self.num_group).flip(-1)",
        ("tests/runtimes/test_runtime_conformance.py",),
    ),
    Fault(
        "graph-codes-positions-permuted",
        "the exported quantizer / tokenize graphs emit the token grid mirrored left to right",
        "exporters/graphs.py",
        "return flat_codes.reshape(batch, height, width, self.num_group)",
        "return flat_codes.reshape(batch, height, width, self.num_group).flip(2)",
        ("tests/runtimes/test_runtime_conformance.py",),
    ),
    Fault(
        "graph-decode-groups-permuted",
        "the exported decoder reads each position's G codebook rows in reverse group order",
        "exporters/graphs.py",
        "vectors = vectors.flatten(3)",
        "vectors = vectors.flip(3).flatten(3)",
        ("tests/runtimes/test_runtime_conformance.py",),
    ),
    # -- the eager reference --------------------------------------------------------------------------------
    Fault(
        "eager-codes-groups-permuted",
        "the eager quantizer returns each position's G codes in reverse group order",
        "gsq_core/quantizers.py",
        "codes = flat_codes.reshape(batch, height, width, self.num_group)",
        "codes = flat_codes.reshape(batch, height, width, self.num_group).flip(-1)",
        ("tests/gsq_core/test_conformance.py",),
    ),
    Fault(
        "eager-codes-positions-permuted",
        "the eager quantizer returns the token grid mirrored left to right",
        "gsq_core/quantizers.py",
        "codes = flat_codes.reshape(batch, height, width, self.num_group)",
        "codes = flat_codes.reshape(batch, height, width, self.num_group).flip(2)",
        ("tests/gsq_core/test_conformance.py",),
    ),
    Fault(
        "eager-decode-groups-permuted",
        "the eager quantizer's codes_to_latent puts the G groups' rows in reverse order",
        "gsq_core/quantizers.py",
        "return self._merge_groups(self.codebook(codes.long()))",
        "return self._merge_groups(self.codebook(codes.long()).flip(-2))",
        ("tests/gsq_core/test_conformance.py",),
    ),
    # -- the window lookup of the exported graphs (exporters/lookup_graph.py, issue 18) -------------------------
    Fault(
        "lookup-key-relative-error-zero",
        "d = 2 cell edges are not widened for the graph's rounding of t = min/max (KEY_RELATIVE_ERROR = 0)",
        "exporters/lookup_graph.py",
        "KEY_RELATIVE_ERROR = 2.0**-20",
        "KEY_RELATIVE_ERROR = 0.0",
        ("tests/exporters/test_lookup_graph_cells.py",),
    ),
    Fault(
        "lookup-key-and-angle-slack-zero",
        "no key allowance and no float64 angle slack (KEY_RELATIVE_ERROR = 0, ANGLE_SLACK = 0)",
        "exporters/lookup_graph.py",
        "KEY_RELATIVE_ERROR = 2.0**-20\nKEY_SLACK = 2.0**-18  # d = 1: absolute key error allowed, relative to "
        "|offset| + |span|\nANGLE_SLACK = 1e-9",
        "KEY_RELATIVE_ERROR = 0.0\nKEY_SLACK = 2.0**-18  # d = 1: absolute key error allowed, relative to "
        "|offset| + |span|\nANGLE_SLACK = 0.0",
        ("tests/exporters/test_lookup_graph_cells.py",),
    ),
    Fault(
        "lookup-key-slack-zero",
        "d = 1 cell edges are not widened for the graph's rounding of (u - offset) * scale (KEY_SLACK = 0)",
        "exporters/lookup_graph.py",
        "KEY_SLACK = 2.0**-18",
        "KEY_SLACK = 0.0",
        ("tests/exporters/test_lookup_graph_cells.py",),
    ),
    Fault(
        "lookup-window-one-short",
        "every cell's window counts one code less (the longest windows lose their last code)",
        "exporters/lookup_graph.py",
        "count = np.minimum(last - first + 1, codes)",
        "count = np.minimum(last - first, codes)",
        ("tests/exporters/test_lookup_graph_edges.py::test_exported_window_lookup_matches_the_fp32_brute_force[2-1024-onnxruntime]", "tests/exporters/test_lookup_graph_cells.py"),
    ),
    Fault(
        "lookup-table-rows-one-short",
        "the window tables' rows are one code shorter than the longest window",
        "exporters/lookup_graph.py",
        "width = window + stride - 1",
        "width = window + stride - 2",
        ("tests/exporters/test_lookup_graph_edges.py::test_exported_window_lookup_matches_the_fp32_brute_force[2-1024-onnxruntime]", "tests/exporters/test_lookup_graph_cells.py"),
    ),
    Fault(
        "lookup-circle-window-starts-late",
        "d = 2 windows start at the first code after the cell's lower edge, not the last one before it",
        "exporters/lookup_graph.py",
        'first = np.searchsorted(tiled, lo, side="right") - 1',
        'first = np.searchsorted(tiled, lo, side="right")',
        ("tests/exporters/test_lookup_graph_edges.py::test_exported_window_lookup_matches_the_fp32_brute_force[2-1024-onnxruntime]", "tests/exporters/test_lookup_graph_cells.py"),
    ),
    Fault(
        "lookup-line-window-starts-late",
        "d = 1 windows start at the first code after the cell's lower edge",
        "exporters/lookup_graph.py",
        'first = np.maximum(np.searchsorted(keys, a, side="right") - 1, 0)',
        'first = np.maximum(np.searchsorted(keys, a, side="right"), 0)',
        ("tests/exporters/test_lookup_graph_edges.py::test_exported_window_lookup_matches_the_fp32_brute_force[1-1024-onnxruntime]", "tests/exporters/test_lookup_graph_cells.py"),
    ),
    Fault(
        "lookup-line-window-ends-early",
        "d = 1 windows end at the last code before the cell's upper edge, not the first one after it",
        "exporters/lookup_graph.py",
        'last = np.minimum(np.searchsorted(keys, b, side="left"), codes - 1)',
        'last = np.minimum(np.searchsorted(keys, b, side="left") - 1, codes - 1)',
        ("tests/exporters/test_lookup_graph_edges.py::test_exported_window_lookup_matches_the_fp32_brute_force[1-1024-onnxruntime]", "tests/exporters/test_lookup_graph_cells.py"),
    ),
    Fault(
        "lookup-circle-rows-do-not-wrap",
        "table rows that cross +-pi repeat the last code instead of wrapping to the first",
        "exporters/lookup_graph.py",
        "positions = positions % codes  # the circle wraps",
        "positions = np.minimum(positions, codes - 1)  # the circle wraps",
        ("tests/exporters/test_lookup_graph_edges.py::test_exported_window_lookup_matches_the_fp32_brute_force[2-1024-onnxruntime]", "tests/exporters/test_lookup_graph_cells.py"),
    ),
    Fault(
        "lookup-cell-index-rounds-up",
        "the graph's cell index rounds the key up (ceil) instead of down: one cell off except on exact edges",
        "exporters/lookup_graph.py",
        "return (first + z.floor()).long(), larger == 0",
        "return torch.minimum(first + z.ceil(), first + self.cells_per_octant - 1).long(), larger == 0",
        ("tests/exporters/test_lookup_graph_edges.py::test_exported_window_lookup_matches_the_fp32_brute_force[2-1024-onnxruntime]", "tests/exporters/test_lookup_graph_cells.py"),
    ),
    # -- reduced precision: the lookup stays fp32 -------------------------------------------------------------
    Fault(
        "fp16-lookup-in-fp16",
        "the fp16 ONNX build converts the lookup to fp16 too (no node kept fp32)",
        "exporters/onnx_precision.py",
        "onnx.save(convert_fp16(proto, keep), str(target_path))",
        "onnx.save(convert_fp16(proto, []), str(target_path))",
        ("tests/exporters/test_targets_onnx_precision.py::test_fp16_keeps_the_lookup_fp32_and_the_rest_fp16",),
    ),
    Fault(
        "int8-lookup-quantized",
        "the int8 ONNX build quantizes the lookup's MatMul too (nothing excluded from QDQ)",
        "exporters/onnx_precision.py",
        "nodes_to_exclude=keep_fp32,",
        "nodes_to_exclude=[],",
        ("tests/exporters/test_targets_onnx_precision.py::test_int8_quantizes_convolutions_but_not_the_lookup",),
    ),
    Fault(
        "lookup-graph-in-encoder-precision",
        "the precision plan gives the quantizer graph (the lookup alone) the encoder's precision, so it is "
        "validated with reduced-precision tolerances (was: require_exact_lookup a no-op)",
        "exporters/precision.py",
        "return LOOKUP_PRECISION if part is None else self.for_part(part)",
        "return self.encoder if part is None else self.for_part(part)",
        ("tests/exporters/test_targets_onnx_precision.py::test_the_lookup_graph_is_held_to_fp32_in_every_precision",),
    ),
    # -- images -----------------------------------------------------------------------------------------------
    Fault(
        "images-red-blue-swapped",
        "8-bit RGB image files are read with R and B swapped",
        "gsq_core/images.py",
        'if mode == "RGB":\n        return np.asarray(image, dtype=np.uint8)',
        'if mode == "RGB":\n        return np.ascontiguousarray(np.asarray(image, dtype=np.uint8)[..., ::-1])',
        ("tests/gsq_core/test_hostile_images.py::test_channels_are_red_green_blue_in_that_order",),
    ),
    Fault(
        "pixels-red-blue-swapped",
        "uint8_to_float (every 8-bit image, every mode) swaps R and B",
        "gsq_core/images.py",
        "return (pixels.astype(np.float32) / np.float32(127.5) - np.float32(1.0)).transpose(2, 0, 1).copy()",
        "return (pixels.astype(np.float32) / np.float32(127.5) - np.float32(1.0)).transpose(2, 0, 1)[::-1].copy()",
        ("tests/gsq_core/test_hostile_images.py::test_channels_are_red_green_blue_in_that_order",),
    ),
    # -- checkpoints and training -----------------------------------------------------------------------------
    Fault(
        "native-save-tensors-differ",
        "the native checkpoint saves every float tensor scaled by 1 + 1e-3 (tokens may still agree)",
        "gsq_core/checkpoint.py",
        'tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}',
        'tensors = {k: (v * 1.001 if v.is_floating_point() else v).detach().to("cpu").contiguous() '
        "for k, v in model.state_dict().items()}",
        ("tests/gsq_core/test_checkpoint.py::test_native_round_trip_gives_identical_tokens",),
    ),
    Fault(
        "ibq-quant-convs-swapped",
        "the IBQ key map sends upstream's quant_conv to our decoder's post_quant_conv and back",
        "gsq_core/checkpoint_ibq.py",
        '("quant_conv.", "encoder.quant_conv."),\n    ("post_quant_conv.", "decoder.post_quant_conv."),',
        '("quant_conv.", "decoder.post_quant_conv."),\n    ("post_quant_conv.", "encoder.quant_conv."),',
        ("tests/gsq_core/test_ibq.py::test_latent_tokens_and_decode_match_upstream",),
    ),
    Fault(
        "ibq-ema-shadows-ignored",
        "an IBQ checkpoint loads its raw weights when the EMA shadows are asked for",
        "gsq_core/checkpoint_ibq.py",
        "key = ema_name(upstream) if take_ema else upstream",
        "key = upstream",
        ("tests/gsq_core/test_ibq.py::test_latent_tokens_and_decode_match_upstream",),
    ),
    Fault(
        "torch-load-not-weights-only",
        "checkpoints are unpickled with weights_only=False: a pickle's code runs",
        "gsq_core/checkpoint.py",
        "weights_only=True, mmap=is_zip",
        "weights_only=False, mmap=is_zip",
        ("tests/gsq_core/test_checkpoint.py::test_hostile_tensor_pickle_is_refused",),
    ),
    Fault(
        "config-pickle-unrestricted",
        "a flex_gen checkpoint's config pickle is read with plain pickle.loads, not the allow-list unpickler",
        "gsq_core/checkpoint.py",
        'kwargs = load_config_pickle(package["config"])',
        'kwargs = __import__("pickle").loads(package["config"])',
        ("tests/gsq_core/test_checkpoint.py::test_hostile_config_pickle_is_refused_and_never_runs",),
    ),
    Fault(
        "ibq-shape-check-skipped",
        "an IBQ weight whose shape differs from the YAML's model is taken without a word",
        "gsq_core/checkpoint_ibq.py",
        "if tuple(tensor.shape) != expected[ours]:",
        "if False:",
        ("tests/gsq_core/test_ibq.py::test_yaml_that_does_not_match_lists_keys_and_shapes",),
    ),
    Fault(
        "ema-copies",
        "the EMA update copies the weights instead of averaging them",
        "train/ema.py",
        "torch._foreach_lerp_(averaged, current, weight)",
        "torch._foreach_copy_(averaged, current)",
        ("tests/train/test_train.py::test_ema_is_a_weighted_average_with_a_warm_up_ramp",),
    ),
    Fault(
        "ema-no-warmup",
        "the EMA ignores its warm-up ramp (full decay from the first update)",
        "train/ema.py",
        "weight = 1.0 - min(decay, (1 + n) / (10 + n))",
        "weight = 1.0 - decay",
        ("tests/train/test_train.py::test_ema_is_a_weighted_average_with_a_warm_up_ramp",),
    ),
    Fault(
        "train-ema-not-checkpointed",
        "the EMA is not registered for checkpointing: a resumed run restarts its average",
        "train/main.py",
        "accelerator.register_for_checkpointing(ema, progress)",
        "accelerator.register_for_checkpointing(progress)",
        ("tests/train/test_train.py::test_resumed_run_equals_an_uninterrupted_one",),
    ),
    Fault(
        "train-lr-scheduler-not-checkpointed",
        "the generator's LR schedule is not prepared by accelerate: checkpoints lack it, a resumed run restarts it",
        "train/main.py",
        "accelerator.prepare(generator, optimizer_g, LambdaLR(optimizer_g, schedule))",
        "accelerator.prepare(generator, optimizer_g) + (LambdaLR(optimizer_g, schedule),)",
        ("tests/train/test_train.py::test_resumed_run_equals_an_uninterrupted_one",),
    ),
    Fault(
        "train-data-position-not-restored",
        "a resumed run reads its data stream from the first batch again",
        "train/main.py",
        "start_batch=progress.batches",
        "start_batch=0",
        ("tests/train/test_train.py::test_resumed_run_equals_an_uninterrupted_one",),
    ),
    # -- fidelity measures -----------------------------------------------------------------------------------
    Fault(
        "psnr-constant",
        "PSNR returns a constant",
        "gsq_core/fidelity.py",
        'return float("inf") if mse == 0.0 else 10.0 * np.log10(data_range**2 / mse)',
        "return 40.0",
        ("tests/gsq_core/test_comparator.py",),
    ),
    Fault(
        "ssim-constant",
        "SSIM returns a constant",
        "gsq_core/comparator.py",
        "return float(structural_similarity(*pair, channel_axis=2, data_range=255, win_size=window))",
        "return 0.9",
        ("tests/gsq_core/test_comparator.py",),
    ),
    Fault(
        "usage-constant",
        "codebook usage returns a constant",
        "gsq_core/fidelity.py",
        "return float((counts > 0).sum()) / counts.size",
        "return 2 / 32",
        ("tests/gsq_core/test_comparator.py",),
    ),
    Fault(
        "perplexity-constant",
        "codebook perplexity returns a constant",
        "gsq_core/fidelity.py",
        "return float(np.exp(-(probs * np.log(probs)).sum()))",
        "return 2.0",
        ("tests/gsq_core/test_comparator.py",),
    ),
    Fault(
        "score-gaps-zero",
        "score gaps are all 0 (every token an optimal choice)",
        "gsq_core/fidelity.py",
        "gaps[start : start + block_rows] = scores.max(axis=1) - picked",
        "gaps[start : start + block_rows] = 0.0",
        ("tests/gsq_core/test_comparator.py",),
    ),
    Fault(
        "token-agreement-constant",
        "token agreement returns a constant (1.0)",
        "gsq_core/comparator.py",
        "return self.agreeing / self.tokens if self.tokens else None",
        "return 1.0 if self.tokens else None",
        ("tests/gsq_core/test_comparator.py",),
    ),
    Fault(
        "latent-error-constant",
        "the latent's max abs error is always 0",
        "gsq_core/comparator.py",
        "error = float(np.abs(latent.astype(np.float64) - reference).max(initial=0.0))\n        if not",
        "error = 0.0\n        if not",
        ("tests/gsq_core/test_comparator.py",),
    ),
    # -- benchmarks --------------------------------------------------------------------------------------------
    Fault(
        "decode-img-s-constant",
        "the benchmark worker's decode img/s is a constant",
        "benchmarks/backend_worker.py",
        '"decode_img_s": size / decode_s}',
        '"decode_img_s": 100.0}',
        ("tests/benchmarks/test_benchmarks.py::test_worker_throughput_and_latency_are_what_the_calls_took",),
    ),
    Fault(
        "report-decode-img-s-constant",
        "compare.py's report gives a constant decode throughput",
        "benchmarks/compare.py",
        'best_decode = max(t["decode_img_s"] for t in worker["throughput"].values())',
        "best_decode = 100.0",
        ("tests/benchmarks/test_benchmarks.py::test_report_record_takes_the_best_batch_and_the_ratios_to_eager",),
    ),
    # -- export validation --------------------------------------------------------------------------------------
    Fault(
        "validation-latent-check-off",
        "export validation no longer checks the latent error",
        "exporters/validation.py",
        "if relative is not None and not relative <= limits.max_latent_relative_error:",
        "if False:",
        ("tests/exporters/test_validation.py",),
    ),
    Fault(
        "validation-score-gap-check-off",
        "export validation no longer checks that every token is an optimal choice",
        "exporters/validation.py",
        "if gap is not None and gap > limits.max_score_gap:",
        "if False:",
        ("tests/exporters/test_validation.py",),
    ),
    Fault(
        "validation-agreement-check-off",
        "export validation no longer checks token agreement",
        "exporters/validation.py",
        "if agreement is not None and agreement < limits.min_token_agreement:",
        "if False:",
        ("tests/exporters/test_validation.py",),
    ),
    Fault(
        "validation-psnr-check-off",
        "export validation no longer checks the reconstruction PSNR",
        "exporters/validation.py",
        "if lowest is not None and lowest < limits.min_recon_psnr_db:",
        "if False:",
        ("tests/exporters/test_validation.py",),
    ),
    Fault(
        "validation-nan-check-off",
        "export validation no longer fails a reconstruction holding NaN",
        "exporters/validation.py",
        "if not comparator.images_finite:",
        "if False:",
        ("tests/exporters/test_validation.py",),
    ),
    Fault(
        "validation-run-errors-ignored",
        "export validation ignores graphs that fail to run",
        "exporters/validation.py",
        'check.errors.append(f"{check.name}: failed to run on input {list(feed.shape)}: {first_line(error)}")',
        "pass",
        ("tests/exporters/test_validation.py",),
    ),
    Fault(
        "validation-always-passes",
        "export validation's verdict is always 'passed'",
        "exporters/validation.py",
        'report["passed"] = not report["failures"]',
        'report["passed"] = True',
        ("tests/exporters/test_validation.py",),
    ),
    Fault(
        "validation-warn-only-everywhere",
        "every miss only warns, also in fp32 builds",
        "exporters/validation.py",
        "hard = [failure.message for failure in failures if failure.hard or not check.limits.warn_only]",
        "hard = [failure.message for failure in failures if failure.hard]",
        ("tests/exporters/test_validation.py",),
    ),
    # -- gsq-tokenize: resuming a killed run (issue 18) ----------------------------------------------------
    Fault(
        "resume-committed-ids-ignored",
        "commit_staging starts from no committed ids: staged rows already in DST are committed again",
        "gsq_dataset/output.py",
        "seen = set(self.committed_ids())",
        "seen = set()",
        ("tests/gsq_dataset/test_tokenize_resume.py",),
    ),
    Fault(
        "resume-temporaries-left",
        "a manifest or failed-list write killed before its rename leaves its hidden .tmp file in DST for good",
        "gsq_dataset/output.py",
        "        self._remove_temporaries()\n",
        "",
        ("tests/gsq_dataset/test_tokenize_resume.py",),
    ),
    Fault(
        "resume-footer-not-checked",
        "a staged shard whose footer does not read back (a writer killed mid-file) is committed as it is",
        "gsq_dataset/output.py",
        "result.dropped_partial += 1  # a writer killed mid-file: its rows are redone\n            return",
        "os.replace(staged, self.path / staged.name)\n            return",
        ("tests/gsq_dataset/test_tokenize_resume.py",),
    ),
    Fault(
        "resume-staged-ids-not-marked-seen",
        "a committed shard's ids are not remembered: a retried writer's repeated rows are committed twice",
        "gsq_dataset/output.py",
        "seen.update(ids[i] for i in fresh)",
        "pass",
        ("tests/gsq_dataset/test_tokenize_resume.py",),
    ),
    Fault(
        "resume-no-duplicate-removal",
        "every staged row is committed, repeated or not (no duplicate removal)",
        "gsq_dataset/output.py",
        "fresh = [i for i, sample_id in enumerate(ids) if sample_id not in seen]",
        "fresh = list(range(len(ids)))",
        ("tests/gsq_dataset/test_tokenize_resume.py",),
    ),
    Fault(
        "resume-rewrite-takes-wrong-rows",
        "a shard rewritten without its repeated rows keeps the first rows instead of the new ones",
        "gsq_dataset/output.py",
        "pq.read_table(staged).take(pa.array(fresh))",
        "pq.read_table(staged).slice(0, len(fresh))",
        ("tests/gsq_dataset/test_tokenize_resume.py",),
    ),
    Fault(
        "resume-rewrite-in-place",
        "a shard rewritten without its repeated rows is written straight into DST (no temporary + rename)",
        "gsq_dataset/output.py",
        "pq.write_table(pq.read_table(staged).take(pa.array(fresh)), temporary)\n            os.replace(temporary, target)",
        "pq.write_table(pq.read_table(staged).take(pa.array(fresh)), target)",
        ("tests/gsq_dataset/test_tokenize_resume.py",),
    ),
    Fault(
        "resume-earlier-failures-lost",
        "a commit with new failures rewrites the failed list with those alone (earlier runs' lost)",
        "gsq_dataset/output.py",
        "failures.update(new_failures)",
        "failures = dict(new_failures)",
        ("tests/gsq_dataset/test_tokenize_resume.py",),
    ),
    Fault(
        "resume-staging-removed-before-failed-list",
        "staging is removed before the failed list is written: a kill in between loses the failures",
        "gsq_dataset/output.py",
        "        if new_failures:\n            failures.update(new_failures)",
        "        shutil.rmtree(self.staging_path)\n        self.staging_path.mkdir()\n"
        "        if new_failures:\n            failures.update(new_failures)",
        ("tests/gsq_dataset/test_tokenize_resume.py",),
    ),
    Fault(
        "resume-tokenized-ids-listed-failed",
        "a sample that failed once and was tokenized on a retry is also listed as failed",
        "gsq_dataset/output.py",
        "if sample_id not in seen and sample_id not in failures:",
        "if sample_id not in failures:",
        ("tests/gsq_dataset/test_tokenize_resume.py",),
    ),
    Fault(
        "resume-failures-not-done",
        "listed failures do not count as finished: every rerun retries them",
        "gsq_dataset/output.py",
        "return frozenset(self.committed_ids()) | frozenset(self.failures())",
        "return frozenset(self.committed_ids())",
        ("tests/gsq_dataset/test_tokenize_resume.py",),
    ),
    Fault(
        "resume-staging-left",
        "commit_staging leaves the staged files behind",
        "gsq_dataset/output.py",
        "        shutil.rmtree(self.staging_path)\n        return result",
        "        return result",
        ("tests/gsq_dataset/test_tokenize_resume.py",),
    ),
    Fault(
        "stages-decode-failures-not-recorded",
        "prepare_batch (the Ray decode task) drops undecodable samples without recording them (lost, never retried or listed)",
        "gsq_dataset/stages.py",
        "record_failures(failed_dir, prepared.failed_ids, prepared.failed_reasons)\n    counter.add",
        "counter.add",
        ("tests/gsq_dataset/test_tokenize_stages.py",),
    ),
    Fault(
        "stages-tokenizer-failures-not-recorded",
        "the Tokenizer (the Ray actor) drops samples its runtime refuses without recording them",
        "gsq_dataset/stages.py",
        "record_failures(self.failed_dir, encoded.failed_ids, encoded.failed_reasons)",
        "pass",
        ("tests/gsq_dataset/test_tokenize_stages.py",),
    ),
    Fault(
        "local-decode-failures-not-recorded",
        "the local executor drops undecodable samples without recording them (lost, never retried or listed)",
        "gsq_dataset/local.py",
        "record_failures(failed_dir, prepared.failed_ids, prepared.failed_reasons)",
        "pass",
        ("tests/gsq_dataset/test_tokenize_local.py::test_local_run_every_id_once_with_labels_failures_and_eager_tokens",),
    ),
    Fault(
        "local-tokenizer-failures-not-recorded",
        "the local executor drops samples its runtime refuses without recording them",
        "gsq_dataset/local.py",
        "record_failures(failed_dir, encoded.failed_ids, encoded.failed_reasons)",
        "pass",
        ("tests/gsq_dataset/test_tokenize_local.py::test_a_sample_the_local_runtime_refuses_is_listed_failed_and_the_rest_tokenized",),
    ),
    Fault(
        "stages-rows-misaligned",
        "encode_batch's rows pair each id with another image's tokens (codes in reverse order; both executors)",
        "gsq_dataset/work.py",
        "[codes[i] for i in kept], num_embed)",
        "[codes[i] for i in reversed(kept)], num_embed)",
        (
            "tests/gsq_dataset/test_tokenize_stages.py",
            "tests/gsq_dataset/test_tokenize_local.py::test_local_run_every_id_once_with_labels_failures_and_eager_tokens",
        ),
    ),
    Fault(
        "stages-labels-lost",
        "the Tokenizer writes every label as unknown",
        "gsq_dataset/stages.py",
        "labels = [None if label < 0 else int(label) for label in batch[\"label\"]]",
        "labels = [None for label in batch[\"label\"]]",
        ("tests/gsq_dataset/test_tokenize_stages.py",),
    ),
    Fault(
        "stages-refused-batch-fails-whole",
        "when the runtime refuses a batch, every sample of it is listed failed (no one-at-a-time retry; both executors)",
        "gsq_dataset/work.py",
        "codes[index] = runtime.encode(model_input(items[index][None]))[0]",
        "raise GSQError(\"a batch refused\")",
        ("tests/gsq_dataset/test_tokenize_stages.py",),
    ),
)


@dataclass
class Outcome:
    """What one run of a selection gave."""

    name: str
    verdict: str  # red | green | error
    exit_status: int | None
    seconds: float
    failed_tests: list[str]
    detail: str  # the last lines of pytest's output when not red


def repository_files(root: Path) -> list[str]:
    """Tracked and untracked files that git does not ignore, relative to root."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root, check=True, capture_output=True,
    ).stdout.decode()  # fmt: skip
    return sorted({name for name in listed.split("\0") if name and (root / name).is_file()})


def copy_repository(root: Path, destination: Path) -> None:
    """A copy of the repository's files (no .git, no virtualenv, no ignored outputs)."""
    for name in repository_files(root):
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)


def apply_fault(copy: Path, fault: Fault) -> None:
    """Replace the fault's original snippet (exactly one occurrence) in the copy."""
    path = copy / fault.file
    text = path.read_text(encoding="utf-8")
    count = text.count(fault.original)
    if count != 1:
        raise ValueError(f"{fault.name}: the original snippet occurs {count} times in {fault.file} (must be once)")
    path.write_text(text.replace(fault.original, fault.faulty), encoding="utf-8")


def check_faults(root: Path = REPO_ROOT, faults: tuple[Fault, ...] = FAULTS) -> list[str]:
    """Problems with the fault list against the files as they are now (empty when every fault applies)."""
    problems = []
    names = [fault.name for fault in faults]
    problems += [f"{name}: listed twice" for name in sorted({n for n in names if names.count(n) > 1})]
    for fault in faults:
        path = root / fault.file
        if not path.is_file():
            problems.append(f"{fault.name}: no file {fault.file}")
            continue
        count = path.read_text(encoding="utf-8").count(fault.original)
        if count != 1:
            problems.append(f"{fault.name}: the original snippet occurs {count} times in {fault.file}")
        for test in fault.tests:
            if not (root / test.split("::")[0]).is_file():
                problems.append(f"{fault.name}: no test file {test.split('::')[0]}")
    return problems


FAILED_LINE = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.MULTILINE)


def run_selection(copy: Path, tests: tuple[str, ...], timeout: float) -> tuple[int | None, float, str]:
    """`python -m pytest -x` on tests inside the copy; exit status (None on timeout), seconds, output."""
    env = dict(os.environ, PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1")
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-rfE", "-p", "no:cacheprovider", *tests]
    start = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=copy, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = process.communicate(timeout=timeout)
        status: int | None = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)  # the process group this run started, nothing else
        output, _ = process.communicate()
        status = None
    return status, time.perf_counter() - start, output


def verdict_of(name: str, status: int | None, seconds: float, output: str, planted: bool) -> Outcome:
    failed = FAILED_LINE.findall(output)
    if status == 1 and failed:
        verdict = "red"
    elif status == 0:
        verdict = "green"
    else:
        verdict = "error"
    wanted = "red" if planted else "green"
    detail = "" if verdict == wanted else "\n".join(output.strip().splitlines()[-15:])
    if status is None:
        detail = "timed out\n" + detail
    return Outcome(name, verdict, status, round(seconds, 1), failed, detail)


def run_fault(fault: Fault, timeout: float) -> Outcome:
    with tempfile.TemporaryDirectory(prefix="gsq-fault-") as folder:
        copy = Path(folder)
        copy_repository(REPO_ROOT, copy)
        apply_fault(copy, fault)
        status, seconds, output = run_selection(copy, fault.tests, timeout)
    return verdict_of(fault.name, status, seconds, output, planted=True)


def run_baseline(faults: list[Fault], timeout: float) -> Outcome:
    tests = tuple(dict.fromkeys(test for fault in faults for test in fault.tests))
    with tempfile.TemporaryDirectory(prefix="gsq-fault-baseline-") as folder:
        copy = Path(folder)
        copy_repository(REPO_ROOT, copy)
        status, seconds, output = run_selection(copy, tests, timeout)
    return verdict_of("(baseline, nothing planted)", status, seconds, output, planted=False)


def table(outcomes: list[Outcome], faults: dict[str, Fault]) -> str:
    lines = [f"{'fault':<36} {'verdict':<7} {'s':>6}  first failing test", "-" * 110]
    for outcome in outcomes:
        first = outcome.failed_tests[0] if outcome.failed_tests else "-"
        lines.append(f"{outcome.name:<36} {outcome.verdict:<7} {outcome.seconds:>6.1f}  {first}")
    red = sum(o.verdict == "red" for o in outcomes if o.name in faults)
    lines.append(f"{red} of {sum(o.name in faults for o in outcomes)} planted faults turned the selection red")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.planted_faults", description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these faults only")
    parser.add_argument("--list", action="store_true", help="list the faults and their tests, run nothing")
    parser.add_argument("--baseline", action="store_true", help="first run every selection unpatched (must pass)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per selection run")
    parser.add_argument("--json", type=Path, help="write the report here (atomically)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    problems = check_faults()
    if problems:
        print("error: the fault list does not apply: " + "; ".join(problems), file=sys.stderr)
        return 2
    by_name = {fault.name: fault for fault in FAULTS}
    unknown = [name for name in args.only or [] if name not in by_name]
    if unknown:
        print(f"error: unknown fault(s) {', '.join(unknown)}; --list shows them", file=sys.stderr)
        return 2
    chosen = [by_name[name] for name in args.only] if args.only else list(FAULTS)
    if args.list:
        for fault in chosen:
            print(f"{fault.name:<36} {fault.file:<30} {' '.join(fault.tests)}\n    {fault.what}")
        return 0
    if args.json is not None and args.json.exists() and not args.overwrite:
        print(f"error: {args.json} already exists; pass --overwrite to replace it", file=sys.stderr)
        return 2

    from tqdm import tqdm

    outcomes: list[Outcome] = []
    if args.baseline:
        outcomes.append(run_baseline(chosen, args.timeout))
    progress = tqdm(chosen, disable=args.no_progress, unit="fault", file=sys.stderr)
    for fault in progress:
        progress.set_description(fault.name)
        outcomes.append(run_fault(fault, args.timeout))
        first = outcomes[-1].failed_tests[0] if outcomes[-1].failed_tests else "-"
        progress.write(f"{fault.name}: {outcomes[-1].verdict} ({outcomes[-1].seconds:.0f} s) {first}", file=sys.stderr)
    progress.close()

    print(table(outcomes, by_name))
    for outcome in outcomes:
        if outcome.detail:
            print(f"\n--- {outcome.name} ({outcome.verdict}):\n{outcome.detail}")
    report: dict[str, Any] = {
        "faults": [asdict(fault) | asdict(o) for o in outcomes for fault in chosen if fault.name == o.name],
        "baseline": next((asdict(o) for o in outcomes if o.name not in by_name), None),
        "red": sum(o.verdict == "red" for o in outcomes if o.name in by_name),
        "planted": len(chosen),
    }
    if args.json is not None:
        from benchmarks.measure import write_json

        write_json(args.json, report, overwrite=args.overwrite)
    baseline_ok = report["baseline"] is None or report["baseline"]["verdict"] == "green"
    return 0 if report["red"] == len(chosen) and baseline_ok else 1


if __name__ == "__main__":
    sys.exit(main())
