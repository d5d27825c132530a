-- What the reconcile specs (reconcile_safety_spec, reconcile_trust_spec) share:
-- buckets of their own, the keys a bucket holds, list helpers, and a run of
-- `resclean run reconcile` with its JSON lines read.
local cjson = require("cjson")
local fx = require("support.fixtures")
local h = require("support.helpers")
local s3h = require("support.s3_helpers")

local M = {}

M.OLD = 3 -- seconds: --older-than of every run (the policies set url_lifetime = 1)

-- n fresh ids from the database.
function M.uuids(conn, n)
  local res = fx.check(conn:query("SELECT gen_random_uuid()::text AS id FROM generate_series(1, $1::int)", n))
  local out = {}
  for i, r in ipairs(res) do out[i] = r.id end
  return out
end

-- Confirmed upload_resource_files rows (3 days old) for ids.
function M.upload_rows(conn, ids)
  fx.check(conn:query([[INSERT INTO upload_resource_files (id, file_name, is_uploaded, created_at)
    SELECT u, 'f.bin', true, now() - interval '3 days' FROM unnest($1::uuid[]) AS u]], ids))
end

-- The lists given, one after the other, in one list.
function M.concat(...)
  local out = {}
  for _, l in ipairs({ ... }) do
    for _, v in ipairs(l) do out[#out + 1] = v end
  end
  return out
end

-- A bucket of its own holding keys, kept in buckets[case] = {name, client}.
function M.bucket(buckets, prefix, case, keys)
  local name = fx.unique_bucket(prefix .. case)
  local client = fx.bucket(name)
  fx.objects(client, keys)
  buckets[case] = { name = name, client = client }
  return buckets[case]
end

-- The set of keys bucket b holds now.
function M.bucket_keys(b)
  return s3h.key_set(b.client)
end

-- A set's keys, sorted.
function M.sorted(set)
  local out = {}
  for k in pairs(set) do out[#out + 1] = k end
  table.sort(out)
  return out
end

-- A sorted copy of a list.
function M.sorted_list(list)
  local out = table.move(list, 1, #list, 1, {})
  table.sort(out)
  return out
end

-- Run reconcile on the bucket named name with a policy: the Lua source of its fields, or
-- opts.policy_source (a whole file); opts.script runs instead of scripts/reconcile.lua; opts.env
-- adds to the environment. JSON lines on stdout, read into r.by (event -> lines), r.orphans (key
-- -> line) and r.summary, unless opts.human.
function M.reconcile(name, policy_fields, flags, opts)
  opts = opts or {}
  local policy = h.tmpfile(opts.policy_source or ("return { url_lifetime = 1, " .. (policy_fields or "") .. " }\n"),
    "policy.lua")
  local argv = { "run", opts.script or "scripts/reconcile.lua", "--policy", policy, "--older-than", tostring(M.OLD) }
  if not opts.human then argv[#argv + 1] = "--json" end
  for _, f in ipairs(flags or {}) do argv[#argv + 1] = f end
  local r = h.run(argv, h.script_env(name, opts.env))
  r.by, r.orphans = {}, {}
  if opts.human then return r end
  for line in r.stdout:gmatch("[^\n]+") do
    local rec = cjson.decode(line)
    r.by[rec.event] = r.by[rec.event] or {}
    table.insert(r.by[rec.event], rec)
    if rec.event == "orphan" then
      if r.orphans[rec.key] then error("orphan logged twice: " .. rec.key, 2) end
      r.orphans[rec.key] = rec
    end
  end
  r.summary = r.by.reconcile and r.by.reconcile[1]
  return r
end

-- The set of orphan keys whose outcome is outcome.
function M.outcomes(r, outcome)
  local out = {}
  for k, l in pairs(r.orphans) do
    if l.outcome == outcome then out[k] = true end
  end
  return out
end

return M
