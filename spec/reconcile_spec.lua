-- Reconcile: scripts/reconcile.lua on a bucket of the harness's RGW with
-- orphans, objects owned by both owner tables, fresh objects and keys that
-- are not resource keys; the owner tables on the harness's PostgreSQL.
--
-- S3 sets last_modified itself, so objects cannot be backdated: the spec
-- uses a policy with url_lifetime = 1 s and --older-than OLD, waits (polling
-- the database clock) until the first objects are older than that, and puts
-- the "fresh" objects right before each run.
local cjson = require("cjson")
local fx = require("support.fixtures")
local h = require("support.helpers")
local s3h = require("support.s3_helpers")
local reconcile_policy = 'return { url_lifetime = 1 }\n'
local OLD = 5 -- seconds; fresh objects are put less than this before a run

local conn, client, bucket, policy
local orphans, owned_attack, owned_upload, missing, foreign

local function uuids(n)
  local res = fx.check(conn:query("SELECT gen_random_uuid()::text AS id FROM generate_series(1, $1::int)", n))
  local out = {}
  for i, r in ipairs(res) do out[i] = r.id end
  return out
end

local function upload_rows(ids, uploaded)
  fx.check(conn:query([[INSERT INTO upload_resource_files (id, file_name, is_uploaded, created_at)
    SELECT u, 'f.bin', $2, now() - interval '3 days' FROM unnest($1::uuid[]) AS u]], ids, uploaded))
end

local set_of = h.set

-- JSON log lines; on stderr, the one-line "resclean: ..." messages are not JSON.
local function parse_log(text)
  local by = {}
  for line in text:gmatch("[^\n]+") do
    local ok, rec = pcall(cjson.decode, line)
    assert(ok or line:match("^resclean: "), "not a JSON log line: " .. line)
    rec = ok and rec or { event = "message", text = line }
    by[rec.event] = by[rec.event] or {}
    table.insert(by[rec.event], rec)
  end
  return by
end

local function reconcile(flags, env_extra)
  local argv = { "run", "scripts/reconcile.lua", "--policy", policy, "--older-than", tostring(OLD) }
  for _, f in ipairs(flags or {}) do argv[#argv + 1] = f end
  local env = { RESCLEAN_BUCKET = bucket, RESCLEAN_POLICY = false, RESCLEAN_LOG_LEVEL = false }
  for k, v in pairs(env_extra or {}) do env[k] = v end
  local r = h.run(argv, env)
  -- JSON log lines: on stdout with --json, else on stderr beside the report
  r.by = parse_log(set_of(flags or {})["--json"] and r.stdout or r.stderr)
  r.orphans = {}
  for _, l in ipairs(r.by.orphan or {}) do
    assert.is_nil(r.orphans[l.key], "orphan logged twice: " .. l.key)
    r.orphans[l.key] = l
  end
  r.summary = r.by.reconcile and r.by.reconcile[1]
  return r
end

-- Every key now in the bucket.
local function bucket_keys()
  return s3h.key_set(client)
end

-- Fresh objects for one test, removed when it ends (they would be old,
-- and orphans, by the next one).
local function fresh_objects(n)
  local keys = uuids(n)
  fx.objects(client, keys)
  finally(function()
    for _, k in ipairs(keys) do client:delete(k) end
  end)
  return keys
end

local function keys_of(t)
  local out = {}
  for k in pairs(t) do out[#out + 1] = k end
  table.sort(out)
  return out
end

describe("reconcile", function()
  setup(function()
    conn = fx.connect()
    fx.reset(conn)
    bucket = fx.unique_bucket("reconcile")
    client = fx.bucket(bucket)
    policy = h.tmpfile(reconcile_policy, "policy.lua")
    -- attack_resource_files: pending (stale and fresh) and confirmed rows with objects
    owned_attack = fx.rows(conn, 3)
    for _, id in ipairs(fx.rows(conn, 2, { age_s = 60 })) do owned_attack[#owned_attack + 1] = id end
    for _, id in ipairs(fx.rows(conn, 3, { uploaded = true })) do owned_attack[#owned_attack + 1] = id end
    fx.objects(client, owned_attack)
    -- upload_resource_files, the second owner of keys in the bucket
    owned_upload = uuids(4)
    upload_rows(owned_upload, true)
    fx.objects(client, owned_upload)
    -- confirmed rows of both owners with no object
    missing = fx.rows(conn, 2, { uploaded = true })
    local mu = uuids(1)
    upload_rows(mu, true)
    missing[#missing + 1] = mu[1]
    -- objects no row owns
    orphans = uuids(6)
    fx.objects(client, orphans)
    -- keys that are not resource keys (key_pattern: lower-case UUID)
    foreign = { "notes/readme.txt", "backup.tar", orphans[1]:upper() }
    fx.objects(client, foreign)
    fx.wait_objects_older(conn, { client }, OLD)
  end)

  teardown(function()
    if conn then conn:close() end
  end)

  it("plans exactly the orphans and deletes nothing without --apply", function()
    fresh_objects(2)
    local before = bucket_keys()
    local r = reconcile()
    assert.are.equal(0, r.code, r.stderr)
    assert.are.same(keys_of(set_of(orphans)), keys_of(r.orphans))
    for _, l in pairs(r.orphans) do
      assert.are.equal("planned", l.outcome)
      assert.is_true(l.age_s >= OLD, "age_s " .. l.age_s)
      assert.are.equal("info", l.level)
    end
    assert.are.same(keys_of(before), keys_of(bucket_keys()))
    -- the human report on stdout lists each orphan and says nothing was deleted
    for _, k in ipairs(orphans) do
      assert.matches("orphan%s+" .. k:gsub("%-", "%%-") .. "%s.-would delete\n", r.stdout)
    end
    assert.matches("plan only: nothing was deleted", r.stdout, 1, true)
    local s = r.summary
    assert.are.equal(#orphans, s.orphans)
    assert.are.equal(#orphans, s.planned)
    assert.are.equal(0, s.object_deleted)
    assert.are.equal(#owned_attack + #owned_upload, s.owned)
    assert.are.equal(2, s.recent)
    assert.is_false(s.apply)
  end)

  it("lists each object with its LastModified as mtime, the epoch seconds PostgreSQL reads in it", function()
    local page = fx.check(client:list({}))
    assert.is_true(#page.keys > 0)
    for _, e in ipairs(page.keys) do
      local t = fx.check(conn:query("SELECT extract(epoch FROM $1::timestamptz)::float8 AS t", e.last_modified))[1].t
      assert.is_number(e.mtime, e.key)
      assert.is_true(math.abs(e.mtime - t) < 1e-6, ("%s: mtime %s, LastModified %s (%s)"):format(e.key,
        tostring(e.mtime), e.last_modified, tostring(t)))
    end
  end)

  it("writes JSON lines on stdout with --json, the same plan across pages of any size", function()
    local r = reconcile({ "--json", "--page-size", "3" })
    assert.are.equal(0, r.code, r.stderr)
    assert.are.same(keys_of(set_of(orphans)), keys_of(r.orphans))
    assert.are.equal("reconcile", r.by.reconcile[1].event)
    assert.are.equal(#missing, #r.by.missing_object)
  end)

  it("reports confirmed rows of both owner tables whose object is missing, and never touches them", function()
    local r = reconcile({ "--json", "--page-size", "2" })
    assert.are.equal(0, r.code, r.stderr)
    local got = {}
    for _, l in ipairs(r.by.missing_object) do
      assert.is_nil(got[l.key], "reported twice: " .. l.key)
      got[l.key] = l.table
      assert.are.equal("warn", l.level)
    end
    assert.are.same(keys_of(set_of(missing)), keys_of(got))
    assert.are.equal("upload_resource_files", got[missing[3]])
    assert.are.equal("attack_resource_files", got[missing[1]])
    assert.are.equal(2, fx.count_set(fx.existing_rows(conn, missing)))
    assert.are.equal(#missing, r.summary.missing_objects)
  end)

  it("refuses to run, with exit 2 and nothing deleted, when a named owner table does not exist", function()
    local bad = h.tmpfile([[return { url_lifetime = 1, owners = {
      { table = "attack_resource_files", key_column = "id" },
      { table = "upload_resource_file", key_column = "id" } } }
]], "policy.lua")
    local before = bucket_keys()
    local r = h.run({ "run", "scripts/reconcile.lua", "--apply", "--policy", bad, "--older-than", tostring(OLD) },
      { RESCLEAN_BUCKET = bucket, RESCLEAN_POLICY = false })
    assert.are.equal(2, r.code)
    assert.matches('owner table "upload_resource_file" does not exist', r.stderr, 1, true)
    assert.are.same(keys_of(before), keys_of(bucket_keys()))
  end)

  it("refuses to run when the owners do not include the policy's own table", function()
    local bad = h.tmpfile([[return { url_lifetime = 1, owners = {
      { table = "upload_resource_files", key_column = "id" } } }
]], "policy.lua")
    local before = bucket_keys()
    local r = h.run({ "run", "scripts/reconcile.lua", "--apply", "--policy", bad, "--older-than", tostring(OLD) },
      { RESCLEAN_BUCKET = bucket, RESCLEAN_POLICY = false })
    assert.are.equal(2, r.code)
    assert.matches("is not among its owners", r.stderr, 1, true)
    assert.are.same(keys_of(before), keys_of(bucket_keys()))
  end)

  it("refuses an --older-than shorter than the URL lifetime", function()
    local r = h.run({ "run", "scripts/reconcile.lua", "--apply", "--older-than", "60" },
      { RESCLEAN_BUCKET = bucket, RESCLEAN_POLICY = false })
    assert.are.equal(2, r.code)
    assert.matches("url_lifetime", r.stderr)
  end)

  it("deletes exactly the orphans with --apply, and finds none afterwards", function()
    local fresh = fresh_objects(2)
    local before = bucket_keys()
    -- 6 orphans of 25 listed objects is above the default valve (10%): allowed explicitly
    local r = reconcile({ "--apply", "--page-size", "4", "--max-delete", tostring(#orphans) })
    assert.are.equal(0, r.code, r.stderr)
    assert.are.same(keys_of(set_of(orphans)), keys_of(r.orphans))
    for _, l in pairs(r.orphans) do assert.are.equal("object_deleted", l.outcome) end
    local after = bucket_keys()
    for k in pairs(before) do
      if set_of(orphans)[k] then
        assert.is_nil(after[k], "orphan still there: " .. k)
      else
        assert.is_true(after[k], "deleted a non-orphan: " .. k)
      end
    end
    assert.are.equal(fx.count_set(before) - #orphans, fx.count_set(after))
    assert.are.equal(#orphans, r.summary.object_deleted)
    assert.is_true(r.summary.apply)
    -- One run, one id: the start line, every orphan and the summary carry the same run_id.
    local id = r.by.start[1].run_id
    assert.is_string(id)
    for _, l in pairs(r.orphans) do assert.are.equal(id, l.run_id, "orphan line of another run id") end
    assert.are.equal(id, r.summary.run_id, "summary of another run id")
    for _, k in ipairs(fresh) do assert.is_true(after[k], "deleted a fresh object: " .. k) end
    for _, k in ipairs(fresh) do fx.check(client:delete(k)) end
    after = bucket_keys()
    local again = reconcile({ "--apply" })
    assert.are.equal(0, again.code, again.stderr)
    assert.are.same({}, again.orphans)
    assert.are.same(keys_of(after), keys_of(bucket_keys()))
  end)
end)
