"""The Dockerfile read as data: its stages, build argument, user and entry point, and the
packages its pip lines install against the Makefile's (no Docker engine here: docs/image.md)."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "shardwright"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction: comments dropped, continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if pending and line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction (Docker drops it too)
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        word, _, rest = pending.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    assert not pending, f"unterminated continuation: {pending!r}"
    return out


def stages(ins: list[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its instructions; the lines before the first FROM under ''."""
    out: dict[str, list[tuple[str, str]]] = {"": []}
    current = ""
    for word, rest in ins:
        if word == "FROM":
            m = re.fullmatch(r"(?:--\S+\s+)*(\S+)\s+AS\s+(\S+)", rest, re.IGNORECASE)
            assert m, f"every stage is named: FROM {rest}"
            current = m.group(2)
            assert current not in out, f"stage {current} twice"
            out[current] = [("FROM", m.group(1))]
        else:
            out[current].append((word, rest))
    return out


@pytest.fixture(scope="module")
def dockerfile() -> dict[str, list[tuple[str, str]]]:
    return stages(instructions((ROOT / "Dockerfile").read_text()))


def arg_defaults(ins: list[tuple[str, str]]) -> dict[str, str]:
    return dict(rest.split("=", 1) for word, rest in ins if word == "ARG" and "=" in rest)


def test_multi_stage_build_then_runtime(dockerfile):
    assert list(dockerfile)[1:] == ["build", "runtime"]
    base = arg_defaults(dockerfile[""])["BASE_IMAGE"]
    assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+-slim-\w+", base), f"base image pinned to a patch release: {base}"
    assert dockerfile["build"][0] == dockerfile["runtime"][0] == ("FROM", "${BASE_IMAGE}")
    copies = [rest for word, rest in dockerfile["runtime"] if word == "COPY"]
    assert copies == ["--from=build /opt/shardwright /opt/shardwright"], "the runtime takes only the venv"


def test_variant_build_argument_picks_the_torch_index(dockerfile):
    build = dockerfile["build"]
    assert arg_defaults(build)["VARIANT"] == "cpu"
    torch_line = next(rest for word, rest in build if word == "RUN" and "torch==" in rest)
    cases = dict(re.findall(r"(\w+)\) index=(\S+) ;;", torch_line))
    assert cases == {"cpu": "https://download.pytorch.org/whl/cpu", "cuda": "https://pypi.org/simple"}
    assert re.search(r"\*\).*exit 2", torch_line), "an unknown VARIANT fails the build"


def test_runs_as_the_charts_non_root_user_with_the_shardwright_entry_point(dockerfile):
    runtime = dockerfile["runtime"]
    user = [rest for word, rest in runtime if word == "USER"][-1]
    uid, _, gid = user.partition(":")
    assert uid not in ("0", "root") and gid not in ("0", "root"), user
    pod = (CHART / "templates" / "deployment.yaml").read_text()
    assert f"runAsUser: {uid}" in pod and f"runAsGroup: {gid}" in pod, "the chart runs the image's user"
    assert [rest for word, rest in runtime if word == "ENTRYPOINT"] == ['["shardwright"]']
    env = " ".join(rest for word, rest in runtime if word == "ENV")
    assert "PATH=/opt/shardwright/bin:$PATH" in env, "python -m shardwright.workers.launch finds the venv's python"


def test_chart_default_image_is_this_dockerfile_at_the_app_version(dockerfile):
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    label = " ".join(rest for word, rest in dockerfile["runtime"] if word == "LABEL")
    assert f'org.opencontainers.image.version="{chart["appVersion"]}"' in label
    assert chart["appVersion"] == project["version"]
    assert values["image"]["repository"] == "ghcr.io/shardwright/shardwright" and values["image"]["tag"] == ""
    docs = (ROOT / "docs" / "image.md").read_text()
    assert f'-t {values["image"]["repository"]}:{chart["appVersion"]} .' in docs, "docs/image.md builds the default tag"


def pip_requirements(run: str) -> list[str]:
    """The requirement arguments of every ``pip install`` in a shell line (options dropped)."""
    reqs = []
    for command in re.split(r"&&|;", run):
        words = shlex.split(command)
        if "pip" not in " ".join(words[:2]) or "install" not in words:
            continue
        args = words[words.index("install") + 1:]
        skip = False
        for word in args:
            if skip:
                skip = False
            elif word in ("--index-url", "-i", "--extra-index-url", "-c", "-r"):
                skip = True
            elif not word.startswith("-"):
                reqs.append(word)
    return reqs


def expand(requirement: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], requirement)


def project_requirements(target: str) -> list[Requirement]:
    """What ``pip install <target>`` asks for when target is this project (``.``, ``.[extra]``)."""
    m = re.fullmatch(r"\.(?:\[([\w,]+)\])?", target)
    assert m, f"only the project itself, not {target!r}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in filter(None, (m.group(1) or "").split(",")):
        reqs += project["optional-dependencies"][extra]
    return [Requirement(r) for r in reqs]


def test_pip_lines_install_the_makefiles_packages_without_the_test_extra(dockerfile):
    build = dockerfile["build"]
    args = arg_defaults(build)
    pinned: dict[str, Requirement] = {}
    project: list[Requirement] = []
    for word, rest in build:
        if word != "RUN":
            continue
        for req in pip_requirements(rest):
            if req.startswith("."):
                project += project_requirements(req)
            else:
                r = Requirement(expand(req, args))
                assert r.name not in pinned, f"{r.name} installed twice"
                pinned[r.name] = r

    make = (ROOT / "Makefile").read_text()
    make_line = next(line for line in make.splitlines() if "pip install" in line)
    make_target = shlex.split(make_line.split("-e", 1)[1])[0]
    assert make_target == ".[test]", make_line
    makefile = {r.name: r for r in project_requirements(make_target)}
    test_extra = {r.name for r in project_requirements(".[test]")} - {r.name for r in project_requirements(".")}

    assert {r.name for r in project} == set(makefile) - test_extra, "the image installs the project's runtime dependencies"
    assert set(pinned) == set(makefile) - test_extra, "and pins each of them, no more"
    for name, req in pinned.items():
        (spec,) = req.specifier
        assert spec.operator == "==", f"{req} is pinned exactly"
        assert makefile[name].specifier.contains(spec.version), f"{req} is outside pyproject's {makefile[name]}"
