-- `make demo`: a realistic mix of resources on the throwaway stack, one
-- sweep (`resclean run sweep --once`), before and after.
-- Runs under spec/support/with-stack.sh, which provides DATABASE_URL and
-- the AWS_* variables of a throwaway PostgreSQL and Ceph RGW. It empties
-- attacks, attack_resource_files and upload_resource_files first, so it
-- refuses (exit 2, nothing touched) any database but that stack's.
local here = arg[0]:match("^(.*)/[^/]*$") or "."
package.path = here .. "/../?.lua;" .. package.path

local errors = require("resclean.errors")
local fx = require("support.fixtures")
local h = require("support.helpers")
local pg = require("resclean.pg")

local function refuse(why)
  io.stderr:write("demo: refusing to run: ", why, "\n")
  return 2
end

local dburl = os.getenv("DATABASE_URL")
if not dburl or dburl == "" then
  return refuse("DATABASE_URL is not set; run the demo with `make demo`, which starts a throwaway stack")
end
local conn, cerr = pg.connect(dburl)
if not conn then
  io.stderr:write("demo: cannot connect to the database: ", errors.message(cerr), "\n")
  return errors.exit_code(cerr)
end
local marked, why = fx.throwaway(conn)
if not marked then
  conn:close()
  return refuse(why)
end

local bucket = os.getenv("RESCLEAN_BUCKET") or "cipherswarm-resources"
fx.reset(conn)
local client = fx.bucket(bucket)

local function say(fmt, ...)
  io.stdout:write((fmt):format(...), "\n")
  io.stdout:flush()
end

-- A client uploads like the real one: curl -T to a presigned PUT URL.
local function client_upload(id, text)
  local url = fx.check(client:presign("PUT", id, 3600))
  local dir = h.tmpdir()
  h.write(dir .. "/upload.txt", text)
  local ok = os.execute(("curl -sf -o /dev/null -T %s %s"):format(h.q(dir .. "/upload.txt"), h.q(url)))
  assert(ok, "presigned upload failed")
end

local groups = {}
local function add(name, ids, note) groups[#groups + 1] = { name = name, ids = ids, note = note } end

local stale_wl = fx.rows(conn, 5, { type = "WORD_LIST", age_s = 3 * 86400 })
for _, id in ipairs({ table.unpack(stale_wl, 1, 3) }) do client_upload(id, "password\n123456\nletmein\n") end
fx.objects(client, { stale_wl[4] })
add("stale pending, object uploaded (presigned PUT) or partial", stale_wl, "swept")
local stale_other = {}
for _, t in ipairs({ "RULE_LIST", "MASK_LIST", "CHARSET" }) do
  for _, id in ipairs(fx.rows(conn, 2, { type = t, age_s = 30 * 3600 })) do stale_other[#stale_other + 1] = id end
end
add("stale pending, never uploaded (rule/mask/charset)", stale_other, "swept")
local fresh = fx.rows(conn, 3, { age_s = 2 * 3600 })
client_upload(fresh[1], "in flight\n")
add("fresh pending (2 h old)", fresh, "kept")
local confirmed = fx.rows(conn, 3, { uploaded = true, age_s = 20 * 86400 })
fx.objects(client, confirmed)
add("confirmed (20 days old)", confirmed, "kept")
local eph = fx.rows(conn, 2, { type = "EPHEMERAL_WORD_LIST", content = '{"lines":["a","b"]}', age_s = 5 * 86400 })
local dyn = fx.rows(conn, 1, { type = "DYNAMIC_WORD_LIST", age_s = 5 * 86400 })
add("ephemeral and dynamic (content in the row)", { eph[1], eph[2], dyn[1] }, "kept")
local referenced = fx.rows(conn, 1, { age_s = 4 * 86400 })
fx.objects(client, referenced)
fx.reference(conn, referenced[1])
add("stale pending but used by an attack", referenced, "kept (skipped: referenced)")

local function table_state(title)
  say("\n%s", title)
  say("  %-58s %5s %8s", "group", "rows", "objects")
  for _, g in ipairs(groups) do
    say("  %-58s %5d %8d", g.name, fx.count_set(fx.existing_rows(conn, g.ids)),
      fx.count_set(fx.existing_objects(client, g.ids)))
  end
end

say("resclean demo: bucket %s on %s", bucket, os.getenv("AWS_ENDPOINT_URL_S3"))
table_state("before the sweep:")
say("\n$ resclean run sweep --once")
local cmd = ("RESCLEAN_BUCKET=%s %s run sweep --once"):format(h.q(bucket), h.q(h.bin()))
local _, _, code = os.execute(cmd)
say("(exit code %d)", code)
table_state("after the sweep:")
say("\nexpected: the first two groups gone (rows and objects), every other group intact.")
for _, g in ipairs(groups) do
  local rows = fx.count_set(fx.existing_rows(conn, g.ids))
  local swept = g.note == "swept"
  if (swept and rows ~= 0) or (not swept and rows ~= #g.ids) then
    say("demo: UNEXPECTED state for %q", g.name)
    code = 1
  end
end
conn:close()
h.cleanup()
return code
