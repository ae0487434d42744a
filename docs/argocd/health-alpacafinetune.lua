-- Argo CD health check for alpaca.dev/AlpacaFineTune (Lua 5.1, as Argo CD runs it).
-- Healthy when Succeeded; Degraded when Failed; Suspended when suspended or queued;
-- Progressing while pending or running, with the training progress.
local hs = { status = "Progressing", message = "Waiting for the operator to observe the fine-tune" }
if obj.status == nil or obj.status.phase == nil then
  return hs
end
local phase = obj.status.phase
local message = nil
if obj.status.conditions ~= nil then
  for _, c in ipairs(obj.status.conditions) do
    if c.status ~= "True" and c.type ~= "Succeeded" and c.type ~= "Served" and message == nil then
      message = c.type .. " (" .. (c.reason or "") .. "): " .. (c.message or "")
    end
  end
end
if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = "Fine-tuned model at " .. (obj.status.output or "the output volume")
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = message or "Failed"
elseif phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = message or "Suspended"
elseif phase == "Running" and obj.status.progress ~= nil and obj.status.progress.summary ~= nil then
  hs.message = "Training " .. obj.status.progress.summary
else
  hs.message = message or phase
end
return hs
