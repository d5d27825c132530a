-- The preflight (resclean run check): everything a sweep needs, verified
-- without deleting anything, one item at a time:
--   policy, max_age, database, primary, pooler, schema, grants, index, keys,
--   bucket, head, delete, clock, metrics, cancel, sweepers
-- Each item is {item, status, message[, fix][, details...]} (check_item.lua);
-- the database items are check_db.lua's, the storage items check_storage.lua's.
-- M.exit_code: 2 when any item fails, else 3 when any is unreachable, else 0.
-- Nothing is deleted: the only write is a DeleteObjects of a random key that
-- a HEAD just found missing (harmless: S3 answers it "deleted" either way).
local check_db = require("resclean.check_db")
local check_storage = require("resclean.check_storage")
local cjson = require("cjson")
local errors = require("resclean.errors")
local log = require("resclean.log")
local policy_mod = require("resclean.policy")

local M = {}

-- max_age must exceed url_lifetime by this much: an upload may start at the
-- last second of its URL and take a while, and S3 accepts a URL signed by a
-- clock up to 15 minutes behind its own.
M.MAX_AGE_MARGIN = 900
-- Clock differences (seconds) worth a warning, and those to fix: S3 refuses
-- requests signed 15 minutes off, and the logs' times must agree with the
-- database's.
M.SKEW_WARN = 30
M.SKEW_FAIL = 300

local human = policy_mod.human_age

-- 2 when something is to fix, else 3 when something did not answer, else 0.
function M.exit_code(items)
  local unreachable = false
  for _, it in ipairs(items) do
    if it.status == "fail" then return errors.EXIT.usage end
    if it.status == "unreachable" then unreachable = true end
  end
  return unreachable and errors.EXIT.unreachable or errors.EXIT.ok
end

-- ------------------------------------------------------------------ policy

local function check_max_age(p)
  local need = p.url_lifetime + M.MAX_AGE_MARGIN
  local msg = ("max_age %s, url_lifetime %s"):format(human(p.max_age), human(p.url_lifetime))
  if p.max_age < need then
    return { item = "max_age", status = "fail", max_age_s = p.max_age, url_lifetime_s = p.url_lifetime,
             message = msg .. (": max_age leaves less than %s after a presigned URL expires; an upload still "
               .. "in progress could be deleted"):format(human(M.MAX_AGE_MARGIN)),
             fix = ("set max_age to at least url_lifetime + %s (%s) in the policy"):format(human(M.MAX_AGE_MARGIN),
               human(need)) }
  end
  return { item = "max_age", status = "ok", max_age_s = p.max_age, url_lifetime_s = p.url_lifetime,
           message = msg .. (": uploads get %s past their URL's expiry"):format(human(p.max_age - p.url_lifetime)) }
end

-- ------------------------------------------------------------------ clock

local function signed(s)
  local n = s >= 0 and math.floor(s + 0.5) or -math.floor(-s + 0.5)
  if n == 0 then return "in step with" end
  return ("%d s %s"):format(math.abs(n), n > 0 and "ahead of" or "behind")
end

local function check_clock(db, s3, s3_refused)
  local parts, worst = {}, 0
  local item = { item = "clock" }
  if db then
    item.skew_database_s = math.floor(db * 10 + 0.5) / 10
    parts[#parts + 1] = ("%s the database's now()"):format(signed(db))
    worst = math.max(worst, math.abs(db))
  end
  if s3 then
    item.skew_s3_s = s3
    parts[#parts + 1] = ("%s S3's Date"):format(signed(s3))
    worst = math.max(worst, math.abs(s3) - 1) -- Date has whole seconds
  end
  if #parts == 0 then
    if s3_refused then
      item.status, item.message = "fail", "S3 refused a request as RequestTimeTooSkewed"
      item.fix = "synchronise the host clock (NTP)"
      return item
    end
    item.status, item.message = "skip", "neither the database nor S3 answered with its time"
    return item
  end
  item.message = "the host clock is " .. table.concat(parts, " and ")
  if worst > M.SKEW_FAIL or s3_refused then
    item.status = "fail"
    item.fix = "synchronise the host clock (NTP): S3 refuses requests signed 15 minutes off, and ages and log "
      .. "times must agree with the database"
  elseif worst > M.SKEW_WARN then
    item.status = "warn"
    item.fix = "check NTP on the host"
  else
    item.status = "ok"
  end
  return item
end

-- ------------------------------------------------------------------ the run

-- opts: load_policy() -> p | nil, err; pg; conninfo; direct_conninfo (or nil); open_store(p) -> store | nil, code,
-- msg (unchecked); metrics_file (or nil); emit(item), called as each item is known.
-- Returns the items and the exit code.
function M.run(opts)
  local items = {}
  local function add(item)
    item.message = log.redact(item.message or "")
    if item.fix then item.fix = log.redact(item.fix) end
    items[#items + 1] = item
    if opts.emit then opts.emit(item) end
    return item
  end

  local p, perr = opts.load_policy()
  if not p then
    add({ item = "policy", status = "fail", message = perr.message,
          fix = "fix the policy file (the message names it and the field); nothing else was checked" })
    return items, M.exit_code(items)
  end
  add({ item = "policy", status = "ok", source = p.source,
        message = ("%s: table %s, bucket %s, batch_size %d, verify %s"):format(p.source, p.table, p.bucket,
          p.batch_size, tostring(p.verify)) })
  add(check_max_age(p))

  local conn, db_skew, sample_keys, standby, pooled = check_db.check_database(p, opts, add)
  local s3_skew, s3_refused = check_storage.check_storage(p, opts, add, sample_keys)
  add(check_clock(db_skew, s3_skew, s3_refused))

  if opts.metrics_file then
    local ok, err = require("resclean.metrics").new(opts.metrics_file):check()
    if ok then
      add({ item = "metrics", status = "ok", message = ("metrics file %s can be written"):format(opts.metrics_file) })
    else
      add({ item = "metrics", status = "fail", message = err.message,
            fix = "give --metrics-file a folder resclean's user can create files in" })
    end
  else
    add({ item = "metrics", status = "skip", message = "not configured (check --metrics-file FILE checks it)" })
  end

  if conn and standby then
    -- LISTEN is refused during recovery: the primary item already says what to fix.
    add({ item = "cancel", status = "skip", message = "not checked: the database is a standby" })
    add({ item = "sweepers", status = "skip", message = "not checked: the database is a standby" })
    conn:close()
  elseif conn then
    add(check_db.check_cancel(conn, p, pooled))
    add(check_db.check_sweepers(conn, p))
    conn:close()
  else
    add({ item = "cancel", status = "skip", message = "not checked: no database session" })
    add({ item = "sweepers", status = "skip", message = "not checked: no database session" })
  end
  return items, M.exit_code(items)
end

-- ------------------------------------------------------------------ output

local LABEL = { ok = "ok", warn = "warn", fail = "FAIL", unreachable = "DOWN", skip = "skip" }

-- One JSON object, item, status, message and fix first (as a person reads it), the
-- details after in name order.
local FIRST = { "item", "status", "message", "fix" }
function M.json_line(it)
  local parts, seen = {}, {}
  for _, k in ipairs(FIRST) do
    seen[k] = true
    if it[k] ~= nil then parts[#parts + 1] = cjson.encode(k) .. ":" .. cjson.encode(it[k]) end
  end
  local rest = {}
  for k in pairs(it) do if not seen[k] then rest[#rest + 1] = k end end
  table.sort(rest)
  for _, k in ipairs(rest) do parts[#parts + 1] = cjson.encode(k) .. ":" .. cjson.encode(it[k]) end
  return "{" .. table.concat(parts, ",") .. "}"
end

-- One line of the report for a person.
function M.human_line(it)
  local line = ("%-4s  %-8s  %s"):format(LABEL[it.status] or it.status, it.item, it.message)
  if it.fix then line = line .. " -- fix: " .. it.fix end
  return line
end

-- The report's last line: counts by status (counts: status -> n) and the exit code.
function M.summary_line(counts, code)
  return ("check: %d ok, %d warn, %d to fix, %d unreachable, %d not checked: exit %d"):format(
    counts.ok or 0, counts.warn or 0, counts.fail or 0, counts.unreachable or 0, counts.skip or 0, code)
end

return M
