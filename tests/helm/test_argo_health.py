"""The chart's Argo CD health check (helm/shardwright/argocd/health.lua), run as Argo CD runs
it on statuses from real runs of the pure cores: a TrainingJob through Pending, Running,
Restarting, Suspended, Complete and Failed, a ServingPool through Pending, Running,
Updating and ScaledToZero; and the argocd-cm example carries the script unchanged.

Argo CD's calling convention (util/lua in argo-cd): the object is the global ``obj``, the
script returns a table with ``status`` and ``message``, and without
``resource.customizations.useOpenLibs`` only the base and table libraries exist (no
``string`` library, no string methods). Argo CD runs gopher-lua, a Lua 5.1; so does this.
"""

from __future__ import annotations

from typing import Any

import lupa.lua51 as lua51
import pytest
import yaml

from shardwright.operator.api import RankState
from shardwright.operator.controller import Progress
from shardwright.operator.controller.pool import revision
from tests.controller.driver import Driver, ranks, running, spec
from tests.serving.test_pool_core import REF, Sim, spec as pool_spec
from tests.support.manifests import REPO, example

SCRIPT = REPO / "helm" / "shardwright" / "argocd" / "health.lua"
ARGOCD_CM = REPO / "examples" / "gitops" / "argocd" / "argocd-cm.yaml"
HEALTH = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}
#: What Argo CD's Lua state offers a health script by default: base and table, no string.
BASE = ("assert", "error", "ipairs", "next", "pairs", "pcall", "rawequal", "rawget", "rawset", "select",
        "setmetatable", "getmetatable", "tonumber", "tostring", "type", "unpack", "xpcall", "table")


def run(source: str, obj: dict[str, Any]) -> dict[str, Any]:
    """What ``source`` returns for ``obj``, in a Lua with only what Argo CD opens."""
    lua = lua51.LuaRuntime(unpack_returned_tuples=False)
    call = lua.eval("""function(source, names, obj)
        local env = {obj = obj}
        for _, name in ipairs(names) do env[name] = _G[name] end
        getmetatable("").__index = nil  -- no ("x"):sub(...) either: Argo CD opens no string library
        local chunk = assert(loadstring(source, "health.lua"))
        setfenv(chunk, env)
        return chunk()
    end""")
    return dict(call(source, lua.table_from(BASE), lua.table_from(obj, recursive=True)).items())


def health(obj: dict[str, Any]) -> tuple[str, str]:
    """(status, message) of the chart's script for ``obj``."""
    out = run(SCRIPT.read_text(), obj)
    assert set(out) <= {"status", "message"} and out["status"] in HEALTH, out
    return out["status"], out.get("message", "")


def job(driver: Driver) -> dict[str, Any]:
    """The TrainingJob as Argo CD reads it: the example at the driver's generation, its status."""
    doc = example()
    doc["metadata"]["generation"] = driver.job.object_generation
    doc["status"] = driver.status.to_wire()
    return doc


F, R, S = RankState.FAILED, RankState.RUNNING, RankState.SUCCEEDED


def pending() -> Driver:
    d = Driver()
    d.tick()
    return d


def started() -> Driver:
    d = Driver()
    d.start()
    d.tick(5, running(1), Progress(generation=1, step=40))
    return d


def restarting() -> Driver:
    d = started()
    d.tick(10, ranks(1, F, exit_code=1, message="boom") + running(1)[1:])
    return d


def suspended() -> Driver:
    d = started()
    d.edit(suspend=True)
    d.tick(10, ranks(1, S, S))
    return d


def complete() -> Driver:
    d = started()
    d.tick(60, ranks(1, S, S))
    return d


def failed() -> Driver:
    d = Driver(spec(failurePolicy={"maxRestarts": 0}))
    d.start()
    d.tick(10, ranks(1, F, exit_code=3, message="bad config") + running(1)[1:])
    return d


JOBS = {
    "pending": (pending, "Progressing", "Pending at step 0"),
    "running": (started, "Progressing", "Running at step 40: 2 ranks running"),
    "restarting": (restarting, "Progressing", "Restarting at step 40: Restart 1/3 in 1s: Rank 0 failed (exit code 1): boom; "
                                              "step 40 seen last, no checkpoint yet"),
    "suspended": (suspended, "Suspended", "Suspended at step 40: Ranks stopped at step 40; no checkpoint"),
    "complete": (complete, "Healthy", "Complete at step 120: Trained 120 steps"),
    "failed": (failed, "Degraded", "Failed at step 0: Rank 0 failed (exit code 3): bad config; step 0 seen last, no checkpoint yet; "
                                   "restart budget of 0 used up"),
}


@pytest.mark.parametrize("life", JOBS)
def test_a_training_job_s_phase_is_its_health(life):
    make, status, message = JOBS[life]
    d = make()
    assert d.status.phase == life.capitalize()  # the run really reached the phase
    assert health(job(d)) == (status, message)


def test_an_edit_that_does_not_run_yet_is_progressing_even_when_the_job_is_done():
    d = complete()
    doc = job(d)
    doc["metadata"]["generation"] += 1  # applied; the operator has not taken it up yet
    assert health(doc) == ("Progressing", "Waiting for the spec to run: generation 8, running 7")
    del doc["status"]["observedGeneration"]
    assert health(doc) == ("Progressing", "Waiting for the spec to run: generation 8, running none")


def test_no_status_yet_and_a_phase_from_a_newer_operator():
    doc = example()
    assert health(doc) == ("Progressing", "Waiting for the operator")
    doc["status"] = {"phase": "Draining"}
    assert health(doc) == ("Unknown", "Phase Draining is newer than this health check")


def pool(sim: Sim) -> dict[str, Any]:
    return {"apiVersion": "shardwright.io/v1alpha1", "kind": "ServingPool",
            "metadata": {"name": REF.name, "generation": REF.object_generation}, "status": sim.status.to_wire()}


def test_a_serving_pool_s_phase_is_its_health():
    sim = Sim(pool_spec())
    sim.tick()
    assert health(pool(sim)) == ("Progressing", "Pending: 0 of 2 replicas routable (at least 2 wanted)")
    sim.settle()
    assert health(pool(sim)) == ("Healthy", "Running: 2 of 2 replicas routable (at least 2 wanted)")
    new = sim.spec.model_copy(update={"engine": sim.spec.engine.model_copy(update={"max_batch_tokens": 128})})
    sim.spec = new
    sim.tick()
    assert health(pool(sim)) == ("Progressing", f"Updating: 0 of 2 replicas at revision {revision(new)}")
    idle = Sim(pool_spec(replicas=0))
    idle.settle()
    assert health(pool(idle)) == ("Healthy", "ScaledToZero: 0 of 0 replicas routable (at least 0 wanted)")


def test_the_sandbox_is_argo_cd_s():
    """The harness refuses what Argo CD refuses, so a script that passes here runs there."""
    with pytest.raises(lua51.LuaError, match="string"):
        run('return {status = string.format("%s", "Healthy")}', {})
    with pytest.raises(lua51.LuaError, match="index a string value"):
        run('return {status = ("Healthy"):upper()}', {})
    with pytest.raises(lua51.LuaError, match="os"):
        run('return {status = os.getenv("HOME")}', {})
    assert run('return {status = obj.kind .. table.concat({"a", "b"})}', {"kind": "K"}) == {"status": "Kab"}


def test_the_argocd_cm_example_carries_the_script_for_both_kinds():
    (cm,) = [d for d in yaml.safe_load_all(ARGOCD_CM.read_text()) if d]
    assert (cm["kind"], cm["metadata"]["name"], cm["metadata"]["namespace"]) == ("ConfigMap", "argocd-cm", "argocd")
    script = SCRIPT.read_text()
    assert cm["data"] == {f"resource.customizations.health.shardwright.io_{kind}": script for kind in ("TrainingJob", "ServingPool")}
