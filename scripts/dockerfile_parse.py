"""Read a Dockerfile the way Docker does, for the checks in scripts/check_dockerfile.py and check_compose.py.

    stages, global_args = parse_dockerfile(Path("Dockerfile").read_text())
    values_of(stages[-1].instructions, global_args)   # ARG defaults and ENV values of the final stage
    image_installs(stages, global_args, root)         # requirement files and specs it pip-installs

Comments are dropped, continuation lines joined, ``${NAME}`` / ``$NAME`` substituted from ARG and
ENV values; shell commands are split into words with ``shlex`` (exec form as JSON).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

PIP_VALUE_OPTIONS = ("-r", "--requirement", "-c", "--constraint", "-i", "--index-url", "--extra-index-url")


@dataclass
class Instruction:
    line: int  # 1-based line of the keyword
    keyword: str  # upper case
    args: str  # the rest, continuation lines joined


@dataclass
class Stage:
    image: str  # after FROM, global ARGs substituted
    line: int
    instructions: list[Instruction] = field(default_factory=list)


def parse_dockerfile(text: str) -> tuple[list[Stage], dict[str, str]]:
    """Stages in order (comments dropped, continuations joined) and the ARG defaults before the first FROM."""
    preamble: list[Instruction] = []
    stages: list[Stage] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue  # Docker also drops comments inside a continued instruction
        start = start if pending else number
        pending.append(stripped.removesuffix("\\").strip())
        if stripped.endswith("\\"):
            continue
        keyword, _, args = " ".join(p for p in pending if p).partition(" ")
        pending.clear()
        ins = Instruction(start, keyword.upper(), args.strip())
        if ins.keyword == "FROM":
            words = [w for w in substitute(ins.args, values_of(preamble)).split() if not w.startswith("--")]
            stages.append(Stage(words[0] if words else "", ins.line))
        else:
            (stages[-1].instructions if stages else preamble).append(ins)
    return stages, values_of(preamble)


def substitute(text: str, values: dict[str, str]) -> str:
    """``${NAME}`` / ``$NAME`` replaced by ``values`` (unknown names stay as written)."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m[1] or m[2], m[0]), text)


def words_of(args: str) -> list[str]:
    """Exec-form (JSON array) or shell-form words; whitespace splitting when quotes do not balance."""
    if args.startswith("["):
        return [str(w) for w in json.loads(args)]
    try:
        return shlex.split(args)
    except ValueError:
        return args.split()


def values_of(instructions: list[Instruction], base: dict[str, str] | None = None) -> dict[str, str]:
    """ARG defaults and ENV values (``ENV A=1 B="x y"`` or legacy ``ENV A 1``) on top of ``base``."""
    values = dict(base or {})
    for ins in instructions:
        words = words_of(ins.args) if ins.keyword in ("ARG", "ENV") else []
        if ins.keyword == "ENV" and words and "=" not in words[0]:
            values[words[0]] = " ".join(words[1:])
        else:
            values.update(w.split("=", 1) for w in words if "=" in w)
    return values


def pip_installs(command: str) -> list[list[str]]:
    """The words after ``install`` of each ``pip install`` in a shell command."""
    segments = [s for s in re.split(r"&&|\|\||;", command) if re.search(r"\bpip3?\s+install\b", s)]
    return [words[words.index("install") + 1 :] for words in map(words_of, segments) if "install" in words]


def image_installs(
    stages: list[Stage], global_args: dict[str, str], root: Path
) -> tuple[list[Path], list[tuple[int, str]]]:
    """Requirement files (as their COPY source) and (line, spec) of every explicit pip install spec."""
    files: list[Path] = []
    specs: list[tuple[int, str]] = []
    for stage in stages:
        copied: dict[str, str] = {}  # destination -> build-context source
        values = values_of(stage.instructions, global_args)
        for ins in stage.instructions:
            if ins.keyword == "COPY" and len(words := words_of(ins.args)) == 2:  # no --from/--chown
                copied[words[1]] = words[0]
            for args in pip_installs(substitute(ins.args, values)) if ins.keyword == "RUN" else []:
                for previous, word in zip(["", *args], args, strict=False):
                    if previous in ("-r", "--requirement"):
                        files.append(root / copied.get(word, word).lstrip("/"))
                    elif not word.startswith("-") and previous not in PIP_VALUE_OPTIONS:
                        specs.append((ins.line, word))
    return files, specs
