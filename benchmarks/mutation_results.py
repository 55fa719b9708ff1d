"""The mutation results as files in the repository: docs/mutation/results.json and results.md.

    python -m benchmarks.mutation_results [--mutants mutants] [--out docs/mutation] [--module exporters.lookup_graph ...]

Reads mutmut's state after `mutmut run` (the `mutants/<path>.meta` files: each mutant's exit code,
mapped to a status the way `mutmut results` maps it) and, per module: mutants, killed, survived,
no tests, timeout, not checked, other. Every survivor is listed with a one-line summary of its diff
(`mutmut show` without the context) and its judgment, read from
docs/mutation/judgments/<dotted.module>.toml, one entry per judged survivor:

    "exporters.lookup_graph.x_plan_lookup__mutmut_12" = "reason it is equivalent"

Judged survivors count as equivalent; unjudged ones are listed as live and count against the
score: score = (killed + timeout) / (mutants - not checked - equivalent). A judgment for a mutant
that no longer survives is reported as stale (the tests now kill it, or the mutant changed).
Modules with a meta file but no --module are all reported. Writes both files atomically; exits 1
when a module asked for has no mutmut state.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO_ROOT = Path(__file__).resolve().parents[1]
# mutmut's exit codes (mutmut.stats.status_by_exit_code), grouped the way this report counts them
KILLED = {1, 3}
SURVIVED = {0}
NO_TESTS = {5, 33}
TIMEOUT = {36, 24, -24, 152, 255}
NOT_CHECKED = {None}


@dataclass
class Survivor:
    name: str
    diff: str  # the changed lines, "- old / + new"
    judgment: str | None  # why it is equivalent, or None (live)


@dataclass
class ModuleResult:
    module: str
    mutants: int = 0
    killed: int = 0
    survived: int = 0
    no_tests: int = 0
    timeout: int = 0
    not_checked: int = 0
    other: int = 0  # suspicious, segfault, skipped, type check
    equivalent: int = 0
    live: int = 0
    score: float | None = None
    survivors: list[Survivor] = field(default_factory=list)
    stale_judgments: list[str] = field(default_factory=list)


def module_name(meta: Path, mutants: Path) -> str:
    """mutants/gsq_core/lookup.py.meta -> gsq_core.lookup"""
    relative = meta.relative_to(mutants).as_posix().removesuffix(".py.meta")
    return relative.replace("/", ".")


def load_judgments(folder: Path, module: str) -> dict[str, str]:
    path = folder / f"{module}.toml"
    if not path.is_file():
        return {}
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    bad = [key for key, value in data.items() if not isinstance(value, str) or not value.strip()]
    if bad:
        raise ValueError(f"{path}: every judgment must be a non-empty string; not: {', '.join(bad)}")
    return dict(data)


def diff_summary(name: str, source_path: Path) -> str:
    """The changed lines of one mutant (mutmut's own diff, without the unchanged context)."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    diff = get_diff_for_mutant(name, path=source_path)
    changed = [line for line in diff.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    return " / ".join(" ".join(line.split()) for line in changed)


def module_result(meta: Path, mutants: Path, judgments_dir: Path) -> ModuleResult:
    module = module_name(meta, mutants)
    exit_codes: dict[str, int | None] = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
    judgments = load_judgments(judgments_dir, module)
    result = ModuleResult(module, mutants=len(exit_codes))
    source_path = Path(meta.relative_to(mutants).as_posix().removesuffix(".meta"))
    for name, code in sorted(exit_codes.items()):
        if code in KILLED:
            result.killed += 1
        elif code in SURVIVED:
            result.survived += 1
            judgment = judgments.get(name)
            result.survivors.append(Survivor(name, diff_summary(name, source_path), judgment))
        elif code in NO_TESTS:
            result.no_tests += 1
        elif code in TIMEOUT:
            result.timeout += 1
        elif code in NOT_CHECKED:
            result.not_checked += 1
        else:
            result.other += 1
    result.equivalent = sum(survivor.judgment is not None for survivor in result.survivors)
    result.live = result.survived - result.equivalent
    result.stale_judgments = sorted(set(judgments) - {survivor.name for survivor in result.survivors})
    checked = result.mutants - result.not_checked - result.equivalent
    result.score = round((result.killed + result.timeout) / checked, 4) if checked else None
    return result


def markdown(results: list[ModuleResult]) -> str:
    lines = [
        "# Mutation results",
        "",
        "Generated by `python -m benchmarks.mutation_results` from mutmut's state (`mutants/*.meta`) and the",
        "judgments in `docs/mutation/judgments/`; do not edit by hand. Score = (killed + timeout) /",
        "(mutants - not checked - judged equivalent); live survivors and mutants without tests count against it.",
        "",
        "| module | mutants | killed | survived | equivalent | live | no tests | timeout | not checked | score |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        score = f"{100 * r.score:.1f}%" if r.score is not None else "-"
        lines.append(
            f"| {r.module} | {r.mutants} | {r.killed} | {r.survived} | {r.equivalent} | {r.live} | {r.no_tests} "
            f"| {r.timeout} | {r.not_checked} | {score} |"
        )
    for r in results:
        if not r.survivors and not r.stale_judgments:
            continue
        lines += ["", f"## {r.module}: survivors", "", "| mutant | change | judgment |", "|---|---|---|"]
        for s in r.survivors:
            change = s.diff.replace("|", "\\|")
            judgment = (s.judgment or "**live** (not judged)").replace("|", "\\|").replace("\n", " ")
            lines.append(f"| `{s.name.removeprefix(r.module + '.')}` | `{change}` | {judgment} |")
        if r.stale_judgments:
            lines += ["", "Stale judgments (no longer survivors): " + ", ".join(f"`{n}`" for n in r.stale_judgments)]
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mutation_results", description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", type=Path, default=Path("mutants"), help="mutmut's working folder")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "mutation", help="where results.* go")
    parser.add_argument("--module", nargs="+", metavar="DOTTED", help="only these modules (default: all with state)")
    args = parser.parse_args(argv)

    metas = {module_name(meta, args.mutants): meta for meta in sorted(args.mutants.rglob("*.py.meta"))}
    wanted = args.module or sorted(metas)
    missing = [module for module in wanted if module not in metas]
    if missing:
        print(f"error: no mutmut state for {', '.join(missing)} under {args.mutants} (run mutmut first)", file=sys.stderr)
        return 1
    out = args.out.resolve()
    judgments_dir = out / "judgments"
    os.chdir(args.mutants.resolve().parent)  # mutmut's diff reads mutants/<path> relative to here
    results = [module_result(metas[module].resolve().relative_to(Path.cwd()), Path("mutants"), judgments_dir)
               for module in wanted]  # fmt: skip
    report: dict[str, Any] = {"modules": [asdict(result) for result in results]}
    write_atomically(out / "results.json", json.dumps(report, indent=2) + "\n")
    write_atomically(out / "results.md", markdown(results))
    for r in results:
        score = f"{100 * r.score:.1f}%" if r.score is not None else "-"
        print(f"{r.module}: {r.mutants} mutants, {r.killed} killed, {r.survived} survived ({r.equivalent} judged "
              f"equivalent, {r.live} live), {r.no_tests} no tests, {r.timeout} timeout: score {score}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
