-- A hostile reply to DeleteObjects, on the real stack: a proxy in front of RGW
-- (spec/support/hostile_s3_proxy.py) answers 200 with an empty <DeleteResult/> and forwards
-- nothing. By default the sweep asks for verbose replies, where a key counts as deleted only
-- when the reply says so: every key is failed (NotInReply), and rows stay for objects that
-- stay. (A Quiet reply proves only that no error was listed; see resclean(1), quiet_deletes.)
local fs = require("support.faults_support")
local fx = require("support.fixtures")
local h = require("support.helpers")

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec"

describe("behind a proxy that answers DeleteObjects with an empty DeleteResult, the sweep", function()
  local conn
  setup(function() conn = fx.connect() end)
  teardown(function() if conn then conn:close() end end)

  it("keeps every row whose object stays (default policy: verbose replies, NotInReply)", function()
    local w = fs.world(conn, { stale = 40, with_objects = 40, tag = "hostile-empty" })
    local host, port = assert(os.getenv("AWS_ENDPOINT_URL_S3")):match("^https?://([^:/]+):(%d+)")
    local proxy = h.start_server(here .. "/support/hostile_s3_proxy.py", { host, port, "empty" })
    finally(function() os.execute("kill " .. proxy.pid .. " 2>/dev/null") end)
    local r = fs.sweep(w.bucket, { "--once" }, { AWS_ENDPOINT_URL_S3 = "http://127.0.0.1:" .. proxy.port })
    assert.is_true(tonumber(h.readall(proxy.dir .. "/deletes"):match("%d+")) >= 1, "no DeleteObjects was sent")
    assert.are_not.equal(0, r.code, r.stderr)
    local rows = fs.rows(w)
    local objects = fs.objects(w)
    for _, id in ipairs(w.stale) do
      assert.is_true(objects[id], "the proxy deleted " .. id)
      assert.is_true(rows[id], id .. ": row deleted while its object stays")
      local l = r.outcomes[id]
      assert.is_table(l, "no line for " .. id)
      assert.are.same({ "failed", "NotInReply" }, { l.outcome, l.reason }, id)
    end
    fs.assert_invariants(w, "behind the hostile proxy")
    fs.assert_log_honest(w, r, "behind the hostile proxy")
    fs.assert_final_run_cleans(w, "without the proxy")
  end)
end)
