-- Argo CD health check for deepdetect.io/DeepDetectService.
-- Install: resource.customizations.health.deepdetect.io_DeepDetectService in argocd-cm
-- (see argocd-cm-patch.yaml next to this file, and docs/install.md "Argo CD").
--
-- Mapping, first match wins:
--   no status / observedGeneration < generation   -> Progressing (the operator has not seen this spec yet)
--   phase Failed or Degraded, or Degraded=True      -> Degraded   (reason: message from the condition)
--     (incl. ValidationFailed: a new checkpoint failed its quality gate; the old one serves)
--   spec.replicas 0 with autoscaling off            -> Suspended  (scaled to zero on purpose)
--   phase Ready and condition Ready=True            -> Healthy
--   phase Pending/Progressing, Progressing=True,
--   or Ready not (yet) True                         -> Progressing
--     (incl. reason Validating: a candidate's validation Job runs, nothing rolls yet)
--   anything else                                   -> Unknown
-- Argo CD itself reports Missing when the object does not exist; this script runs only when it does.
local hs = {}

local function condition(status, ctype)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function describe(c, fallback)
  if c == nil then
    return fallback
  end
  local text = c.reason or fallback
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. c.message
  end
  return text
end

local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the DeepDetect operator to report status"
  return hs
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local phase = status.phase or ""
local ready = condition(status, "Ready")
local degraded = condition(status, "Degraded")
local progressing = condition(status, "Progressing")

local degraded_true = degraded ~= nil and degraded.status == "True"
if phase == "Failed" or phase == "Degraded" or degraded_true then
  hs.status = "Degraded"
  if degraded_true then
    hs.message = describe(degraded, "Degraded")
  else
    hs.message = "Phase " .. phase
  end
  return hs
end

local spec = obj.spec or {}
local autoscaling = spec.autoscaling or {}
if spec.replicas == 0 and autoscaling.enabled == false then
  hs.status = "Suspended"
  hs.message = "Scaled to zero replicas"
  return hs
end

local model = status.model or {}
if phase == "Ready" and ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = tostring(status.readyReplicas or 0) .. "/" .. tostring(status.replicas or 0) .. " ready"
  if model.digest ~= nil and model.digest ~= "" then
    hs.message = hs.message .. ", serving " .. model.digest
  end
  return hs
end

if phase == "Pending" or phase == "Progressing" or phase == "Ready"
    or (progressing ~= nil and progressing.status == "True")
    or (ready ~= nil and ready.status ~= "True") then
  hs.status = "Progressing"
  if progressing ~= nil and progressing.status == "True" then
    hs.message = describe(progressing, "Progressing")
  else
    hs.message = describe(ready, "Waiting for ready replicas")
  end
  return hs
end

hs.status = "Unknown"
hs.message = "Unrecognised status phase '" .. phase .. "'"
return hs
