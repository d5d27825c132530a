-- --metrics-push URL: a --once run (systemd timer, cron, Kubernetes CronJob)
-- pushes its series to a Prometheus Pushgateway when it ends, whatever its
-- exit code, also when it failed before its first cycle.
--
-- The grouping key: URL/metrics/job/resclean/instance/<hostname> (PUT: each
-- run replaces the group's series). A URL whose path already holds
-- /metrics/job/... is used as given, so a CronJob (whose pods' hostnames
-- change every run) names a stable instance itself:
--   --metrics-push http://pushgateway:9091/metrics/job/resclean/instance/cipherswarm
local log = require("resclean.log")
local sys = require("resclean.sys")

local M = {}

M.TIMEOUT = 10 -- seconds for the push; a gateway that does not answer costs a run no more
M.JOB = "resclean"

-- A grouping-key value as a path segment: anything but [A-Za-z0-9_.-] is
-- percent-encoded ("/" would end the segment).
local function segment(v)
  return (tostring(v):gsub("[^%w_%.%-]", function(c) return ("%%%02X"):format(c:byte()) end))
end

-- The URL to push to, or nil, message (exit 2: the flag is wrong).
function M.url(base, hostname)
  base = tostring(base or "")
  if not base:match("^https?://[^/%s]+") or base:find("%s") then
    return nil, ("--metrics-push %q: expected the Pushgateway's http:// or https:// URL, e.g. "
      .. "http://pushgateway:9091"):format(log.redact(base))
  end
  if base:find("/metrics/job/", 1, true) then return base end
  return ("%s/metrics/job/%s/instance/%s"):format(base:gsub("/+$", ""), M.JOB,
    segment(hostname or sys.hostname()))
end

-- PUT text to url. Returns true or nil, message (the URL's credentials
-- never in it).
function M.send(url, text, request)
  request = request or require("resclean.push_http").request
  local status, body = request("PUT", url, text, "text/plain; version=0.0.4", M.TIMEOUT,
    sys.getenv("RESCLEAN_PUSH_CA_BUNDLE"))
  if not status then
    return nil, ("cannot push metrics to %s: %s"):format(log.redact(url), log.redact(tostring(body)))
  end
  if status < 200 or status > 299 then
    return nil, ("the Pushgateway at %s answered %d: %s"):format(log.redact(url), status,
      log.redact((tostring(body):gsub("%s+$", ""))))
  end
  return true
end

return M
