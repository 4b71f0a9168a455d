"""A small Dockerfile reader: enough of the format for the tests to learn, from the Dockerfile
itself rather than from a copy of it, what each stage runs (ENTRYPOINT, CMD, ENV, USER,
HEALTHCHECK) and from which base image, so the image's start command can be exercised
outside Docker and a change to the Dockerfile is what the tests see."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction; None for shell form."""
        text = self.args.strip()
        if not text.startswith("["):
            return None
        value = json.loads(text)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), self
        return value


@dataclass
class Stage:
    base: str  # the FROM image with global ARGs substituted, or an earlier stage's name
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self, inherited: dict[str, str]) -> dict[str, str]:
        """ENV as the image has it: values expanded ($VAR, ${VAR}) as Docker does, against
        `inherited` (the base image's environment) and the ENV lines before."""
        env = dict(inherited)
        set_here: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for key, raw in parse_env(instruction.args):
                value = _VARIABLE.sub(lambda m: env.get(m[1] or m[2], ""), raw)
                env[key] = set_here[key] = value
        return set_here

    def command(self) -> list[str]:
        """ENTRYPOINT followed by CMD, both required in exec form."""
        argv: list[str] = []
        for keyword in ("ENTRYPOINT", "CMD"):
            instruction = self.last(keyword)
            if instruction is None:
                continue
            form = instruction.exec_form()
            assert form is not None, f"line {instruction.line}: {keyword} in shell form"
            argv += form
        return argv

    def healthcheck(self) -> tuple[dict[str, str], list[str]] | None:
        """(options, exec-form command) of HEALTHCHECK; None if there is none."""
        instruction = self.last("HEALTHCHECK")
        if instruction is None:
            return None
        options_text, _, command = instruction.args.partition("CMD")
        options = dict(o.removeprefix("--").split("=", 1) for o in options_text.split())
        form = Instruction("CMD", command, instruction.line).exec_form()
        assert form is not None, f"line {instruction.line}: HEALTHCHECK CMD in shell form"
        return options, form


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)


def parse_env(args: str) -> list[tuple[str, str]]:
    """`ENV a=1 b="x y"` or the legacy `ENV a 1`."""
    tokens = shlex.split(args)
    if tokens and "=" not in tokens[0]:
        return [(tokens[0], args.split(None, 1)[1].strip())]
    return [tuple(token.split("=", 1)) for token in tokens]  # type: ignore[misc]


def logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, text) of each instruction: continuations joined, comments and
    blank lines dropped (also inside a continuation, as Docker does)."""
    lines: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        lines.append((start, " ".join(pending)))
        pending = []
    assert not pending, "the Dockerfile ends inside a line continuation"
    return lines


def parse(path: Path) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for number, text in logical_lines(path.read_text()):
        keyword, _, args = text.partition(" ")
        instruction = Instruction(keyword.upper(), args.strip(), number)
        if instruction.keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--platform")]
            image = _VARIABLE.sub(lambda m: global_args[m[1] or m[2]], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(image, name))
        elif not stages:
            assert instruction.keyword == "ARG", f"line {number}: only ARG may precede FROM"
            key, _, default = instruction.args.partition("=")
            global_args[key] = default
        else:
            stages[-1].instructions.append(instruction)
    return Dockerfile(global_args, stages)
