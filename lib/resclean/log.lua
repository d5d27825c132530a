-- Structured logging: one JSON object a line on stdout, fixed field names.
-- Every line starts {"ts":...,"level":...,"event":... then run_id, then the
-- other fields in a fixed order (FIRST, then by name), so people read the
-- lines as easily as machines. When stdout is the journal (JOURNAL_STREAM
-- names it), each line starts with its syslog priority ("<3>" for error) so
-- `journalctl -p warning` finds warnings and errors; elsewhere stdout stays
-- pure JSON lines.
--
-- Nothing secret is ever passed here; redact() is the last line of defence
-- for messages that may embed credentials. Ids and keys are never redacted:
-- they are what the audit trail is for.
--
-- A write that fails (stdout closed, disk full, reader gone) is remembered:
-- healthy() turns false and the sweep stops before it deletes anything
-- further; a tool that deletes keeps its audit trail or stops.
local cjson = require("cjson")
local sys = require("resclean.sys")

local M = {}

-- The levels, least severe first: the one list of them (the policy's
-- log_level and --log-level take these names).
M.LEVELS = { "debug", "info", "warn", "error" }
local LEVELS = {} -- name -> rank
for i, name in ipairs(M.LEVELS) do LEVELS[name] = i * 10 end
-- syslog priorities, as journald reads them from a "<N>" prefix.
local PRIORITY = { debug = "<7>", info = "<6>", warn = "<4>", error = "<3>" }

local threshold = LEVELS[(sys.getenv("RESCLEAN_LOG_LEVEL") or "info"):lower()] or LEVELS.info
local out = io.stdout
local out_fd = 1
local journal -- nil: not yet known for out_fd
local base = {}
local held = 0 -- hold() depth: while > 0, emit() leaves flushing to release()
local failure -- first write error, or nil

cjson.encode_invalid_numbers(true)
cjson.encode_sparse_array(true)

-- Fields that come right after ts, level, event; the rest follow by name.
local FIRST = { "run_id", "message", "resource_id", "key", "outcome", "reason", "age_s", "dry_run", "exit_code" }
local RANK = {}
for i, k in ipairs(FIRST) do RANK[k] = i end
-- Audit fields: logged exactly, never redacted.
local EXACT = { resource_id = true, key = true, run_id = true, keys = true }

function M.set_level(name)
  local l = LEVELS[name]
  if not l then error(("unknown log level %q (expected debug, info, warn or error)"):format(tostring(name)), 2) end
  threshold = l
end

-- Fields added to every line (run_id, for instance).
function M.set_base(fields) base = fields or {} end
function M.get_base() return base end

-- Where lines go: a Lua file; fd is its descriptor when known (1 for
-- stdout, 2 for stderr), used to tell whether it is the journal.
function M.set_output(file, fd)
  out = file
  out_fd = fd or (file == io.stdout and 1) or (file == io.stderr and 2) or nil
  journal = nil
  failure = nil
end

-- Is the output the journal? JOURNAL_STREAM is "device:inode" of the
-- stream systemd connected; a child with stdout redirected elsewhere
-- inherits the variable but not the stream.
local function is_journal()
  if journal == nil then
    journal = out_fd ~= nil and sys.is_journal(out_fd)
  end
  return journal
end

local ts_secs, ts_prefix -- os.date once a second, not once a line
function M.timestamp(t)
  t = t or sys.time()
  local secs = math.floor(t)
  if secs ~= ts_secs then ts_secs, ts_prefix = secs, os.date("!%Y-%m-%dT%H:%M:%S", secs) end
  return ts_prefix .. (".%03dZ"):format(math.floor((t - secs) * 1000))
end

-- Secrets known to this process (the password of DATABASE_URL, the S3
-- secret): replaced wherever they appear in a message.
local secrets = {}
function M.add_secret(s)
  if type(s) == "string" and #s >= 3 then
    for _, have in ipairs(secrets) do
      if have == s then return end
    end
    secrets[#secrets + 1] = s
    table.sort(secrets, function(a, b) return #a > #b end) -- longest first
  end
end

local function plain_replace(s, what, with)
  local i = 1
  local parts = {}
  while true do
    local a, b = s:find(what, i, true)
    if not a then break end
    parts[#parts + 1] = s:sub(i, a - 1)
    parts[#parts + 1] = with
    i = b + 1
  end
  if #parts == 0 then return s end
  parts[#parts + 1] = s:sub(i)
  return table.concat(parts)
end

-- password=value in a conninfo string, the value quoted ('it''s', 'a\'b')
-- or not: the value is replaced.
local function redact_conninfo_password(s)
  local lower = s:lower()
  local parts, i = {}, 1
  while true do
    local a, b = lower:find("password%s*=%s*", i)
    if not a then break end
    parts[#parts + 1] = s:sub(i, b)
    local j = b + 1
    if s:sub(j, j) == "'" then
      j = j + 1
      while j <= #s do
        local c = s:sub(j, j)
        if c == "\\" then
          j = j + 2
        elseif c == "'" then
          break
        else
          j = j + 1
        end
      end
      parts[#parts + 1] = "'***'"
      i = j + 1
    else
      local e = s:find("[%s&'\"]", j) or (#s + 1)
      parts[#parts + 1] = "***"
      i = e
    end
  end
  if #parts == 0 then return s end
  parts[#parts + 1] = s:sub(i)
  return table.concat(parts)
end

-- Remove credentials that might ride along in messages: the user info of a
-- URI (everything between scheme:// and the last @ of the authority, which
-- also covers a password with an unencoded @), presigned signatures and
-- credentials, password=... in conninfo strings, and registered secrets.
function M.redact(s)
  if type(s) ~= "string" then return s end
  for _, secret in ipairs(secrets) do s = plain_replace(s, secret, "***") end
  -- Every pattern below needs an "=" or an "@": most strings have neither.
  if not s:find("[=@]") then return s end
  s = s:gsub("(%a[%w+.%-]*://)[^%s\"'<>]*@", "%1***@")
  s = s:gsub("([Xx]%-[Aa]mz%-[Ss]ignature=)[%x]+", "%1***")
  s = s:gsub("([Ss]ignature=)[%x]+", "%1***")
  s = s:gsub("([Xx]%-[Aa]mz%-[Cc]redential=)[^&%s]+", "%1***")
  s = s:gsub("([Xx]%-[Aa]mz%-[Ss]ecurity%-[Tt]oken=)[^&%s]+", "%1***")
  return redact_conninfo_password(s)
end

-- cjson escapes "/" as "\/": undo that (and only that) in its output.
local function unslash(j)
  if not j:find("\\/", 1, true) then return j end
  return (j:gsub("\\(.)", function(c) if c == "/" then return "/" end end))
end

local function encode_value(v)
  local t = type(v)
  if t == "string" then return unslash(cjson.encode(v)) end
  if t == "boolean" then return v and "true" or "false" end
  if t == "number" then
    if math.type(v) == "integer" then return tostring(v) end
    return cjson.encode(v)
  end
  return unslash(cjson.encode(v))
end

local function by_rank(a, b)
  local ra, rb = RANK[a], RANK[b]
  if ra and rb then return ra < rb end
  if ra or rb then return ra ~= nil end
  return a < b
end

-- The JSON text of one line (without newline or priority).
function M.encode(level, event, fields)
  local rec = {}
  for k, v in pairs(base) do rec[k] = v end
  for k, v in pairs(fields or {}) do
    if type(v) == "string" and not EXACT[k] then v = M.redact(v) end
    rec[k] = v
  end
  rec.ts, rec.level, rec.event = nil, nil, nil
  local keys = {}
  for k in pairs(rec) do keys[#keys + 1] = tostring(k) end
  table.sort(keys, by_rank)
  local parts = { '{"ts":"', M.timestamp(), '","level":"', level, '","event":', encode_value(event) }
  for _, k in ipairs(keys) do
    parts[#parts + 1] = ","
    parts[#parts + 1] = encode_value(k)
    parts[#parts + 1] = ":"
    parts[#parts + 1] = encode_value(rec[k])
  end
  parts[#parts + 1] = "}"
  return table.concat(parts)
end

local function record_failure(err)
  if not failure then failure = tostring(err or "write failed") end
end

-- Was stdout closed when the process started (the host put /dev/null there)?
local stdout_closed = sys.stdio_closed(1)

-- True while every line so far reached the output; else false and the error.
function M.healthy()
  if not failure and out == io.stdout and stdout_closed then record_failure("standard output is closed") end
  if failure then return false, failure end
  return true
end

-- Push held lines out now and check they went. Returns healthy().
function M.flush()
  local ok, err = out:flush()
  if not ok then record_failure(err) end
  return M.healthy()
end

-- Room for `bytes` more of the log, asked before a commit whose resource
-- lines follow it: held lines are pushed out, and when the output is a
-- regular file its file system allocates the room now (sys.reserve), so a
-- full disk fails here, before the rows go, instead of in the lines after
-- them. Elsewhere (a pipe, the journal) only the writes so far are checked.
-- Returns healthy().
function M.reserve(bytes)
  local ok, err = out:flush()
  if not ok then record_failure(err) end
  if M.healthy() and out_fd and bytes > 0 then
    local done, why = sys.reserve(out_fd, bytes)
    if done == nil then record_failure(why) end
  end
  return M.healthy()
end

-- The event catalogue check (events.lua), for the specs: RESCLEAN_EVENT_CHECK
-- names a file, and a line that code of lib/ or scripts/ emits with an event
-- the catalogue does not list, or at a level it does not give that event,
-- adds "level event at file:line (pid N)" there (once each); the spec runner
-- (spec/support/summary_output.lua) fails the spec during which the file
-- grew. It never raises and never changes a line; unset, it costs one test
-- a line and events.lua is not even loaded.
local check_path = sys.getenv("RESCLEAN_EVENT_CHECK")
if check_path == "" then check_path = nil end
local catalogue, noted
local HERE = debug.getinfo(1, "S").source

local function note(line)
  noted = noted or {}
  if noted[line] then return end
  noted[line] = true
  local f = io.open(check_path, "a")
  if f then
    f:write(line, "\n")
    f:close()
  end
end

local function check_event(level, event, fields)
  if catalogue == nil then
    local ok, c = pcall(require, "resclean.events")
    catalogue = ok and c or false
    if not ok then note("the event catalogue cannot be loaded: " .. tostring(c)) end
  end
  if not catalogue then return end
  local what
  if not catalogue.allowed(level, event) then
    what = ("%s %s"):format(tostring(level), tostring(event))
  else
    local extra = catalogue.unlisted_fields(event, fields)
    if not extra then return end
    what = ("%s %s with unlisted field(s) %s"):format(tostring(level), tostring(event), table.concat(extra, ", "))
  end
  -- Who emitted it: the first caller outside this file. Lines a spec or a
  -- script of its own emits are not the code's.
  local at
  for depth = 3, 30 do
    local info = debug.getinfo(depth, "Sl")
    if not info then break end
    if info.source ~= HERE then
      at = info.source:match("^@(.*)$")
      at = at and (at:match("/lib/resclean/[^/]+%.lua$") or at:match("^lib/resclean/[^/]+%.lua$")
        or at:match("/scripts/[^/]+%.lua$") or at:match("^scripts/[^/]+%.lua$"))
      at = at and (at:gsub("^/", "") .. ":" .. info.currentline)
      break
    end
  end
  if not at then return end
  note(("%s at %s (pid %d)"):format(what, at, sys.pid()))
end

function M.emit(level, event, fields)
  if check_path then check_event(level, event, fields) end
  if LEVELS[level] < threshold then return end
  if out == io.stdout and stdout_closed then
    record_failure("standard output is closed")
    return
  end
  local line = M.encode(level, event, fields)
  local ok, err
  if is_journal() then
    ok, err = out:write(PRIORITY[level], line, "\n")
  else
    ok, err = out:write(line, "\n")
  end
  if not ok then record_failure(err) end
  if held == 0 then
    ok, err = out:flush()
    if not ok then record_failure(err) end
  end
end

-- Between hold() and release(), lines go out when the buffer fills and at
-- release(), not one write each: a batch's resource lines in a few writes.
function M.hold() held = held + 1 end

function M.release()
  held = math.max(held - 1, 0)
  if held == 0 then
    local ok, err = out:flush()
    if not ok then record_failure(err) end
  end
end

-- Should an error also go to stderr as a plain "resclean: ..." line? Not
-- when the log's JSON lines and stderr are one stream (2>&1, a container
-- runtime, the crontab's redirect: fstat's device and inode agree), nor
-- with RESCLEAN_LOG_STDERR=json: the merged stream stays pure JSON lines
-- (the error is in its JSON line). A terminal still gets the plain line.
function M.plain_errors()
  local mode = (sys.getenv("RESCLEAN_LOG_STDERR") or ""):lower()
  if mode == "json" then return false end
  if mode == "plain" then return true end
  if out_fd ~= 1 then return true end -- the log on stderr (status, reconcile): as before
  return not (sys.same_file(1, 2) and not sys.isatty(2))
end

-- A plain error line on stderr, when plain_errors() says so.
function M.stderr(msg)
  if M.plain_errors() then io.stderr:write("resclean: ", msg, "\n") end
end

function M.debug(event, fields) M.emit("debug", event, fields) end
function M.info(event, fields) M.emit("info", event, fields) end
function M.warn(event, fields) M.emit("warn", event, fields) end
function M.error(event, fields) M.emit("error", event, fields) end

return M
