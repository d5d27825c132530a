-- Reconcile trusts only what it can see whole (issue 20, items 2-5), on the harness's
-- PostgreSQL: row-level security that hides rows refuses --apply; the mass-delete valve is a
-- fraction of the candidates, not of every object listed; a row that appears after the plan,
-- in any readable table, keeps its object; a listing that would never end ends the run. The
-- first three on the harness's RGW; the listing against the scripted fake S3 server
-- (spec/support/fake_s3.py), since RGW cannot be made to repeat a continuation token.
local fx = require("support.fixtures")
local h = require("support.helpers")
local rs = require("support.reconcile_support")
local s3h = require("support.s3_helpers")

local OLD = rs.OLD

local conn
local B = {} -- case -> {name, client}

local function uuids(n) return rs.uuids(conn, n) end
local function upload_rows(ids) rs.upload_rows(conn, ids) end
local function bucket(case, keys) return rs.bucket(B, "rct-", case, keys) end
local concat, bucket_keys, sorted, sorted_list, outcomes = rs.concat, rs.bucket_keys, rs.sorted, rs.sorted_list,
  rs.outcomes
local reconcile = rs.reconcile

local cases = {}

describe("reconcile trusts only what it can see whole", function()
  setup(function()
    conn = fx.connect()
    fx.reset(conn)
    -- row-level security: 10 objects of attack_resource_files, 5 of confirmed
    -- upload_resource_files rows (a policy will hide them), 1 true orphan
    local c = {}
    c.attack = fx.rows(conn, 10, { uploaded = true })
    c.upload = uuids(5)
    upload_rows(c.upload)
    c.orphan = uuids(1)
    bucket("rls", concat(c.attack, c.upload, c.orphan))
    cases.rls = c
    -- the valve: 100 thumbnails (never candidates: not key_pattern) beside 10 orphans
    c = { thumbs = {} }
    for i = 1, 100 do c.thumbs[i] = ("thumbnails/%03d.jpg"):format(i) end
    c.orphans = uuids(10)
    bucket("valve", concat(c.thumbs, c.orphans))
    cases.valve = c
    -- the re-check: 10 owned objects and 3 orphans; rows naming two of them appear after the plan
    c = {}
    c.owned = fx.rows(conn, 10, { uploaded = true })
    c.orphans = sorted_list(uuids(3))
    bucket("late", concat(c.owned, c.orphans))
    cases.late = c
    local clients = {}
    for _, b in pairs(B) do clients[#clients + 1] = b.client end
    fx.wait_objects_older(conn, clients, OLD)
  end)

  teardown(function()
    if conn then conn:close() end
  end)

  it("refuses --apply (exit 2, naming the table) while row-level security hides rows of an owner, and warns "
    .. "in the plan", function()
    local b, c = B.rls, cases.rls
    local before = bucket_keys(b)
    -- a per-tenant policy the role does not pass; FORCE: it applies to the table's owner (the role) too
    fx.check(conn:query("ALTER TABLE upload_resource_files ENABLE ROW LEVEL SECURITY"))
    fx.check(conn:query("ALTER TABLE upload_resource_files FORCE ROW LEVEL SECURITY"))
    fx.check(conn:query([[CREATE POLICY tenant ON upload_resource_files
      USING (file_name = current_setting('app.tenant', true))]]))
    finally(function()
      fx.check(conn:query("DROP POLICY IF EXISTS tenant ON upload_resource_files"))
      fx.check(conn:query("DROP POLICY IF EXISTS resclean_reads_all ON upload_resource_files"))
      fx.check(conn:query("DROP POLICY IF EXISTS narrowed ON upload_resource_files"))
      fx.check(conn:query("ALTER TABLE upload_resource_files NO FORCE ROW LEVEL SECURITY"))
      fx.check(conn:query("ALTER TABLE upload_resource_files DISABLE ROW LEVEL SECURITY"))
    end)
    -- the valve allows it all: only row-level security stands between the hidden rows and their objects
    local r = reconcile(b.name, "", { "--apply", "--max-delete", "100" })
    assert.are.same(sorted(before), sorted(bucket_keys(b)))
    assert.are.equal(2, r.code, r.stderr)
    assert.matches("row-level security hides rows of upload_resource_files", r.stderr, 1, true)
    assert.matches("FORCE ROW LEVEL SECURITY on upload_resource_files", r.stderr, 1, true)
    assert.matches("BYPASSRLS", r.stderr, 1, true)
    assert.matches("FOR SELECT TO", r.stderr, 1, true)
    assert.matches("nothing deleted", r.stderr, 1, true)
    assert.are.equal(0, r.summary.object_deleted)
    -- the plan says it too, as a warning, and goes on
    r = reconcile(b.name, "", {})
    assert.are.equal(0, r.code, r.stderr)
    local w = r.by.row_security and r.by.row_security[1]
    assert.is_truthy(w, r.stdout)
    assert.are.equal("warn", w.level)
    assert.are.equal("upload_resource_files", w.tables)
    local human = reconcile(b.name, "", {}, { human = true })
    assert.are.equal(0, human.code, human.stderr)
    assert.matches("warning: row-level security hides rows of upload_resource_files", human.stdout, 1, true)
    -- the owner without FORCE bypasses it: no warning, only the true orphan planned
    fx.check(conn:query("ALTER TABLE upload_resource_files NO FORCE ROW LEVEL SECURITY"))
    r = reconcile(b.name, "", {})
    assert.are.equal(0, r.code, r.stderr)
    assert.is_nil(r.by.row_security, r.stdout)
    assert.are.same(c.orphan, sorted(outcomes(r, "planned")))
    -- FORCE again, with a policy that shows the role every row: the hidden rows own their objects again,
    -- unless a restrictive policy narrows it
    fx.check(conn:query("ALTER TABLE upload_resource_files FORCE ROW LEVEL SECURITY"))
    fx.check(conn:query([[CREATE POLICY resclean_reads_all ON upload_resource_files FOR SELECT TO CURRENT_USER
      USING (true)]]))
    fx.check(conn:query([[CREATE POLICY narrowed ON upload_resource_files AS RESTRICTIVE FOR SELECT
      USING (file_name <> 'secret')]]))
    r = reconcile(b.name, "", { "--apply", "--max-delete", "100" })
    assert.are.equal(2, r.code, r.stderr)
    assert.matches("row-level security hides rows of upload_resource_files", r.stderr, 1, true)
    fx.check(conn:query("DROP POLICY narrowed ON upload_resource_files"))
    r = reconcile(b.name, "", { "--apply" })
    assert.are.equal(0, r.code, r.stderr)
    assert.is_nil(r.by.row_security, r.stdout)
    assert.are.same(c.orphan, sorted(outcomes(r, "object_deleted")))
    assert.are.equal(#c.attack + #c.upload, r.summary.owned)
    local after = bucket_keys(b)
    for _, k in ipairs(concat(c.attack, c.upload)) do assert.is_true(after[k], "deleted an owned object: " .. k) end
    assert.is_nil(after[c.orphan[1]])
  end)

  it("takes the valve's fraction of the candidates, not of every object listed, and says both numbers",
    function()
      local b, c = B.valve, cases.valve
      local before = bucket_keys(b)
      -- 10 orphans are 100% of the 10 candidates (9% of the 110 objects listed): the default 0.10 refuses
      local r = reconcile(b.name, "", { "--apply" })
      assert.are.same(sorted(before), sorted(bucket_keys(b)))
      assert.are.equal(2, r.code, r.stderr)
      assert.matches("would delete 10 of 10 candidates (100.0%; ", r.stderr, 1, true)
      assert.matches("limit 1 (reconcile_max_delete_fraction 0.1 of the candidates)", r.stderr, 1, true)
      assert.are.equal(110, r.summary.listed)
      assert.are.equal(10, r.summary.candidates)
      -- the plan's report says it too
      r = reconcile(b.name, "", {}, { human = true })
      assert.are.equal(0, r.code, r.stderr)
      assert.matches("listed 110 objects: 10 match key_pattern, 0 too recent; of the 10 candidates", r.stdout, 1, true)
      assert.matches("reconcile --apply would refuse: would delete 10 of 10 candidates (100.0%", r.stdout, 1, true)
      -- a fraction of 1 allows all the candidates; the thumbnails are never touched
      r = reconcile(b.name, "reconcile_max_delete_fraction = 1,", { "--apply" })
      assert.are.equal(0, r.code, r.stderr)
      assert.are.same(sorted_list(c.orphans), sorted(outcomes(r, "object_deleted")))
      assert.are.same(c.thumbs, sorted(bucket_keys(b)))
    end)

  it("asks every table that could name a key again just before deleting it: owners and readable tables",
    function()
      local b, c = B.late, cases.late
      local A, O, D = c.orphans[1], c.orphans[2], c.orphans[3]
      fx.check(conn:query("CREATE TABLE reconcile_late_refs (object_key text)"))
      finally(function() fx.check(conn:query("DROP TABLE reconcile_late_refs")) end)
      -- key_id is asked once for each key when planning and once just before its DeleteObjects: the
      -- second time, rows naming A (a table that is not an owner) and owning O appear
      -- A policy file may not reach the database (it runs sandboxed), so the hook is a wrapper
      -- script around scripts/reconcile.lua that wraps the loaded policy's key_id.
      local wrapper = h.tmpfile(([[
        local policy = require("resclean.policy")
        local load, A, O, calls = policy.load, %q, %q, 0
        policy.load = function(path)
          local p, err = load(path)
          if not p then return p, err end
          local key_id = p.key_id
          p.key_id = function(k)
            if k == A then
              calls = calls + 1
              if calls == 2 then
                local c = assert(require("resclean.pg").connect(os.getenv("DATABASE_URL")))
                assert(c:query("INSERT INTO reconcile_late_refs VALUES ($1)", A))
                assert(c:query("INSERT INTO upload_resource_files (id, file_name, is_uploaded, created_at) "
                  .. "VALUES ($1::uuid, 'f.bin', true, now())", O))
                c:close()
              end
            end
            return key_id(k)
          end
          return p
        end
        return assert(loadfile("scripts/reconcile.lua"))(...)
      ]]):format(A, O), "reconcile_hook.lua")
      local source = "return { url_lifetime = 1, key_id = function(k) return k end }\n"
      local r = reconcile(b.name, nil, { "--apply", "--max-delete", "3" },
        { policy_source = source, script = wrapper })
      assert.are.equal(1, fx.check(conn:query("SELECT count(*)::int AS n FROM reconcile_late_refs"))[1].n,
        "the late row was not written: the policy's hook did not run at apply time")
      local after = bucket_keys(b)
      assert.is_true(after[A], "deleted the object a row of reconcile_late_refs now names")
      assert.is_true(after[O], "deleted the object an owner's row now owns")
      assert.is_nil(after[D], "the true orphan is still there")
      assert.are.equal(0, r.code, r.stderr)
      assert.are.equal("kept", r.orphans[A].outcome)
      assert.are.equal("named_now", r.orphans[A].reason)
      assert.are.equal("reconcile_late_refs.object_key", r.orphans[A].named_by)
      assert.are.equal("kept", r.orphans[O].outcome)
      assert.are.equal("owned_now", r.orphans[O].reason)
      assert.are.equal("object_deleted", r.orphans[D].outcome)
      assert.are.equal(1, r.summary.object_deleted)
      for _, k in ipairs(c.owned) do assert.is_true(after[k], "deleted an owned object: " .. k) end
    end)
end)

-- ListObjectsV2 pages for the fake server: keys (old orphans), truncated with token when given.
local function listing(keys, token, truncated)
  local parts = { '<?xml version="1.0" encoding="UTF-8"?><ListBucketResult '
    .. 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>fake</Name>' }
  for _, k in ipairs(keys) do
    parts[#parts + 1] = ("<Contents><Key>%s</Key><LastModified>2020-01-01T00:00:00.000Z</LastModified>"
      .. "<ETag>&quot;0&quot;</ETag><Size>1</Size></Contents>"):format(k)
  end
  if truncated == nil then truncated = token ~= nil end
  parts[#parts + 1] = ("<KeyCount>%d</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>%s</IsTruncated>%s"
    .. "</ListBucketResult>"):format(#keys, truncated and "true" or "false",
    token and ("<NextContinuationToken>%s</NextContinuationToken>"):format(token) or "")
  return { status = 200, body = table.concat(parts), headers = { ["Content-Type"] = "application/xml" } }
end

describe("reconcile's listing bound (a hostile listing from the fake S3 server)", function()
  local fake
  local K -- sorted orphan keys: no row in the database names them

  setup(function()
    conn = fx.connect()
    fx.reset(conn)
    K = sorted_list(uuids(8))
    fake = s3h.fake_server()
  end)

  teardown(function()
    if fake then fake.stop() end
    if conn then conn:close() end
  end)

  local function run()
    fake.clear()
    return reconcile("fake", "", { "--apply", "--max-delete", "100000" }, { env = {
      AWS_ENDPOINT_URL_S3 = fake.endpoint, AWS_ACCESS_KEY_ID = "AKFAKE", AWS_SECRET_ACCESS_KEY = "fake-secret-value",
      AWS_REGION = "us-east-1", AWS_SESSION_TOKEN = false, AWS_CA_BUNDLE = false } })
  end

  -- A script of n copies of reply, then an untruncated last page (the bucket check takes one
  -- more): a run that never noticed would end, and delete, rather than hang the spec.
  local function script(replies, n)
    local out = {}
    for i = 1, n do out[i] = replies(i) end
    out[#out + 1] = listing({})
    fake.script(concat({ listing({ K[1] }, "check") }, out))
  end

  local function ended(r, what)
    assert.are.equal(3, r.code, r.stderr)
    assert.matches('storage bucket "fake": ' .. what, r.stderr, 1, true)
    assert.matches("nothing was deleted", r.stderr, 1, true)
    assert.are.equal(0, fake.count("delete_objects") + fake.count("delete"))
    assert.are.equal(0, r.summary.object_deleted)
    assert.matches(what, r.summary.error, 1, true)
  end

  it("ends with exit 3, deleting nothing, on a listing that repeats its continuation token", function()
    -- the same page, the same token: 300 times
    script(function() return listing({ K[1], K[2] }, "again") end, 300)
    local r = run()
    ended(r, "the listing repeats a continuation token after 2 pages")
    assert.is_true(fake.count("list") <= 3, "list requests: " .. fake.count("list"))
  end)

  it("ends with exit 3 on a page that goes back under a new token", function()
    script(function(i) return listing({ K[1], K[2] }, "t" .. i) end, 300)
    ended(run(), ('the listing went back: key %q came after %q'):format(K[1], K[2]))
  end)

  it("ends with exit 3 on pages without objects beyond the bound", function()
    script(function(i) return listing(i == 1 and { K[3] } or {}, "t" .. i) end, 300)
    local r = run()
    ended(r, "the listing sent 102 pages for 1 object (more than 100 pages without an object)")
    assert.is_true(fake.count("list") <= 103, "list requests: " .. fake.count("list"))
  end)

  it("ends with exit 3, deleting nothing, on a truncated page without a continuation token", function()
    script(function() return listing({ K[4] }, nil, true) end, 1)
    -- the client's parser refuses it before the bound does: the same end
    ended(run(), "ListObjectsV2 reply is not a valid ListBucketResult")
  end)

  it("plans and deletes from a listing that ends, however many pages it takes", function()
    fake.script({ listing({ K[1] }, "check"), listing({ K[1], K[2] }, "a"), listing({}, "b"), listing({ K[3] }),
                  { status = 200, delete_result = {} } })
    local r = run()
    assert.are.equal(0, r.code, r.stderr .. r.stdout)
    assert.are.same({ K[1], K[2], K[3] }, sorted(outcomes(r, "object_deleted")))
  end)
end)
