-- Argo CD health of Shardwright's TrainingJob and ServingPool, from the status the operator
-- writes (docs/gitops.md#argo-cd-health). The same script serves both kinds' argocd-cm keys:
--   resource.customizations.health.shardwright.io_TrainingJob
--   resource.customizations.health.shardwright.io_ServingPool
-- Argo CD gives it the object as `obj` and runs it without Lua's standard libraries, so it
-- uses base functions only. A running job is Progressing, as a running batch Job is.

-- Per kind and phase: the health, and the condition whose message says why.
local phases = {
  TrainingJob = {
    Pending = {"Progressing", "Running"},
    Running = {"Progressing", "Running"},
    Restarting = {"Progressing", "Restarting"},
    Suspended = {"Suspended", "Suspended"},
    Complete = {"Healthy", "Complete"},
    Failed = {"Degraded", "Failed"},
  },
  ServingPool = {
    Pending = {"Progressing", "Available"},
    Updating = {"Progressing", "Progressing"},
    Running = {"Healthy", "Available"},
    ScaledToZero = {"Healthy", "Available"},
    Failed = {"Degraded", "Available"},
  },
}

local hs = {}
local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator"
  return hs
end

-- observedGeneration is the spec that runs: an edit not yet running is still on its way.
local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the spec to run: generation " .. generation .. ", running " .. (status.observedGeneration or "none")
  return hs
end

local known = (phases[obj.kind] or {})[status.phase]
if known == nil then
  hs.status = "Unknown"
  hs.message = "Phase " .. status.phase .. " is newer than this health check"
  return hs
end

hs.status = known[1]
hs.message = status.phase
if obj.kind == "TrainingJob" then
  hs.message = hs.message .. " at step " .. (status.step or 0)
end
for _, condition in ipairs(status.conditions or {}) do
  if condition.type == known[2] and condition.message ~= nil and condition.message ~= "" then
    hs.message = hs.message .. ": " .. condition.message
  end
end
return hs
