-- The sweep's view of object storage: a thin adapter over resclean.s3 that
-- answers per key, in the order of the keys given:
--   head_many(keys, n[, opts]) -> { true | false | err, ... }  (exists? at most n at once;
--                                 "unlisted" for a key a listing did not hold, opts.expected)
--   delete_many(keys, n[, opts]) -> { true | err, ... }        (up to n requests at once;
--                                 opts.quiet: Quiet replies, see Store:delete_many)
--   check()                    -> true | nil, err   (bucket reachable with these credentials)
-- Anything else (fakes in unit specs) with the same three methods will do;
-- delete_start (below) is optional: without it the sweep deletes at once.
--
-- Across a network the HEADs of a batch are bound by latency, not by the
-- server: how many go at once adapts (see Store:head_many), and a bucket
-- small next to the keys to check is listed instead (opts.expected).
local log = require("resclean.log")
local s3 = require("resclean.s3")
local sys = require("resclean.sys")

local Store = {}
Store.__index = Store

local M = {}

function M.new(opts)
  local client, err = s3.client(opts)
  if not client then return nil, err end
  return setmetatable({ client = client, bucket = opts.bucket, opts = opts, spare = {}, lent = {} }, Store)
end

function Store:check()
  local res, err = self.client:list({ max = 1 })
  if not res then return nil, err end
  return true
end

function Store:head(key)
  return self.client:head(key)
end

-- HEADs in flight adapt between 1 and the caller's `concurrency` (the
-- policy's: the most the operator lets it send at once), starting at
-- START_CONCURRENCY. Slow start: while doubling raised the HEAD rate by
-- GAIN or more, the calls were latency-bound: double again. When it did
-- not, the server is the limit: go back to the last level that helped and
-- hold it. Push-back (a call whose requests the transport had to retry:
-- 5xx, 429, SlowDown, a connection lost) halves it; it then grows by STEP
-- a call, up to the level that helped (additive increase, multiplicative
-- decrease). Calls of fewer than 2 x the level tell nothing and change
-- nothing.
M.START_CONCURRENCY = 16
M.GAIN = 1.15
M.STEP = 4

function Store:head_level(max)
  local a = self.adapt
  if not a or a.max ~= max then
    a = { max = max, cur = math.min(max, M.START_CONCURRENCY), probing = true }
    self.adapt = a
  end
  return a.cur
end

-- After n HEADs took secs at level a.cur, with `pushed` retries among them.
function Store:head_adapt(n, secs, pushed)
  local a = self.adapt
  local before = a.cur
  if pushed > 0 then
    a.cur = math.max(1, a.cur // 2)
    a.probing = false
  elseif n >= 2 * a.cur and secs > 0 then
    local rate = n / secs
    if a.probing then
      if not a.best or rate >= a.best.rate * M.GAIN then
        a.best = { rate = rate, level = a.cur }
        if a.cur < a.max then a.cur = math.min(a.max, a.cur * 2) else a.probing = false end
      else
        a.cur, a.probing = a.best.level, false
      end
    else
      a.cur = math.min(a.best and a.best.level or a.max, a.cur + M.STEP)
    end
  end
  if a.cur ~= before then
    log.debug("head_concurrency", { from = before, to = a.cur, keys = n, ms = math.floor(secs * 1000 + 0.5),
                                    retries = pushed })
  end
end

-- A bucket small next to the keys still to check is cheaper to list than
-- to HEAD key by key: one ListObjectsV2 page answers for up to 1,000 keys.
-- With opts.expected (keys this cycle still has to check, these included),
-- head_many lists the bucket when it takes at most one page per
-- LIST_KEYS_PER_PAGE expected keys (and at most LIST_MAX_KEYS keys held);
-- else (or when a listing fails) it gives up listing for this store's
-- life (one cycle) and HEADs. The listing
-- answers for LIST_MAX_AGE seconds. A key in the listing existed when it
-- was taken (true: object_deleted; one deleted meanwhile by someone else is
-- reported object_deleted, as a HEAD just before that delete would). A key
-- not in it is "unlisted", never false: an object can land after the
-- listing (a stale key's upload URL expired, but anyone with write access
-- can still put one), so its outcome is deleted (reason not_listed), not
-- record_only. Only the sweep asks for it; a HEAD that must be fresh
-- (reconcile's re-check) never lists.
M.LIST_MIN_KEYS = 500
M.LIST_KEYS_PER_PAGE = 250
M.LIST_MAX_KEYS = 50000 -- about 8 MiB of keys held (measured ~165 bytes a key)
M.LIST_MAX_AGE = 60

-- The set of every key in the bucket (listed at most LIST_MAX_AGE ago), or
-- nil when the bucket is too large for `expected` keys or the listing failed.
function Store:listing(expected)
  local l = self.listed
  if l and sys.monotime() - l.at <= M.LIST_MAX_AGE then return l.set end
  self.listed = nil
  if self.no_listing or expected < M.LIST_MIN_KEYS then return nil end
  local budget = math.min(expected // M.LIST_KEYS_PER_PAGE, M.LIST_MAX_KEYS // 1000)
  local set, token, pages, n = {}, nil, 0, 0
  local t0 = sys.monotime()
  repeat
    local page, why
    if pages >= budget then
      why = "the bucket is large next to the keys to check"
    else
      page = self.client:list({ continuation = token })
      why = not page and "the listing failed" -- the HEADs will say what is wrong, key by key
      if page and page.truncated and not page.next_continuation then why = "a truncated listing ends" end
    end
    if why then
      self.no_listing = true
      log.debug("verify_by_head", { pages = pages, keys = n, expected = expected, detail = why })
      return nil
    end
    pages = pages + 1
    for _, e in ipairs(page.keys) do
      set[e.key] = true
      n = n + 1
    end
    token = page.next_continuation
  until not page.truncated
  self.listed = { set = set, at = t0 }
  log.debug("verify_by_list", { pages = pages, keys = n, expected = expected,
                                ms = math.floor((sys.monotime() - t0) * 1000 + 0.5) })
  return set
end

function Store:head_many(keys, concurrency, opts)
  if opts and opts.expected and #keys > 0 then
    local set = self:listing(math.max(opts.expected, #keys))
    if set then
      -- Absent from a listing is not "no object": it may land after the
      -- listing. "unlisted" (outcome deleted, reason not_listed).
      local out = {}
      for i, k in ipairs(keys) do out[i] = set[k] == true or "unlisted" end
      return out
    end
  end
  local level = self:head_level(concurrency or M.START_CONCURRENCY)
  local r0 = self.client:stats().retries
  local t0 = sys.monotime()
  local res = self.client:head_many(keys, { concurrency = level })
  self:head_adapt(#keys, sys.monotime() - t0, self.client:stats().retries - r0)
  local out = {}
  for i = 1, #keys do
    local r = res[i]
    if type(r) ~= "table" then
      out[i] = { kind = "s3", code = "no_result", message = "no HEAD result for key" }
    elseif r.err then
      out[i] = r.err
    else
      out[i] = r.exists == true
    end
  end
  return out
end

-- A server works through one DeleteObjects request key by key; a batch's
-- keys go out as up to this many requests at once (of at least
-- MIN_PER_REQUEST keys, at most S3's 1,000), never more than `concurrency`
-- so that a stalled server costs one round of timeouts. On the test RGW,
-- 1,000 keys as 8 x 125 in parallel went 10-15% faster than as one request.
-- Push-back (keys refused with SlowDown and the like, or requests the
-- transport had to retry) halves the number of parts for the next rounds;
-- each round without it that could use one more part adds one back, up to
-- DELETE_REQUESTS.
local DELETE_REQUESTS = 8
local MIN_PER_REQUEST = 100

-- A DeleteObjects reply can refuse some keys alone with a throttling or
-- server-side code while deleting the rest (S3 answers 200 and lists those
-- keys as <Error>). Only those keys go again, within the same call, after
-- a backoff with equal jitter (base, 2 base, 4 base ... each between half
-- and all of it, at most KEY_BACKOFF_MAX), at most KEY_RETRIES more times;
-- a stop signal ends the waiting. A key that still fails is reported with
-- its last error: the sweep keeps its row for the next run.
M.KEY_RETRY_CODES = { InternalError = true, SlowDown = true, ServiceUnavailable = true, OperationAborted = true }
M.KEY_RETRIES = 4
M.KEY_BACKOFF = 0.2 -- seconds
M.KEY_BACKOFF_MAX = 5

-- A key's own error in a reply that succeeded (status 2xx): request-level
-- failures (5xx, 429, no answer) were already retried by the transport.
local function retry_key(err)
  if type(err) ~= "table" or not M.KEY_RETRY_CODES[err.code] then return false end
  local st = tonumber(err.status)
  return st ~= nil and st >= 200 and st < 300
end

-- The options of one DeleteObjects round of n keys.
function Store:round_options(n, concurrency, quiet)
  local parts = math.min(self.delete_parts or DELETE_REQUESTS, concurrency or DELETE_REQUESTS)
  local per = math.min(1000, math.max(MIN_PER_REQUEST, -(-n // parts)))
  return { batch = per, concurrency = concurrency, quiet = quiet == true }
end

-- One DeleteObjects round for keys: a result per key (true or an error).
function Store:delete_round(keys, concurrency, client, quiet)
  local r0 = client:stats().retries
  local res, err = client:delete_many(keys, self:round_options(#keys, concurrency, quiet))
  return self:round_results(keys, res, err, client:stats().retries - r0)
end

-- A round's replies (res, err as delete_many's) as a result per key; the
-- number of requests the transport retried (pushed) sets the next rounds'
-- parts.
function Store:round_results(keys, res, err, pushed)
  local out = {}
  for i = 1, #keys do
    if not res then
      out[i] = err
    else
      local r = res[i]
      if r == true or (type(r) == "table" and r.deleted) then
        out[i] = true
      elseif type(r) == "table" and r.err then
        out[i] = r.err
      else
        out[i] = { kind = "s3", code = "no_result", message = "key missing from the DeleteObjects reply" }
      end
    end
    if pushed == 0 and retry_key(out[i]) then pushed = 1 end
  end
  local before = self.delete_parts or DELETE_REQUESTS
  if pushed > 0 then
    self.delete_parts = math.max(1, before // 2)
  elseif #keys >= (before + 1) * MIN_PER_REQUEST then -- a round that could use one more part
    self.delete_parts = math.min(DELETE_REQUESTS, before + 1)
  end
  if self.delete_parts ~= before then
    log.debug("delete_parts", { from = before, to = self.delete_parts, keys = #keys, retries = pushed })
  end
  return out
end

-- Verbose replies by default: a key counts as deleted only when the reply
-- says so (<Deleted>), and one a reply leaves out is failed (NotInReply).
-- opts.quiet asks for Quiet replies, which S3 defines to list only the keys
-- it could not delete: a key not listed counts as deleted. A Quiet reply
-- proves only that no error was listed: an empty one reads the same
-- whether every key was deleted or none was processed (a proxy that strips
-- <Error> entries, or answers without forwarding). The sweep asks for them
-- only with policy quiet_deletes = true (default false since the bench put
-- verbose's cost at a fraction of the remote rate; resclean(1)). Quiet also
-- works with servers that ignore it (they list <Deleted> keys: deleted) and
-- with those that never list <Deleted> keys (Baidu BOS is reported to).
-- Reconcile keeps verbose replies.
function Store:delete_many(keys, concurrency, opts)
  local quiet = opts and opts.quiet
  return self:retry_keys(keys, self:delete_round(keys, concurrency, self.client, quiet), concurrency, self.client,
    quiet)
end

-- Keys refused alone (retry_key) go again; returns out with their results.
function Store:retry_keys(keys, out, concurrency, client, quiet)
  local wait = M.KEY_BACKOFF
  for attempt = 1, M.KEY_RETRIES do
    local again, at = {}, {}
    for i = 1, #keys do
      if retry_key(out[i]) then
        again[#again + 1] = keys[i]
        at[#at + 1] = i
      end
    end
    if #again == 0 then break end
    local pause = math.min(wait, M.KEY_BACKOFF_MAX)
    pause = pause / 2 + math.random() * pause / 2
    log.debug("delete_retry", { keys = #again, code = out[at[1]].code, attempt = attempt,
                                wait_ms = math.floor(pause * 1000 + 0.5) })
    self.key_retries = (self.key_retries or 0) + #again
    if not sys.sleep(pause) or sys.stopping() then break end
    local res = self:delete_round(again, concurrency, client, quiet)
    for j, i in ipairs(at) do out[i] = res[j] end
    wait = wait * 2
  end
  if self.listed then -- what is gone is no longer in the bucket
    for i, k in ipairs(keys) do
      if out[i] == true then self.listed.set[k] = nil end
    end
  end
  return out
end

-- delete_many in two halves, so the caller can work meanwhile (the sweep
-- claims its next batch while this one's objects are deleted):
--   local d = store:delete_start(keys, n[, opts]); ...; d:pump(); ...; d:finish()
-- gives what delete_many(keys, n, opts) would. The first round goes out at once
-- on a client of its own (one call in flight per client: a second one
-- while this one is out is another client); pump() moves it on without
-- waiting; finish() waits for it, then retries keys refused alone, as
-- delete_many does. A started delete must be finished: its keys may be
-- deleted either way.
local Pending = {}
Pending.__index = Pending

function Store:delete_start(keys, concurrency, opts)
  local client = table.remove(self.spare)
  if not client then
    local err
    client, err = s3.client(self.opts)
    if not client then error(err, 0) end -- the same options made self.client
  end
  self.lent[client] = true
  local quiet = opts and opts.quiet
  local d = setmetatable({ store = self, client = client, keys = keys, concurrency = concurrency, quiet = quiet,
                           r0 = client:stats().retries }, Pending)
  local ok, p = pcall(client.delete_start, client, keys, self:round_options(#keys, concurrency, quiet))
  if not ok then
    d:give_back()
    error(p, 0)
  end
  d.p = p
  return d
end

function Pending:give_back()
  local store = self.store
  if store.lent[self.client] then
    store.lent[self.client] = nil
    store.spare[#store.spare + 1] = self.client
  end
end

function Pending:pump()
  if self.p then self.p:pump() end
end

function Pending:finish()
  local store, client = self.store, self.client
  local p = self.p
  self.p = nil
  local ok, res, err = pcall(p.finish, p)
  if not ok then
    self:give_back()
    error(res, 0)
  end
  local out = store:round_results(self.keys, res, err, client:stats().retries - self.r0)
  out = store:retry_keys(self.keys, out, self.concurrency, client, self.quiet)
  self:give_back()
  return out
end

function Store:close()
  self.client:close()
  for _, c in ipairs(self.spare) do c:close() end
  self.spare = {}
end

return M
