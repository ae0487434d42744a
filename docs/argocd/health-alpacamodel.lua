-- Argo CD health check for alpaca.dev/AlpacaModel (Lua 5.1, as Argo CD runs it).
-- Healthy when Ready; Degraded when Failed or Degraded; Progressing otherwise, with the
-- message of the first stage that is not ready yet.
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
for _, c in ipairs(obj.status.conditions) do
  if c.type == "Ready" then
    ready = c
  elseif c.status ~= "True" and first_waiting == nil and c.type ~= "Accepted" then
    first_waiting = c
  end
  if c.type == "Accepted" and c.status == "False" then
    first_waiting = c
  end
end
local phase = obj.status.phase
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
