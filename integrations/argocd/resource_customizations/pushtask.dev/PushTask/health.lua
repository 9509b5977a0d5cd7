-- Argo CD health of a PushTask (pushtask.dev). The operator writes kstatus conditions
-- (Reconciling, Stalled) beside its seven phases; this script follows them, and shows the
-- phases a person or the schedule holds as Suspended. The table: docs/gitops.md.
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

local function is_true(status, ctype)
  local c = condition(status, ctype)
  return c ~= nil and c.status == "True"
end

local function describe(status, detail)
  local phase = status.phase or "Unknown"
  local text = detail
  if text == nil or text == "" then
    text = status.message
  end
  if text == nil or text == "" then
    return phase
  end
  if string.lower(string.sub(text, 1, #phase)) == string.lower(phase) then
    return phase .. string.sub(text, #phase + 1) -- "paused: ..." already names the phase
  end
  return phase .. ": " .. text
end

local status = obj.status
if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to accept the task"
  return hs
end

if obj.metadata.generation ~= nil and status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(obj.metadata.generation)
  return hs
end

if is_true(status, "Stalled") then
  hs.status = "Degraded"
  hs.message = describe(status, condition(status, "Stalled").message)
  return hs
end

-- Held by a person (spec.state Paused or Stopped) or by a priority tier degraded at a peak.
local ready = condition(status, "Ready")
local held = ready ~= nil and (ready.reason == "StartHeld" or ready.reason == "Degraded")
if status.phase == "Paused" or status.phase == "Stopped" or (status.phase == "Ready" and held) then
  hs.status = "Suspended"
  hs.message = describe(status, nil)
  return hs
end

if is_true(status, "Reconciling") then
  hs.status = "Progressing"
  local c = condition(status, "Reconciling")
  local counts = status.counts
  local detail = c.message
  if counts ~= nil and counts.audience ~= nil and counts.audience > 0 then
    detail = string.format("%s (%d of %d sent)", detail or "", counts.sent or 0, counts.audience)
  end
  hs.message = describe(status, detail)
  return hs
end

-- At rest: Finished (Complete), or waiting for startAt or the next cron firing.
hs.status = "Healthy"
local scheduled = condition(status, "Scheduled")
if status.phase == "Ready" and scheduled ~= nil and scheduled.status == "True" then
  local last = status.message
  if status.reason == "AwaitingNextFiring" and last ~= nil and last ~= "" then
    hs.message = describe(status, last .. "; " .. scheduled.message)
  else
    hs.message = describe(status, scheduled.message)
  end
else
  hs.message = describe(status, nil)
end
return hs
