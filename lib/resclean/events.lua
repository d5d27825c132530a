-- The event catalogue: every `event` a log line of resclean can carry, the
-- levels it is logged at and its fields (besides ts, level and event; any
-- line may also carry the process's base fields, run_id and, on a cancel
-- an application requested, via). resclean(1)'s LOGS section lists the same
-- events, in this order: spec/events_doc_spec.lua compares the two, and the
-- emissions it reads in lib/ and scripts/, both ways.
--
-- A new event: an entry here, a .TP entry in resclean(1), LOGS. With
-- RESCLEAN_EVENT_CHECK set (the specs set it), log.lua checks each line
-- the code emits against this table (M.allowed): an event not listed, or
-- at a level not listed for it, fails the spec that caused it.
local M = {}

-- A summary line's fields: run.lua's Run:summary, a count per outcome
-- (outcome.OUTCOMES) besides these.
local SUMMARY = { "run_id", "eligible", "total", "duration_ms", "rate", "oldest_age_s", "skipped_reasons",
  "dry_run", "db_pid", "exit_code", "error", "log_failed" }

local function with(list, more)
  local out = table.move(list, 1, #list, 1, {})
  return table.move(more, 1, #more, #out + 1, out)
end

-- { event, levels, fields }, in resclean(1)'s order.
M.LIST = {
  { "resource", { "info", "warn" }, { "run_id", "resource_id", "key", "age_s", "outcome", "reason", "dry_run",
    "in_doubt_run_id", "requested_by", "request_reason", "request_id", "request" } },
  { "cancel_request", { "info" }, { "run_id", "request", "requested_by", "request_reason", "request_id",
    "waited_s", "ids", "duplicates", "not_found", "not_found_ids" } },
  { "cancel_requested", { "info", "warn" }, { "table", "requests", "ids", "requested_by", "request_reason",
    "request_id", "listeners", "listeners_unknown", "message" } },
  { "bad_keys", { "warn" }, { "run_id", "count", "resource_id", "detail", "message" } },
  { "head_refused", { "warn" }, { "run_id", "count", "key", "code", "message" } },
  { "policy_conflict", { "warn" }, { "run_id", "table", "fingerprint", "other_fingerprint", "other_pid",
    "other_role", "differs", "others", "message" } },
  { "presence_failed", { "debug" }, { "run_id", "message" } },
  { "commit_lost", { "warn" }, { "run_id", "resources", "committed", "detail", "message" } },
  { "in_doubt_settled", { "info" }, { "run_id", "resource_id", "key", "outcome", "in_doubt_run_id", "message" } },
  { "in_doubt_wait", { "info" }, { "run_id", "resources", "message" } },
  { "sweep", { "info", "error" }, with(SUMMARY, { "stopped", "limit_reached", "singleton_busy" }) },
  { "cancel", { "info", "error" }, with(SUMMARY, { "requested_by", "request_reason", "request_id", "requests",
    "more", "requests_unlogged", "detail" }) },
  { "progress", { "info" }, { "run_id", "done", "eligible", "rate", "eta_s", "dry_run" } },
  { "failover", { "warn" }, { "server", "timeline", "previous_timeline", "message" } },
  { "orphan", { "info", "warn" }, { "run_id", "key", "size", "last_modified", "age_s", "outcome", "reason",
    "named_by", "owner" } },
  { "missing_object", { "warn" }, { "run_id", "table", "resource_id", "key", "message" } },
  { "reconcile", { "info", "error" }, { "run_id", "bucket", "apply", "duration_ms", "listed", "considered",
    "recent", "candidates", "owned", "kept", "orphans", "planned", "object_deleted", "failed", "refused",
    "unprovable", "missing_objects", "older_than_s", "delete_limit", "stopped", "error" } },
  { "start", { "info" }, { "script", "pid", "host", "policy", "table", "bucket", "version", "once", "dry_run",
    "apply", "ids", "notify" } },
  { "error", { "error" }, { "message", "exit_code" } },
  { "policy_invalid", { "error" }, { "message", "detail" } },
  { "stopping", { "error" }, { "exit_code", "message" } },
  { "singleton_busy", { "info" }, { "run_id", "message" } },
  { "claim_seq_scan", { "warn" }, { "run_id", "table", "rows", "message", "index" } },
  { "pipeline_off", { "info" }, { "run_id", "message", "detail" } },
  { "batch", { "debug" }, { "run_id", "claimed", "processed", "duration_ms", "claim_ms", "rows_ms", "head_ms",
    "delete_ms", "commit_ms", "log_ms", "wait_ms" } },
  { "bad_key", { "debug" }, { "run_id", "resource_id", "detail" } },
  { "head_concurrency", { "debug" }, { "from", "to", "keys", "ms", "retries" } },
  { "delete_parts", { "debug" }, { "from", "to", "keys", "retries" } },
  { "delete_retry", { "debug" }, { "keys", "code", "attempt", "wait_ms" } },
  { "verify_by_list", { "debug" }, { "pages", "keys", "expected", "ms" } },
  { "verify_by_head", { "debug" }, { "pages", "keys", "expected", "detail" } },
  { "listening", { "info", "warn" }, { "channel", "table", "reconnected", "message" } },
  { "listen_failed", { "warn" }, { "channel", "attempt", "retry_in_s", "message" } },
  { "listen_lost", { "warn" }, { "channel", "message" } },
  { "listen_unavailable", { "warn" }, { "channel", "setting", "message" } },
  { "cancel_requests_missing", { "debug", "warn" }, { "table", "message" } },
  { "cancel_requests_forbidden", { "warn" }, { "table", "role", "message" } },
  { "cancel_requests_failed", { "error" }, { "exit_code", "message", "detail" } },
  { "notify_payload_ignored", { "warn" }, { "channel", "notifications", "ids", "sender_pid", "message" } },
  { "metrics_write_failed", { "warn" }, { "path", "message" } },
  { "metrics_pushed", { "info" }, { "url", "exit_code" } },
  { "metrics_push_failed", { "warn" }, { "message", "detail" } },
  { "row_security", { "warn" }, { "run_id", "tables", "message" } },
  { "unreadable_tables", { "warn" }, { "run_id", "tables", "message" } },
}

-- Fields any line may carry: the process's base fields (log.set_base).
M.BASE_FIELDS = { "run_id", "via" }
-- The summary lines and a request's line also count each outcome (outcome.OUTCOMES).
local COUNTED = { sweep = true, cancel = true, cancel_request = true }

-- event -> { levels = {level = true}, fields = {...}, field = {name = true} }
M.EVENTS = {}
for _, e in ipairs(M.LIST) do
  local levels, field = {}, {}
  for _, l in ipairs(e[2]) do levels[l] = true end
  for _, f in ipairs(e[3]) do field[f] = true end
  for _, f in ipairs(M.BASE_FIELDS) do field[f] = true end
  if COUNTED[e[1]] then
    for _, f in ipairs(require("resclean.outcome").OUTCOMES) do field[f] = true end
  end
  M.EVENTS[e[1]] = { levels = levels, fields = e[3], field = field }
end

-- May event be logged at level?
function M.allowed(level, event)
  local e = M.EVENTS[event]
  return e ~= nil and e.levels[level] == true
end

-- The fields of a line of event (a known one) the catalogue does not list,
-- sorted; nil when there are none.
function M.unlisted_fields(event, fields)
  local e = M.EVENTS[event]
  if not e or type(fields) ~= "table" then return nil end
  local out
  for k in pairs(fields) do
    if not e.field[k] then
      out = out or {}
      out[#out + 1] = tostring(k)
    end
  end
  if out then table.sort(out) end
  return out
end

return M
