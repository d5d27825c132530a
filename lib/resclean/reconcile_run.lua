-- A run of reconcile: plan, then apply. Built on run.lua's Run (its id,
-- clock, counts and summary line), with reconcile's own counts, its line
-- per object (event "orphan") and its report.
--
-- Plan, then apply: every page of the listing is planned first; only a
-- complete plan with no refusal and within the mass-delete valve
-- (reconcile_max_delete_fraction of the candidates, or --max-delete N)
-- is applied, so a run that refuses deletes nothing. Just before each
-- DeleteObjects the owners and every readable table are asked again (a
-- row may have appeared). A listing that would never end (a token given
-- twice, keys out of order, pages without objects) ends the run unapplied.
--
-- Only rows the role sees protect objects: --apply refuses while
-- row-level security hides rows of an owner or readable table.
local errors = require("resclean.errors")
local log = require("resclean.log")
local names_mod = require("resclean.reconcile_names")
local owners_mod = require("resclean.reconcile_owners")
local policy_mod = require("resclean.policy")
local runs = require("resclean.run")
local sys = require("resclean.sys")

local M = {}

local human_age = policy_mod.human_age -- one spelling of an age, with status

-- ------------------------------------------------------------ pure decisions

-- The mass-delete valve. would: objects the plan deletes; candidates:
-- objects that could be orphans (key matches key_pattern, older than the
-- cutoff; a key that can never be deleted does not dilute the fraction);
-- fraction: the policy's reconcile_max_delete_fraction; max: the
-- --max-delete count or nil. Returns true, limit or nil, message.
function M.valve(would, candidates, fraction, max)
  local limit = max or math.floor(fraction * candidates + 1e-9)
  if would <= limit then return true, limit end
  local what = ("would delete %d of %d candidates (%.1f%%; candidates: objects matching key_pattern and older "
    .. "than the cutoff)"):format(would, candidates, candidates > 0 and would * 100 / candidates or 100)
  if max then
    return nil, ("reconcile --apply refused: %s, limit %d (--max-delete %d); nothing was deleted. "
      .. "Check the plan (run without --apply), then pass --max-delete %d to allow it"):format(what, limit, max, would)
  end
  return nil, ("reconcile --apply refused: %s, limit %d (reconcile_max_delete_fraction %g of the candidates); "
    .. "nothing was deleted. Check the plan (run without --apply), then pass --max-delete %d to allow it, or "
    .. "raise reconcile_max_delete_fraction in the policy"):format(what, limit, fraction, would)
end

-- The listing's bound. S3 gives each key once, in ascending byte order,
-- and each continuation token once; a listing that breaks this (a token
-- given again, a key not after the one before it, a truncated page without
-- a token) or that sends more than EMPTY_PAGES pages beyond one per key
-- would plan forever. Returns check(page): nil while the listing is sane,
-- else what happened (the run ends, exit 3, nothing deleted).
M.EMPTY_PAGES = 100
local function count(n, what) return ("%d %s%s"):format(n, what, n == 1 and "" or "s") end
function M.listing_guard()
  local tokens, last, pages, keys = {}, nil, 0, 0
  return function(page)
    pages = pages + 1
    local t = page.truncated and page.next_continuation
    if page.truncated and (not t or t == "") then
      return ("page %d of the listing is truncated but gives no continuation token"):format(pages)
    end
    if t and tokens[t] then
      return ("the listing repeats a continuation token after %s and %s: it would never end")
        :format(count(pages, "page"), count(keys, "object"))
    end
    for _, e in ipairs(page.keys or {}) do
      if last and e.key <= last then
        return ("the listing went back: key %q came after %q (page %d): S3 lists each key once, in "
          .. "ascending order"):format(e.key, last, pages)
      end
      last, keys = e.key, keys + 1
    end
    if t and pages > keys + M.EMPTY_PAGES then
      return ("the listing sent %s for %s (more than %d pages without an object): it would never end")
        :format(count(pages, "page"), count(keys, "object"), M.EMPTY_PAGES)
    end
    if t then tokens[t] = true end
    return nil
  end
end

-- ------------------------------------------------------------ a run

local Run = setmetatable({}, { __index = runs.Run })
Run.__index = Run

M.COUNTS = { "listed", "considered", "recent", "candidates", "owned", "kept", "orphans", "planned",
             "object_deleted", "failed", "refused", "unprovable", "missing_objects" }

-- opts: policy, apply, human (the report on out, else nothing but the log),
-- out (default io.stdout), page_size (keys listed, checked and deleted at a
-- time), run_id (the start line's; else a new one).
function M.new(opts)
  local r = runs.new({ policy = opts.policy, counts = M.COUNTS, run_id = opts.run_id })
  r.apply, r.human, r.out, r.page_size = opts.apply, opts.human, opts.out or io.stdout, opts.page_size
  r.plan = {}       -- with apply: orphans to delete, in listing order (counts.orphans: all)
  r.refusals = {}   -- {entry, cols}: keys named by a column no owner covers
  r.unprovable = {} -- entries whose owner cannot be proven
  return setmetatable(r, Run)
end

function Run:say(fmt, ...)
  if self.human then self.out:write(fmt:format(...), "\n") end
end

local WHAT = { planned = "would delete", object_deleted = "deleted" }

function Run:orphan(entry, outcome, reason, extra)
  self.counts[outcome] = self.counts[outcome] + 1
  local f = {
    run_id = self.run_id, key = entry.key, size = entry.size, last_modified = entry.last_modified,
    age_s = math.floor(entry.age_s), outcome = outcome, reason = reason,
  }
  for k, v in pairs(extra or {}) do f[k] = v end
  local bad = outcome == "failed" or outcome == "refused" or outcome == "unprovable"
  self.emit(bad and "warn" or "info", "orphan", f)
  local why = f.named_by and ("named by " .. f.named_by) or f.owner and ("now owned by " .. f.owner)
    or tostring(reason)
  local what = WHAT[outcome] or outcome == "kept" and ("kept: " .. why)
    or outcome == "refused" and ("REFUSED: " .. why .. " (not an owner)")
    or outcome == "unprovable" and "REFUSED: owner cannot be proven (set key_id)"
    or ("%s (%s)"):format(outcome:upper(), why)
  self:say("orphan   %s  %s bytes  modified %s (%s ago)  %s", entry.key, tostring(entry.size or "?"),
    tostring(entry.last_modified), human_age(entry.age_s), what)
end

function Run:missing(owner, key)
  self.counts.missing_objects = self.counts.missing_objects + 1
  log.warn("missing_object", {
    run_id = self.run_id, table = owner.table, resource_id = key, key = key,
    message = "the row is marked uploaded but its object is missing; not changed",
  })
  self:say("missing  %s  confirmed row in %s has no object (reported only)", key, owner.table)
end

-- Confirmed rows of each owner in key range (lo, hi] whose key is not in
-- present; HEAD double-checks them (a PUT may have landed after the
-- listing). Returns true or nil, err.
function Run:check_range(conn, store, owners, lo, hi, present)
  for _, o in ipairs(owners) do
    if o.range_sql then
      local from = lo
      while true do
        local sql, args = o.range_sql(from, hi)
        local res, err = conn:query(sql, table.unpack(args))
        if not res then return nil, err end
        local absent = {}
        for _, r in ipairs(res) do
          if not present[r.k] then absent[#absent + 1] = r.k end
        end
        if #absent > 0 then
          local heads = store:head_many(absent, self.policy.concurrency)
          for i, k in ipairs(absent) do
            if heads[i] == false then self:missing(o, k) end
          end
        end
        if #res < self.page_size then break end
        from = res[#res].k
      end
    end
  end
  return true
end

local function names_of(cols)
  local out = {}
  for i, c in ipairs(cols) do out[i] = c.name end
  return table.concat(out, ", ")
end

-- The candidates among a page's entries (key_pattern, modified before the
-- cutoff: e.mtime, LastModified read by client:list) and their keys; the
-- set of keys listed, and the last UUID key (for Run:check_range).
function Run:candidates(entries, db_now, cutoff)
  local candidates, keys, present = {}, {}, {}
  local last_uuid
  for _, e in ipairs(entries) do
    self.counts.listed = self.counts.listed + 1
    present[e.key] = true
    if e.key:find(policy_mod.UUID_PATTERN) then last_uuid = e.key end
    if policy_mod.check_key(self.policy, e.key) then
      self.counts.considered = self.counts.considered + 1
      local lm = e.mtime
      if lm and lm < cutoff then
        e.age_s = db_now() - lm
        self.counts.candidates = self.counts.candidates + 1
        candidates[#candidates + 1] = e
        keys[#keys + 1] = e.key
      else
        self.counts.recent = self.counts.recent + 1
      end
    end
  end
  return candidates, keys, present, last_uuid
end

-- Plan one page of the listing: candidates, their owners, the rows that
-- name the rest. Nothing is deleted here. Returns true or nil, err.
function Run:plan_page(conn, store, ctx, entries, db_now, cutoff, range)
  local p = self.policy
  local candidates, keys, present, last_uuid = self:candidates(entries, db_now, cutoff)
  if #keys > 0 then
    local owned, unprovable = owners_mod.owned(conn, p, ctx.owners, keys)
    if not owned then return nil, unprovable end
    local bad = {}
    for _, k in ipairs(unprovable) do bad[k] = true end
    local rest, rkeys = {}, {}
    for _, e in ipairs(candidates) do
      if owned[e.key] then
        self.counts.owned = self.counts.owned + 1
      elseif bad[e.key] then
        self.unprovable[#self.unprovable + 1] = e
      else
        rest[#rest + 1] = e
        rkeys[#rkeys + 1] = e.key
      end
    end
    local named, err = names_mod.named(conn, ctx.tables, rkeys)
    if not named then return nil, err end
    for _, e in ipairs(rest) do
      local cols = named[e.key]
      if not cols then
        -- Only --apply keeps its orphans (to delete them, or to log them all
        -- when refused); a plan logs each as it is found and keeps the count,
        -- so its memory does not grow with the bucket's orphans.
        self.counts.orphans = self.counts.orphans + 1
        if self.apply then self.plan[#self.plan + 1] = e else self:orphan(e, "planned") end
      else
        local foreign = {}
        for _, c in ipairs(cols) do
          if not c.covered then foreign[#foreign + 1] = c end
        end
        if #foreign > 0 then
          self.refusals[#self.refusals + 1] = { entry = e, cols = foreign }
        else
          self:orphan(e, "kept", "named_by_row", { named_by = names_of(cols) })
        end
      end
    end
  end
  if last_uuid then
    local ok, err = self:check_range(conn, store, ctx.owners, range.lo, last_uuid, present)
    if not ok then return nil, err end
    range.lo = last_uuid
  end
  return true
end

-- Plan every page of the listing (nothing is deleted), then the confirmed
-- rows past the last key. A listing that would never end (M.listing_guard)
-- ends the run. Returns true or nil, err.
function Run:plan_all(conn, store, ctx, db_now, cutoff)
  local bucket = self.policy.bucket
  local range, token, guard = {}, nil, M.listing_guard()
  repeat
    local page, err = store:list({ continuation = token, max = self.page_size })
    local bad = page and guard(page)
    if bad then
      err = errors.new("transient", bad)
    elseif err and errors.classify(err) == "item" then
      err.class = "transient" -- a reply that is not a listing: as when the storage cannot be reached, exit 3
    end
    if err then
      err.message = ("storage bucket %q: %s; the plan is unfinished: nothing was deleted"):format(bucket,
        tostring(err.message))
      return nil, err
    end
    local ok
    ok, err = self:plan_page(conn, store, ctx, page.keys or {}, db_now, cutoff, range)
    if not ok then return nil, err end
    token = page.truncated and page.next_continuation or nil
  until not token or sys.stopping()
  if sys.stopping() then return true end
  return self:check_range(conn, store, ctx.owners, range.lo, nil, {})
end

-- Row-level security that hides rows (reconcile_owners.hidden_rows): a
-- warn line naming the tables and what lets the role see every row; with
-- --apply, the refusal. Returns true to go on, or nil, err.
function Run:check_hidden(conn, ctx)
  local hidden, forced, role = owners_mod.hidden_rows(conn, ctx)
  if not hidden then return nil, forced end
  if #hidden == 0 then return true end
  local force = #forced > 0
  local msg = ("row-level security hides rows of %s from role %s%s: objects those rows name would look orphaned. "
    .. "Let the role see every row: ALTER ROLE %s BYPASSRLS, or a policy such as CREATE POLICY resclean_reads_all "
    .. "ON %s FOR SELECT TO %s USING (true), or run reconcile as the table's owner%s"):format(
    table.concat(hidden, ", "), role,
    force and (" (FORCE ROW LEVEL SECURITY on %s: it applies to the owner too)"):format(table.concat(forced, ", "))
      or "", role, hidden[1], role, force and " without FORCE ROW LEVEL SECURITY" or "")
  log.warn("row_security", { run_id = self.run_id, tables = table.concat(hidden, ", "), message = msg })
  if self.apply then return nil, "reconcile --apply refused, nothing deleted: " .. msg end
  self:say("warning: %s; until then --apply refuses", msg)
  return true
end

-- Why the plan cannot be applied (keys named by tables that are not owners,
-- keys whose owner cannot be proven): logs each such key and returns the
-- operator's message, or nil.
function Run:refusal()
  local p = self.policy
  local parts = {}
  if #self.refusals > 0 then
    local by, order = {}, {}
    for _, r in ipairs(self.refusals) do
      self:orphan(r.entry, "refused", "named_by_row", { named_by = names_of(r.cols) })
      for _, c in ipairs(r.cols) do
        if not by[c.name] then
          by[c.name] = { col = c, n = 0 }
          order[#order + 1] = c.name
        end
        by[c.name].n = by[c.name].n + 1
      end
    end
    for _, name in ipairs(order) do
      local c, n = by[name].col, by[name].n
      parts[#parts + 1] = ("%d object%s that no owner holds %s named by %s, which is not among the policy's owners: "
        .. "add { table = %q, key_column = %q } to owners in %s%s"):format(n, n == 1 and "" or "s",
        n == 1 and "is" or "are", name, c.table, c.column, p.source or "the policy",
        c.on_path and "" or (" (and schema %q to the role's search_path)"):format(c.schema))
    end
  end
  if #self.unprovable > 0 then
    for _, e in ipairs(self.unprovable) do self:orphan(e, "unprovable", "owner_unknown") end
    parts[#parts + 1] = ("cannot prove that no row of %q owns %d object%s (e.g. %q): key() is not the bare %s "
      .. "and the key holds no UUID of a uuid column key() embeds; set key_id in %s to a function(key) "
      .. "returning the %s of the row whose key(row) is key"):format(p.table, #self.unprovable,
      #self.unprovable == 1 and "" or "s", self.unprovable[1].key, p.id_column, p.source or "the policy",
      p.id_column)
  end
  if #parts == 0 then return nil end
  return "reconcile refused, nothing deleted: " .. table.concat(parts, "; ")
    .. " (an object a row names is never deleted)"
end

-- Just before chunk's keys are deleted, asks again every table that could
-- name them (the owners, then every readable table: reconcile_names.named):
-- a row may have appeared since the plan. Logs the keys now kept; returns
-- the entries still orphaned, or nil, err.
function Run:recheck(conn, ctx, chunk)
  local keys = {}
  for i, e in ipairs(chunk) do keys[i] = e.key end
  local owned, err = owners_mod.owned(conn, self.policy, ctx.owners, keys)
  if not owned then return nil, err end
  local rest, rkeys = {}, {}
  for _, e in ipairs(chunk) do
    if owned[e.key] then
      self.counts.orphans = self.counts.orphans - 1
      self:orphan(e, "kept", "owned_now", { owner = owned[e.key] })
    else
      rest[#rest + 1] = e
      rkeys[#rkeys + 1] = e.key
    end
  end
  local named
  named, err = names_mod.named(conn, ctx.tables, rkeys)
  if not named then return nil, err end
  local del = {}
  for _, e in ipairs(rest) do
    if named[e.key] then
      self.counts.orphans = self.counts.orphans - 1
      self:orphan(e, "kept", "named_now", { named_by = names_of(named[e.key]) })
    else
      del[#del + 1] = e
    end
  end
  return del
end

-- Apply the plan: one DeleteObjects per page, each after Run:recheck.
-- Returns true or nil, err.
function Run:apply_plan(conn, store, ctx)
  local plan = self.plan
  for first = 1, #plan, self.page_size do
    if sys.stopping() then return true end
    local healthy, why = log.healthy()
    if not healthy then
      return nil, errors.new("config", "the log cannot be written (" .. tostring(why)
        .. "): stopped before deleting more")
    end
    local del, err = self:recheck(conn, ctx, table.move(plan, first, math.min(first + self.page_size - 1, #plan),
      1, {}))
    if not del then return nil, err end
    if #del > 0 then
      local dkeys = {}
      for i, e in ipairs(del) do dkeys[i] = e.key end
      log.hold()
      local results = store:delete_many(dkeys, self.policy.concurrency)
      local unreachable, last = 0, nil
      for i, e in ipairs(del) do
        local r = results[i]
        if r == true then
          self:orphan(e, "object_deleted")
        else
          if type(r) == "table" and errors.classify(r) == "transient" then
            unreachable = unreachable + 1
            last = r
          end
          self:orphan(e, "failed", type(r) == "table" and (r.code or r.kind) or tostring(r))
        end
      end
      log.release()
      if unreachable == #del then return nil, last end
    end
  end
  return true
end

-- The report's first lines (and the warning about tables the role cannot
-- read): ctx as for Run:plan_all, older_than and cutoff (database clock,
-- seconds).
function Run:preamble(ctx, older_than, cutoff)
  local p = self.policy
  local owner_names = {}
  for i, o in ipairs(ctx.owners) do owner_names[i] = o.table .. "." .. o.key_column end
  self:say("reconcile: bucket %s, objects modified more than %s ago (before %s, database clock)",
    p.bucket, human_age(older_than), os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(cutoff)))
  self:say("owners: %s", table.concat(owner_names, ", "))
  if #ctx.unreadable > 0 then
    log.warn("unreadable_tables", { run_id = self.run_id, tables = table.concat(ctx.unreadable, ", "),
      message = "the role cannot read these tables: objects their rows name are not protected from deletion" })
    self:say("warning: the role cannot read %s; objects named there are not protected",
      table.concat(ctx.unreadable, ", "))
  end
  for _, o in ipairs(ctx.owners) do
    if o.by_key and not o.range_sql then
      self:say("note: confirmed rows of %s are not checked for missing objects (key() is not the bare %s)",
        o.table, p.id_column)
    end
  end
end

-- The report's last lines, after the summary: what was listed and done,
-- and for a plan, the valve's verdict (within, limit_or_msg: M.valve's).
function Run:report(within, limit_or_msg)
  local c = self.counts
  self:say("listed %d objects: %d match key_pattern, %d too recent; of the %d candidates %d owned, %d kept "
    .. "(named by a row), %d orphaned; %d confirmed rows without object",
    c.listed, c.considered, c.recent, c.candidates, c.owned, c.kept, c.orphans, c.missing_objects)
  if self.apply then
    self:say("deleted: %d, failed: %d", c.object_deleted, c.failed)
  elseif c.orphans > 0 then
    self:say("plan only: nothing was deleted; run with --apply to delete the orphaned objects")
    if within then
      self:say("mass-delete limit: %d of %d candidates (%.1f%%), within the limit %d", c.orphans, c.candidates,
        c.orphans * 100 / math.max(c.candidates, 1), limit_or_msg)
    else
      self:say("note: %s", (limit_or_msg:gsub("reconcile %-%-apply refused", "reconcile --apply would refuse")
        :gsub("; nothing was deleted", "")))
    end
  end
end

-- The summary line's own fields: run.lua's Run:summary("reconcile", extra)
-- adds run_id, the counts and extra.
function Run:summary_fields(ms)
  return { bucket = self.policy.bucket, apply = self.apply == true, duration_ms = ms }
end

-- Ends the run on err: summary, exit code and message.
function Run:stop_on(err)
  local msg = type(err) == "string" and err or errors.message(err)
  self:summary("reconcile", { error = msg })
  return type(err) == "string" and errors.EXIT.usage or errors.exit_code(err), msg
end

return M
