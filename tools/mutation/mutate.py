#!/usr/bin/env python3
"""Mutation testing of the pure modules: how much of their behaviour do the tests pin down?

Each mutant is the module with one small change (a comparison negated or moved off by one, a
condition negated, ``and``/``or`` swapped, a return replaced by ``None``, a statement deleted, a
number moved by one, a string altered, a sign dropped, an operator swapped); the module's tests
run against it, and a mutant the tests still pass is a *survivor*: behaviour no test checks, or a
change that cannot be seen (an *equivalent* mutant, listed with the reason in ``survivors.md``).

Standard library only, and self-contained, so it needs nothing installed beside the project; run
it with the project's interpreter (which has Twisted and Hypothesis)::

    .venv/bin/python tools/mutation/mutate.py                       # the four pure modules
    .venv/bin/python tools/mutation/mutate.py imageserver/paths.py tests.test_paths
    .venv/bin/python tools/mutation/mutate.py imageserver/paths.py --list
    .venv/bin/python tools/mutation/mutate.py imageserver/paths.py --show 12

Why not mutmut: it rewrites the module in place, and others edit this tree meanwhile.  Here the
code and tests are copied once at the start; each mutant reaches a fresh ``trial`` process through
an import hook (no file is rewritten, no ``.pyc`` goes stale); the processes are forked from a
server that has imported Twisted, Hypothesis and the rest once, so a run costs a fraction of a
second rather than an interpreter's start; each has its own working directory and a timeout, and
as many run at once as there are CPUs.  The four modules take about four minutes on two cores.
"""

from __future__ import annotations

import argparse
import ast
import compileall
import contextlib
import copy
import difflib
import importlib.abc
import importlib.machinery
import importlib.util
import multiprocessing
import multiprocessing.context
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
SURVIVORS = Path(__file__).resolve().with_name("survivors.md")

# The test modules (or classes) that cover each pure module.  Only tests that run in-process:
# tests that start a server hand the work to worker processes, which never see the mutant, and
# take seconds each.
SUITES: dict[str, list[str]] = {
    "imageserver/paths.py": ["tests.test_paths"],
    "imageserver/names.py": ["tests.test_names", "tests.test_grammar.GrammarTests"],
    "imageserver/signature.py": ["tests.test_signature"],
    "imageserver/addresses.py": [
        "tests.test_addresses.BlockTableTests",
        "tests.test_addresses.ResolverTests",
        "tests.test_addresses.MemoryTests",
        "tests.test_addresses.RebindingTests",
    ],
}

# --- Finding the mutants --------------------------------------------------------------------------

_COMPARE_SWAPS: dict[type[ast.cmpop], tuple[type[ast.cmpop], ...]] = {
    ast.Eq: (ast.NotEq,),
    ast.NotEq: (ast.Eq,),
    ast.Lt: (ast.GtE, ast.LtE),  # negated, and off by one
    ast.LtE: (ast.Gt, ast.Lt),
    ast.Gt: (ast.LtE, ast.GtE),
    ast.GtE: (ast.Lt, ast.Gt),
    ast.In: (ast.NotIn,),
    ast.NotIn: (ast.In,),
    ast.Is: (ast.IsNot,),
    ast.IsNot: (ast.Is,),
}
_BINOP_SWAPS: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Div,
    ast.Mod: ast.FloorDiv,
    ast.Pow: ast.Mult,
    ast.BitAnd: ast.BitOr,
    ast.BitOr: ast.BitAnd,
    ast.LShift: ast.RShift,
    ast.RShift: ast.LShift,
}
# Statements never deleted: deleting a definition or an import only makes a NameError, and an
# ``assert`` here narrows a type for mypy rather than checking behaviour.
_KEPT_STATEMENTS = (
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.ClassDef,
    ast.Import,
    ast.ImportFrom,
    ast.Pass,
    ast.Assert,
    ast.Global,
    ast.Nonlocal,
)


@dataclass(frozen=True)
class Context:
    """Where a node sits: what its mutants are called by, and which mutations make sense there."""

    scope: str = "<module>"
    in_function: bool = False
    quiet_strings: bool = False  # f-strings and log messages: wording, not behaviour
    condition: bool = False  # the node is a test (if, while, conditional expression, filter)


@dataclass(frozen=True)
class Mutant:
    """One mutation: ``node`` (the index of a node in `_walk` order) replaced by ``variant``."""

    index: int
    node: int
    variant: int
    line: int
    scope: str
    operator: str
    before: str
    after: str
    occurrence: int = 1

    @property
    def key(self) -> str:
        """A name that survives edits elsewhere in the module (no line number), for `SURVIVORS`."""
        suffix = f" #{self.occurrence}" if self.occurrence > 1 else ""
        return f"{self.scope}: {self.before} => {self.after}{suffix}"


def _walk(
    node: ast.AST, parent: ast.AST | None, context: Context
) -> Iterator[tuple[ast.AST, ast.AST | None, Context]]:
    """Every node with its parent and context, depth first, in a fixed order (so that an index
    found on one parse names the same node on the next)."""
    yield node, parent, context
    for name, value in ast.iter_fields(node):
        for position, child in enumerate(value if isinstance(value, list) else [value]):
            if not isinstance(child, ast.AST):
                continue
            inner = _child_context(node, name, position, child, context)
            if inner is not None:
                yield from _walk(child, node, inner)


def _child_context(
    node: ast.AST, name: str, position: int, child: ast.AST, context: Context
) -> Context | None:
    """The context of ``child`` (field ``name`` of ``node``), or None to leave it alone."""
    if name in ("annotation", "returns", "decorator_list", "type_params", "type_comment"):
        return None
    if isinstance(child, ast.Import | ast.ImportFrom) or _is_docstring(node, name, position):
        return None
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and name in ("body", "args"):
        scope = node.name if context.scope == "<module>" else f"{context.scope}.{node.name}"
        return Context(scope, in_function=True)
    if isinstance(node, ast.ClassDef) and name == "body":
        return Context(node.name if context.scope == "<module>" else f"{context.scope}.{node.name}")
    if isinstance(node, ast.Module) and isinstance(child, ast.Assign | ast.AnnAssign):
        targets = child.targets if isinstance(child, ast.Assign) else [child.target]
        return Context(" ".join(ast.unparse(target) for target in targets))
    quiet = context.quiet_strings or isinstance(child, ast.JoinedStr) or _is_log_call(child)
    condition = (
        isinstance(node, ast.If | ast.While | ast.IfExp | ast.Assert) and name == "test"
    ) or (isinstance(node, ast.comprehension) and name == "ifs")
    return Context(context.scope, context.in_function, quiet, condition)


def _is_docstring(node: ast.AST, name: str, position: int) -> bool:
    if name != "body" or position != 0:
        return False
    if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
        return False
    first = node.body[0]
    return (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    )


def _is_log_call(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "log"
    )


def _replacements(
    node: ast.AST, parent: ast.AST | None, context: Context
) -> list[tuple[str, ast.AST]]:
    """The mutants of one node: (operator, the node that replaces it)."""
    found: list[tuple[str, ast.AST]] = []
    if isinstance(node, ast.stmt) and context.in_function:
        if isinstance(node, ast.Return) and not _is_none(node.value):
            found.append(("return-none", ast.Return(value=ast.Constant(None))))
        elif isinstance(node, ast.Break):
            found.append(("loop", ast.Continue()))
        elif isinstance(node, ast.Continue):
            found.append(("loop", ast.Break()))
        elif not isinstance(node, _KEPT_STATEMENTS):
            found.append(("delete", ast.Pass()))
    if not isinstance(node, ast.expr):
        return found
    if context.condition and not isinstance(node, ast.Compare | ast.UnaryOp):
        found.append(("condition", ast.UnaryOp(op=ast.Not(), operand=node)))
    if isinstance(node, ast.Compare):
        for position, op in enumerate(node.ops):
            for swap in _COMPARE_SWAPS.get(type(op), ()):
                ops = [*node.ops]
                ops[position] = swap()
                found.append(("compare", ast.Compare(node.left, ops, node.comparators)))
    elif isinstance(node, ast.BoolOp):
        other = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        found.append(("boolop", ast.BoolOp(op=other, values=node.values)))
    elif isinstance(node, ast.BinOp) and type(node.op) in _BINOP_SWAPS:
        swapped = _BINOP_SWAPS[type(node.op)]()
        found.append(("binop", ast.BinOp(node.left, swapped, node.right)))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.USub):
        found.append(("unary", node.operand))
    elif isinstance(node, ast.Constant):
        found.extend(_constant_mutants(node, context))
    return found


def _constant_mutants(node: ast.Constant, context: Context) -> list[tuple[str, ast.AST]]:
    value = node.value
    if isinstance(value, bool):
        return [("bool", ast.Constant(not value))]
    if isinstance(value, int | float):
        return [("number", ast.Constant(value + 1)), ("number", ast.Constant(value - 1))]
    if isinstance(value, str) and not context.quiet_strings:
        return [("string", ast.Constant(f"XX{value}XX"))]
    if isinstance(value, bytes) and not context.quiet_strings:
        return [("string", ast.Constant(b"XX" + value + b"XX"))]
    return []


def _is_none(node: ast.expr | None) -> bool:
    return node is None or (isinstance(node, ast.Constant) and node.value is None)


def _replace(parent: ast.AST, old: ast.AST, new: ast.AST) -> None:
    for name, value in ast.iter_fields(parent):
        if value is old:
            setattr(parent, name, new)
            return
        if isinstance(value, list):
            for position, item in enumerate(value):
                if item is old:
                    value[position] = new
                    return
    raise LookupError(f"{old!r} is not a child of {parent!r}")


def _shown(node: ast.AST, parent: ast.AST | None) -> ast.AST:
    """What a mutant's description shows: a constant with its expression when that is short
    (``image_hash[0:3]``, not ``3``), anything else as itself."""
    short = isinstance(parent, ast.expr) and len(ast.unparse(parent)) <= 60
    return parent if isinstance(node, ast.Constant) and short and parent else node


def _brief(node: ast.AST) -> str:
    """One line for a node; a compound statement by its header alone."""
    if isinstance(node, ast.If | ast.While):
        text = f"{'if' if isinstance(node, ast.If) else 'while'} {ast.unparse(node.test)}:"
    elif isinstance(node, ast.For):
        text = f"for {ast.unparse(node.target)} in {ast.unparse(node.iter)}:"
    elif isinstance(node, ast.With):
        text = f"with {', '.join(ast.unparse(item) for item in node.items)}:"
    elif isinstance(node, ast.Try):
        text = "try:"
    else:
        text = ast.unparse(node)
    text = " ".join(text.split())
    return text if len(text) <= 90 else text[:89] + "…"


def find_mutants(source: str) -> list[Mutant]:
    """Every mutant of a module's source, in a fixed order."""
    tree = ast.parse(source)
    mutants: list[Mutant] = []
    seen: dict[str, int] = {}
    for number, (node, parent, context) in enumerate(_walk(tree, None, Context())):
        if parent is None:
            continue
        for variant, (operator, replacement) in enumerate(_replacements(node, parent, context)):
            shown = _shown(node, parent)
            before = _brief(shown)
            _replace(parent, node, replacement)
            after = _brief(replacement if shown is node else shown)
            _replace(parent, replacement, node)
            if isinstance(replacement, ast.Pass):
                before, after = _brief(node), "pass"
            key = f"{context.scope}: {before} => {after}"
            seen[key] = seen.get(key, 0) + 1
            mutants.append(
                Mutant(
                    len(mutants),
                    number,
                    variant,
                    getattr(node, "lineno", 0),
                    context.scope,
                    operator,
                    before,
                    after,
                    seen[key],
                )
            )
    return mutants


def mutated_source(source: str, mutant: Mutant) -> str:
    """The module's source with ``mutant`` applied (reparsed, so nothing is shared)."""
    tree = ast.parse(source)
    for number, (node, parent, context) in enumerate(_walk(tree, None, Context())):
        if number == mutant.node:
            assert parent is not None
            _operator, replacement = _replacements(node, parent, context)[mutant.variant]
            _replace(parent, node, copy.deepcopy(replacement))
            return ast.unparse(ast.fix_missing_locations(tree))
    raise LookupError(f"no node {mutant.node}")


# --- Running them ---------------------------------------------------------------------------------


@dataclass
class Result:
    mutant: Mutant
    outcome: str  # "killed", "timeout" (counted as killed) or "survived"
    seconds: float


@dataclass
class Report:
    module: str
    results: list[Result] = field(default_factory=list)
    equivalent: dict[str, str] = field(default_factory=dict)  # key -> why, from SURVIVORS
    complete: bool = False  # every mutant of the module ran (no --only, no sampling)

    @property
    def killed(self) -> int:
        return sum(result.outcome != "survived" for result in self.results)

    @property
    def survivors(self) -> list[Result]:
        return [result for result in self.results if result.outcome == "survived"]


# Third-party modules the fork server imports once, so that each run need not: never the project's
# own (each run imports them afresh, the mutant among them), and nothing that installs Twisted's
# reactor (klein does), which every run forked from the server would then share.
_PRELOAD = [
    "__main__",
    "twisted.scripts.trial",
    "twisted.trial.unittest",
    "twisted.trial.runner",
    "twisted.trial.reporter",
    "twisted.logger",
    "twisted.internet.defer",
    "twisted.web.server",
    "twisted.web.client",
    "hypothesis",
    "hypothesis.strategies",
    "PIL.Image",
    "treq",
    "werkzeug",
    "prometheus_client",
]
# Hypothesis' examples per property test in a run: the explicit tests do most of the killing, and
# a hundred examples per test and mutant would be most of the run's time.
_EXAMPLES = 25


def _fork_server(snapshot: Path) -> multiprocessing.context.ForkServerContext:
    """Runs are forked from a server that has imported the heavy libraries (about a second a
    run saved), with the snapshot first on its path."""
    sys.path.insert(0, str(snapshot))
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    return context


def _run_trial(
    context: multiprocessing.context.ForkServerContext,
    snapshot: Path,
    module: str,
    source: str,
    tests: Sequence[str],
    timeout: float,
    scratch: Path,
    log: str = os.devnull,
) -> tuple[str, float]:
    """Run ``tests`` in a fresh process with ``module`` replaced by ``source``: the outcome and
    the time it took.  Its own directory keeps trial's and Hypothesis' files apart."""
    work = Path(tempfile.mkdtemp(dir=scratch))
    mutant_file = work / "mutant.py"
    mutant_file.write_text(source)
    origin = str((snapshot / module.replace(".", "/")).with_suffix(".py"))
    process = context.Process(
        target=child, args=(module, str(mutant_file), origin, list(tests), str(work), log)
    )
    started = time.monotonic()
    process.start()
    assert process.pid is not None
    process.join(timeout)
    if process.exitcode is None:
        # The run leads its own session (see `child`): trial and anything it started go too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.kill()
        process.join()
        outcome = "timeout"
    else:
        outcome = "survived" if process.exitcode == 0 else "killed"
    shutil.rmtree(work, ignore_errors=True)
    return outcome, time.monotonic() - started


def _module_name(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


def read_equivalents(module_path: str) -> dict[str, str]:
    """The survivors judged equivalent for one module: ``- `key` — why`` under ``## module``."""
    if not SURVIVORS.exists():
        return {}
    found: dict[str, str] = {}
    section = ""
    for line in SURVIVORS.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip().strip("`")
        elif section == module_path and (match := re.match(r"- `([^`]+)`\s*[—:-]\s*(.*)", line)):
            found[match[1]] = match[2]
    return found


def sample(mutants: list[Mutant], limit: int) -> list[Mutant]:
    """At most ``limit`` mutants, spread evenly over the module (deterministic: same each run)."""
    if not limit or len(mutants) <= limit:
        return mutants
    step = len(mutants) / limit
    return [mutants[int(position * step)] for position in range(limit)]


def run_module(
    module_path: str,
    tests: Sequence[str],
    snapshot: Path,
    scratch: Path,
    jobs: int,
    limit: int,
    minimum_timeout: float,
    progress: Callable[[str], None],
    only: str = "",
    logs: Path | None = None,
) -> Report:
    source = (snapshot / module_path).read_text()
    module = _module_name(module_path)
    context = _fork_server(snapshot)
    everything = [mutant for mutant in find_mutants(source) if only in mutant.key]
    mutants = sample(everything, limit)
    report = Report(module_path, equivalent=read_equivalents(module_path))
    report.complete = not only and len(mutants) == len(everything)
    # The baseline runs the module as the mutants see it (unparsed from its tree): it must pass,
    # and its time sets the timeout.
    baseline = ast.unparse(ast.parse(source))
    outcome, seconds = _run_trial(context, snapshot, module, baseline, tests, 600, scratch)
    if outcome != "survived":
        raise SystemExit(f"{module_path}: the tests fail without a mutant ({' '.join(tests)})")
    timeout = max(minimum_timeout, 4 * seconds + 5)
    progress(
        f"{module_path}: {len(mutants)} mutants"
        + (f" (sampled from {len(everything)})" if len(mutants) < len(everything) else "")
        + f", baseline {seconds:.1f} s, timeout {timeout:.0f} s, {jobs} at once"
    )

    def one(mutant: Mutant) -> Result:
        log = str(logs / f"{Path(module_path).stem}-{mutant.index}.log") if logs else os.devnull
        outcome, seconds = _run_trial(
            context, snapshot, module, mutated_source(source, mutant), tests, timeout, scratch, log
        )
        return Result(mutant, outcome, seconds)

    with ThreadPoolExecutor(jobs) as pool:
        for done, result in enumerate(pool.map(one, mutants), 1):
            report.results.append(result)
            if done % 25 == 0 or done == len(mutants):
                progress(f"  {done}/{len(mutants)}, {report.killed} killed")
    return report


def describe(report: Report) -> str:
    total = len(report.results)
    killed = report.killed
    equivalent = [r for r in report.survivors if r.mutant.key in report.equivalent]
    unexplained = [r for r in report.survivors if r.mutant.key not in report.equivalent]
    lines = [
        f"{report.module}: {killed}/{total} killed ({100 * killed / max(total, 1):.1f} %);"
        f" {len(equivalent)} survivors listed as equivalent, {len(unexplained)} not"
        + (
            f"; {100 * killed / max(total - len(equivalent), 1):.1f} % of the others"
            if equivalent
            else ""
        )
    ]
    name = Path(report.module).name
    for result in sorted(report.survivors, key=lambda r: r.mutant.index):
        mark = "equivalent" if result in equivalent else "SURVIVED  "
        lines.append(f"  {mark} {name}:{result.mutant.line} `{result.mutant.key}`")
    if report.complete:
        # Entries no run of the whole module needs any more: killed now, or the code changed.
        survived = {result.mutant.key for result in report.survivors}
        for key in sorted(set(report.equivalent) - survived):
            lines.append(f"  stale entry in {SURVIVORS.name}: `{key}`")
    return "\n".join(lines)


def _snapshot(root: Path, scratch: Path) -> Path:
    """A copy of the code and tests as they are now: others edit the tree meanwhile."""
    snapshot = scratch / "tree"
    ignore = shutil.ignore_patterns("__pycache__", "_trial_temp*", ".hypothesis")
    for name in ("imageserver", "tests"):
        shutil.copytree(root / name, snapshot / name, ignore=ignore)
    # Compiled once here, so that each of hundreds of runs does not compile them again.
    compileall.compile_dir(snapshot, quiet=1)
    return snapshot


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("module", nargs="?", help="e.g. imageserver/paths.py (default: all four)")
    parser.add_argument("tests", nargs="*", help="trial test names (default: the module's suite)")
    parser.add_argument("--jobs", "-j", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--max-mutants", type=int, default=0, help="sample evenly (0: all)")
    parser.add_argument("--timeout", type=float, default=30, help="least seconds per mutant")
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    parser.add_argument("--show", type=int, metavar="N", help="print mutant N's diff, run nothing")
    parser.add_argument("--only", metavar="TEXT", help="run only mutants whose key contains TEXT")
    parser.add_argument("--fail-under", type=float, default=0, help="exit 1 below this %% killed")
    parser.add_argument("--logs", type=Path, help="keep each run's trial output in this directory")
    parser.add_argument(
        "--root", type=Path, default=ROOT, help="the tree to test (e.g. a `git archive` of HEAD)"
    )
    options = parser.parse_args(argv)
    modules = [options.module] if options.module else list(SUITES)
    if options.list or options.show is not None:
        for module_path in modules:
            source = (options.root / module_path).read_text()
            for mutant in find_mutants(source):
                if options.show is None:
                    print(f"{mutant.index:4} {mutant.line:4} {mutant.operator:12} {mutant.key}")
                elif mutant.index == options.show:
                    before = ast.unparse(ast.parse(source)).splitlines(keepends=True)
                    after = mutated_source(source, mutant).splitlines(keepends=True)
                    print(mutant.key)
                    sys.stdout.writelines(difflib.unified_diff(before, after, n=2))
        return 0
    started = time.monotonic()
    reports = []
    with tempfile.TemporaryDirectory(prefix="mutation-") as directory:
        scratch = Path(directory)
        snapshot = _snapshot(options.root, scratch)
        for module_path in modules:
            tests = options.tests or SUITES[module_path]
            report = run_module(
                module_path,
                tests,
                snapshot,
                scratch,
                options.jobs,
                options.max_mutants,
                options.timeout,
                lambda line: print(line, file=sys.stderr, flush=True),
                options.only or "",
                options.logs,
            )
            reports.append(report)
    print()
    for report in reports:
        print(describe(report))
    print(f"\n{time.monotonic() - started:.0f} s")
    scores = [100 * r.killed / max(len(r.results), 1) for r in reports]
    return 1 if any(score < options.fail_under for score in scores) else 0


# --- The child: one trial run with the mutant in place --------------------------------------------


class _MutantLoader(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves the mutated source for one module name; every other import is left alone."""

    def __init__(self, name: str, path: str, origin: str) -> None:
        self.name = name
        self.path = path
        self.origin = origin

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        return importlib.util.spec_from_loader(fullname, self, origin=self.origin)

    def exec_module(self, module: ModuleType) -> None:
        module.__file__ = self.origin
        source = Path(self.path).read_text()
        exec(compile(source, self.origin, "exec"), module.__dict__)


def child(
    module: str, mutant_file: str, origin: str, tests: Sequence[str], work: str, log: str
) -> None:
    """In a process forked from the server: install the mutant, make Hypothesis repeatable and
    brief, and run trial in ``work``, its output to ``log`` (trial exits, with its status)."""
    os.setsid()
    os.chdir(work)
    output = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(output, 1)
    os.dup2(output, 2)
    if "twisted.internet.reactor" in sys.modules or any(
        name == "imageserver" or name.startswith(("imageserver.", "tests.")) for name in sys.modules
    ):
        raise SystemExit("the fork server imported the reactor or the project")
    sys.meta_path.insert(0, _MutantLoader(module, mutant_file, origin))
    from hypothesis import settings

    settings.register_profile(
        "mutation", derandomize=True, database=None, deadline=None, max_examples=_EXAMPLES
    )
    settings.load_profile("mutation")
    from twisted.scripts.trial import run

    sys.argv = ["trial", "--exitfirst", *tests]
    run()


if __name__ == "__main__":
    sys.exit(main())
