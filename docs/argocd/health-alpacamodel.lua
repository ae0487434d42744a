-- Argo CD health check for alpaca.dev/AlpacaModel (Lua 5.1, as Argo CD runs it).
-- Healthy when Ready; Degraded when Failed or Degraded; Progressing otherwise, with the
-- message of the first stage that is not ready yet, and while an upgrade (Upgrading True)
-- runs on a model that keeps serving, as a Deployment's rollout is Progressing.
local hs = { status = "Progressing", message = "Waiting for the operator to observe the model" }
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
if obj.metadata.generation ~= nil and obj.status.observedGeneration ~= nil
    and obj.status.observedGeneration < obj.metadata.generation then
  hs.message = "The operator has not observed the latest spec yet"
  return hs
end
local first_waiting = nil
local ready = nil
local upgrading = nil
for _, c in ipairs(obj.status.conditions) do
  if c.type == "Ready" then
    ready = c
  elseif c.type == "Upgrading" then
    upgrading = c
  elseif c.status ~= "True" and first_waiting == nil and c.type ~= "Accepted" then
    first_waiting = c
  end
  if c.type == "Accepted" and c.status == "False" then
    first_waiting = c
  end
end
local phase = obj.status.phase
if phase == "Ready" and upgrading ~= nil and upgrading.status == "True" then
  hs.message = "Upgrading (" .. (upgrading.reason or "") .. "): " .. (upgrading.message or "")
  return hs
end
if phase == "Ready" then
  hs.status = "Healthy"
  hs.message = (ready and ready.message) or "Ready"
  return hs
end
local why = first_waiting or ready
if why ~= nil then
  hs.message = why.type .. " (" .. (why.reason or "") .. "): " .. (why.message or "")
end
if phase == "Failed" or phase == "Degraded" then
  hs.status = "Degraded"
end
return hs
