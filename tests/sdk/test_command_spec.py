"""``spec.workers[].command``: what validation refuses (naming the field), what the rank config
and the pods carry. Pure: no Ray, no cluster."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from shardwright.operator.api import validate
from shardwright.operator.backends import pods as render
from shardwright.operator.controller import JobRef, StartGeneration, worker_config
from shardwright.operator.planner import plan_uniform
from shardwright.workers.config import CONFIG_ENV, WorkerConfig

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "user-script" / "job.yaml"
COMMAND = ["python", "examples/user-script/train.py"]


def job_doc(**spec) -> dict:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"].update(spec)
    return doc


def problems(doc: dict) -> list[str]:
    return [str(p) for p in validate(doc)[1]]


def test_the_example_is_valid_and_its_config_carries_the_command():
    job, found = validate(job_doc())
    assert not found, found
    config = worker_config(JobRef("user-script", "default", "/c"), job.spec, plan_uniform(job.spec), 1, None)
    assert config.command == tuple(COMMAND)
    assert WorkerConfig.model_validate_json(config.model_dump_json()).command == tuple(COMMAND)


def test_without_a_command_the_trainer_runs():
    doc = job_doc()
    del doc["spec"]["workers"][0]["command"]
    job, found = validate(doc)
    assert not found
    assert worker_config(JobRef("j", "default", "/c"), job.spec, plan_uniform(job.spec), 1, None).command is None


@pytest.mark.parametrize(("change", "field", "words"), [
    ({"command": []}, "spec.workers[0].command", "at least 1 item"),
    ({"command": ["python", ""]}, "spec.workers[0].command[1]", "at least 1 character"),
    ({"command": "python train.py"}, "spec.workers[0].command", "list"),
], ids=["empty-list", "empty-item", "a-string"])
def test_a_malformed_command_is_refused_naming_the_field(change, field, words):
    doc = job_doc()
    doc["spec"]["workers"][0].update(change)
    found = problems(doc)
    assert len(found) == 1 and found[0].startswith(f"{field}: ") and words in found[0], found


@pytest.mark.parametrize(("spec", "field", "words"), [
    ({"parallelism": {"sequence": {"degree": 2}}}, "spec.parallelism.sequence.degree", "allowed 1"),
    ({"parallelism": {"auto": True}}, "spec.parallelism.auto", "remove it"),
    ({"stragglerPolicy": {"action": "rebalance"}}, "spec.stragglerPolicy.action", "allowed: report"),
    ({"evaluation": {"intervalSteps": 10}}, "spec.evaluation", "remove it"),
    ({"export": {"format": "hf"}}, "spec.export", "remove it"),
    ({"training": {"steps": 60, "lora": {"rank": 4}}}, "spec.training.lora", "remove it"),
], ids=["sequence-parallel", "auto-plan", "rebalance", "evaluation", "export", "lora"])
def test_trainer_only_settings_are_refused_with_a_command(spec, field, words):
    found = problems(job_doc(**spec))
    assert any(p.startswith(f"{field}: ") and words in p for p in found), found


def test_every_group_runs_the_same_program():
    doc = job_doc()
    group = doc["spec"]["workers"][0]
    doc["spec"]["workers"] = [group, {**group, "name": "other", "command": ["python", "other.py"]}]
    assert problems(doc) == [
        "spec.workers[1].command: must equal spec.workers[0].command (['python', 'examples/user-script/train.py']): "
        "every rank of a job runs one program; got ['python', 'other.py']"
    ]
    del doc["spec"]["workers"][1]["command"]
    assert [p.split(":")[0] for p in problems(doc)] == ["spec.workers[1].command"]


def test_a_pod_runs_the_launcher_with_the_same_env_and_the_command_in_its_config():
    """On Kubernetes the pod is the trainer's pod: same container command, env, ports and
    volumes; only the config in SHARDWRIGHT_WORKER_CONFIG names the program to run."""
    rendered = {}
    for name, command in (("trainer", None), ("user", COMMAND)):
        doc = job_doc()
        doc["spec"]["workers"][0].update(ranksPerReplica=2)
        if command is None:
            del doc["spec"]["workers"][0]["command"]
        job, found = validate(doc)
        assert not found, found
        plan = plan_uniform(job.spec)
        action = StartGeneration(1, plan, worker_config(JobRef("u", "default", "/c"), job.spec, plan, 1, None))
        owner = render.Owner("u", "default", "uid-1")
        rendered[name] = render.render_pods(owner, action, {g.name: g for g in job.spec.workers}, render.PodSettings())
    for trainer, user in zip(rendered["trainer"], rendered["user"], strict=True):
        t, u = trainer["spec"]["containers"][0], user["spec"]["containers"][0]
        assert u["command"] == t["command"] == ["python", "-m", "shardwright.workers.launch"]
        assert {k: v for k, v in u.items() if k != "env"} == {k: v for k, v in t.items() if k != "env"}
        t_env, u_env = ({e["name"]: e for e in c["env"]} for c in (t, u))
        assert {k: v for k, v in u_env.items() if k != CONFIG_ENV} == {k: v for k, v in t_env.items() if k != CONFIG_ENV}
        assert WorkerConfig.model_validate_json(u_env[CONFIG_ENV]["value"]).command == tuple(COMMAND)
        assert user["spec"]["volumes"] == trainer["spec"]["volumes"]
