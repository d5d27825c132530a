-- The long-running sweep under a supervisor, against the real PostgreSQL and RGW: systemd's
-- notification socket (READY, WATCHDOG, STOPPING), --metrics-listen's /metrics (promtool)
-- and /healthz (200, then 503 while a lock stalls the cycle), hostile scrapers that must not
-- delay a cycle; --metrics-push to Debian's prometheus-pushgateway; and the merged
-- stdout+stderr stream that jq reads whole.
local fs = require("support.faults_support")
local fx = require("support.fixtures")
local h = require("support.helpers")
local sys = require("resclean.sys")

-- A free loopback port (the kernel's choice; released before it is used).
local function free_port()
  local out = h.sh(h.python() .. [[ -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); ]]
    .. [[print(s.getsockname()[1])']])
  return assert(tonumber(out:match("%d+")), out)
end

-- GET url: status, body (status 0: no answer).
local function get(url)
  local out = h.sh("curl -s -m 10 -w '\\n%{http_code}' " .. h.q(url))
  local body, code = out:match("^(.*)\n(%d+)$")
  return tonumber(code) or 0, body or out
end

local function count(text, pat)
  local n = 0
  for _ in text:gmatch(pat) do n = n + 1 end
  return n
end

local function sweeps(proc) return count(fs.output(proc), '"event":"sweep"') end

local function stale(conn, client, n)
  local ids = fx.rows(conn, n)
  fx.objects(client, ids)
  return ids
end

local function kill_pid(pid)
  if pid then os.execute(("kill %d 2>/dev/null"):format(pid)) end
end

describe("systemd's notification socket", function()
  local conn, bucket, client
  setup(function()
    conn = fx.connect()
    bucket, client = fx.fresh_bucket(conn, "notify-sd")
  end)
  teardown(function() if conn then conn:close() end end)

  local function messages(server)
    local f = io.open(server.dir .. "/messages")
    local t = f and f:read("a") or ""
    if f then f:close() end
    return t
  end

  it("gets READY=1 once the first cycle runs, WATCHDOG=1 at half WATCHDOG_USEC, STOPPING=1 on SIGTERM "
    .. "(an abstract socket)", function()
    stale(conn, client, 5)
    local name = ("@resclean-spec-%d-%d"):format(sys.pid(), math.random(1, 1e9))
    local ns = h.start_server("spec/support/notify_socket.py", { name })
    local p = h.spawn({ "run", "scripts/sweep.lua", "--policy", fs.policy("return { interval = 3600, jitter = 0 }") },
      fs.env(bucket, { NOTIFY_SOCKET = name, WATCHDOG_USEC = "1000000" }))
    local ok, err = pcall(function()
      h.wait_for(function() return messages(ns):find("READY=1", 1, true) end, 30, "READY=1")
      h.wait_for(function() return count(messages(ns), "WATCHDOG=1") >= 3 end, 10, "three WATCHDOG=1")
      p.kill("TERM")
      assert.are.equal(0, p.wait(30))
      local m = messages(ns)
      assert.matches("STOPPING=1", m, 1, true)
      assert.is_true(m:find("READY=1", 1, true) < m:find("STOPPING=1", 1, true), m)
      assert.are.equal(1, count(m, "READY=1"), m)
      -- The first cycle ran before READY came and did its work.
      assert.matches('"object_deleted":5', fs.output(p), 1, true)
    end)
    if p.alive() then p.kill("KILL") end
    kill_pid(ns.pid)
    assert(ok, err)
  end)

  it("speaks to a socket path too, and says nothing without NOTIFY_SOCKET", function()
    local path = h.tmpdir() .. "/notify.sock"
    local ns = h.start_server("spec/support/notify_socket.py", { path })
    local p = h.spawn({ "run", "scripts/sweep.lua", "--policy", fs.policy("return { interval = 3600, jitter = 0 }") },
      fs.env(bucket, { NOTIFY_SOCKET = path }))
    local ok, err = pcall(function()
      h.wait_for(function() return messages(ns):find("READY=1", 1, true) end, 30, "READY=1")
      h.wait_for(function() return messages(ns):find("STATUS=last cycle exit 0", 1, true) end, 10, "STATUS")
      assert.is_nil(messages(ns):find("WATCHDOG", 1, true)) -- no WATCHDOG_USEC, no watchdog
      p.kill("TERM")
      assert.are.equal(0, p.wait(30))
    end)
    if p.alive() then p.kill("KILL") end
    kill_pid(ns.pid)
    assert(ok, err)
    -- A script may call it anywhere: without NOTIFY_SOCKET it is false and does nothing.
    local r = h.run({ "run", h.tmpfile("print(require('resclean.sys').notify('READY=1'))") }, { NOTIFY_SOCKET = false })
    assert.are.equal("false\n", r.stdout)
  end)
end)

describe("examples/resclean-sweep.service", function()
  it("is Type=notify with a watchdog, for the long-running sweep (systemd-analyze verify: deploy_spec)", function()
    local unit = h.readall("examples/resclean-sweep.service")
    assert.matches("\nType=notify\n", unit, 1, true)
    assert.matches("\nNotifyAccess=main\n", unit, 1, true)
    local wd = assert(unit:match("\nWatchdogSec=(%d+)min\n"), "no WatchdogSec=<n>min")
    assert.is_true(tonumber(wd) >= 10, "WatchdogSec must outlast a batch (statement_timeout, s3_timeout)")
    local exec = assert(unit:match("\nExecStart=([^\n]+)"))
    assert.matches("resclean run sweep", exec, 1, true)
    assert.is_nil(exec:find("--once", 1, true))
  end)
end)

describe("--metrics-listen", function()
  local conn, bucket, client, port, p
  setup(function()
    conn = fx.connect()
    bucket, client = fx.fresh_bucket(conn, "listen")
    port = free_port()
    -- A short interval, and a grace of 2 s: a cycle that does not reach its next batch
    -- within 2 s is reported stale. The lock waits longer than that (lock_timeout 30 s).
    p = h.spawn({ "run", "scripts/sweep.lua", "--metrics-listen", "127.0.0.1:" .. port, "--healthz-grace", "2",
      "--policy", fs.policy("return { interval = 1, jitter = 0, lock_timeout = 30 }") }, fs.env(bucket))
    h.wait_for(function() return sweeps(p) >= 1 end, 30, "the first cycle")
  end)
  teardown(function()
    if p and p.alive() then p.kill("KILL") end
    if conn then conn:close() end
  end)

  it("serves the textfile's series on /metrics while it sweeps, as promtool check metrics accepts", function()
    stale(conn, client, 7)
    local body = h.wait_for(function()
      local code, b = get(("http://127.0.0.1:%d/metrics"):format(port))
      return code == 200 and b:find('resclean_resources_total{outcome="object_deleted"} 7', 1, true) and b
    end, 30, "the cycle's removals on /metrics")
    assert.matches('resclean_sweep_last_exit_code 0', body, 1, true)
    assert.matches('# TYPE resclean_sweep_cycles_total counter', body, 1, true)
    local file = h.write(h.tmpdir() .. "/scrape.prom", body)
    if h.have("promtool") then
      local out, code = h.sh("promtool check metrics <" .. h.q(file))
      assert(code == 0, "promtool check metrics:\n" .. out)
    end
    -- Only GET /metrics and /healthz, and requests of at most 8 KiB.
    assert.are.equal(404, (get(("http://127.0.0.1:%d/"):format(port))))
    local out = h.sh(("curl -s -m 10 -o /dev/null -w '%%{http_code}' -H %s http://127.0.0.1:%d/metrics")
      :format(h.q("X-Big: " .. ("b"):rep(9000)), port))
    assert.are.equal("431", out)
  end)

  it("answers /healthz 200 while the loop keeps time, 503 naming the cycle a table lock stalls, 200 again after",
    function()
      local code, body = get(("http://127.0.0.1:%d/healthz"):format(port))
      assert.are.equal(200, code, body)
      assert.matches("^ok: ", body)
      local tx = assert(conn:begin())
      fx.check(conn:query("LOCK TABLE attack_resource_files IN ACCESS EXCLUSIVE MODE"))
      local ok, err = pcall(function()
        local stale_body = h.wait_for(function()
          local c, b = get(("http://127.0.0.1:%d/healthz"):format(port))
          return c == 503 and b
        end, 20, "/healthz to answer 503")
        assert.matches("^stale: the cycle started .* has not reached its next batch within 2 s %(overdue by %d+ s%)\n$",
          stale_body)
        -- The endpoint answers while the sweep waits on the lock: /metrics too.
        assert.are.equal(200, (get(("http://127.0.0.1:%d/metrics"):format(port))))
      end)
      tx:rollback()
      assert(ok, err)
      h.wait_for(function() return get(("http://127.0.0.1:%d/healthz"):format(port)) == 200 end, 20,
        "/healthz to answer 200 once the lock is gone")
    end)

  it("keeps its cycles while 12 scrapers connect and send nothing or half a request, and never read", function()
    local before = sweeps(p)
    local t0 = sys.monotime()
    local bad = h.start_server("spec/support/slow_clients.py", { "12", tostring(port), "8" })
    local ok, err = pcall(function()
      -- A cycle every second or so: at least 3 more while they hold every connection slot.
      h.wait_for(function() return sweeps(p) >= before + 3 end, 15, "three cycles beside the hostile scrapers")
      assert.is_true(sys.monotime() - t0 < 15)
    end)
    kill_pid(bad.pid)
    assert(ok, err)
    -- Their connections are closed at the deadline; a polite scraper is answered again.
    h.wait_for(function() return get(("http://127.0.0.1:%d/metrics"):format(port)) == 200 end, 20,
      "/metrics after the hostile scrapers")
    assert.is_true(p.alive())
  end)

  it("refuses an address in use with exit 2 naming --metrics-listen, and refuses it with --once", function()
    local r = fs.sweep(bucket, { "--metrics-listen", "127.0.0.1:" .. port })
    assert.are.equal(2, r.code)
    assert.matches("--metrics-listen 127.0.0.1:" .. port .. ": cannot listen: bind: Address already in use",
      r.stderr, 1, true)
    r = fs.sweep(bucket, { "--once", "--metrics-listen", "127.0.0.1:" .. port })
    assert.are.equal(2, r.code)
    assert.matches("--metrics-listen serves the long-running sweep", r.stderr, 1, true)
    r = fs.sweep(bucket, { "--metrics-listen", "9469x" })
    assert.are.equal(2, r.code)
    assert.matches("expected ADDR:PORT", r.stderr, 1, true)
  end)
end)

describe("--metrics-push", function()
  local conn, bucket, client, gw, gw_port
  setup(function()
    conn = fx.connect()
    bucket, client = fx.fresh_bucket(conn, "push")
    if not h.have("prometheus-pushgateway") then return end
    gw_port = free_port()
    local dir = h.tmpdir()
    -- Its own persistence file: Debian's default (/var/lib/prometheus/pushgateway.data) would
    -- hand this gateway what an earlier run pushed.
    assert(os.execute(("prometheus-pushgateway --web.listen-address=127.0.0.1:%d --persistence.file=%s "
      .. ">%s 2>&1 & echo $! >%s"):format(gw_port, h.q(dir .. "/gateway.data"), h.q(dir .. "/log"),
      h.q(dir .. "/pid"))))
    gw = tonumber(h.wait_for(function() return h.readall(dir .. "/pid"):match("%d+") end, 10, "the gateway's pid"))
    h.wait_for(function() return get(("http://127.0.0.1:%d/-/ready"):format(gw_port)) == 200 end, 20,
      "the Pushgateway to be ready")
  end)
  teardown(function()
    kill_pid(gw)
    if conn then conn:close() end
  end)

  local function need_gateway()
    if not gw then
      pending("prometheus-pushgateway is not installed (Debian package, in the Makefile's DEB_TEST)")
    end
  end

  it("pushes a --once run's series under job resclean and this host's name as instance", function()
    need_gateway()
    stale(conn, client, 4)
    local _, body = get(("http://127.0.0.1:%d/metrics"):format(gw_port))
    assert.is_nil(body:find("resclean_", 1, true), "the gateway holds resclean series before any push")
    local r = fs.sweep(bucket, { "--once", "--metrics-push", ("http://127.0.0.1:%d"):format(gw_port) })
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal(1, #(r.by.metrics_pushed or {}))
    _, body = get(("http://127.0.0.1:%d/metrics"):format(gw_port))
    local key = ('instance="%s",job="resclean"'):format(sys.hostname())
    assert.matches(("resclean_sweep_last_exit_code{%s} 0"):format(key), body, 1, true)
    assert.matches(('resclean_resources_total{%s,outcome="object_deleted"} 4'):format(key), body, 1, true)
    assert.matches(("push_time_seconds{%s}"):format(key), body, 1, true)
  end)

  it("pushes exit code 2 when the run fails before its first cycle, under the grouping key the URL gives",
    function()
      need_gateway()
      local url = ("http://127.0.0.1:%d/metrics/job/resclean/instance/broken-policy"):format(gw_port)
      local r = fs.sweep(bucket, { "--once", "--metrics-push", url, "--policy", fs.policy("return {") })
      assert.are.equal(2, r.code)
      local _, body = get(("http://127.0.0.1:%d/metrics"):format(gw_port))
      local key = 'instance="broken-policy",job="resclean"'
      assert.matches(("resclean_sweep_last_exit_code{%s} 2"):format(key), body, 1, true)
      assert.matches(('resclean_sweep_cycles_total{exit_code="2",%s} 1'):format(key), body, 1, true)
    end)

  it("warns when the gateway cannot be reached and keeps the run's exit code; refuses it without --once",
    function()
      local r = fs.sweep(bucket, { "--once", "--metrics-push", ("http://127.0.0.1:%d"):format(free_port()) })
      assert.are.equal(0, r.code, r.stderr)
      assert.are.equal(1, #(r.by.metrics_push_failed or {}))
      assert.matches("cannot push metrics to http://127.0.0.1:", r.by.metrics_push_failed[1].message, 1, true)
      r = fs.sweep(bucket, { "--metrics-push", "http://127.0.0.1:1" })
      assert.are.equal(2, r.code)
      assert.matches("--metrics-push is for --once runs", r.stderr, 1, true)
      r = fs.sweep(bucket, { "--once", "--metrics-push", "pushgateway:9091" })
      assert.are.equal(2, r.code)
      assert.matches("expected the Pushgateway's http:// or https:// URL", r.stderr, 1, true)
    end)
end)

describe("one stream for machines", function()
  local function merged(env, args)
    local dir = h.tmpdir()
    local parts = {}
    for k, v in pairs(env) do parts[#parts + 1] = k .. "=" .. h.q(v) end
    local cmd = ("env %s %s run scripts/sweep.lua --once %s >%s 2>&1"):format(table.concat(parts, " "),
      h.q(h.bin()), args, h.q(dir .. "/all"))
    local _, _, code = os.execute(cmd)
    return code, dir .. "/all"
  end

  it("writes only JSON lines when stdout and stderr are one file, so jq -e reads the failed run whole", function()
    if not h.have("jq") then pending("jq is not installed (Debian package jq, in the Makefile's DEB_TEST)") end
    local env = fs.env("resclean-no-such-bucket-" .. sys.pid())
    env.RESCLEAN_POLICY, env.RESCLEAN_LOG_LEVEL = nil, nil
    local code, file = merged(env, "")
    assert.are.equal(2, code)
    local text = h.readall(file)
    assert.is_nil(text:find("\nresclean: ", 1, true), text)
    assert.is_nil(text:find("^resclean: "), text)
    local out, jq = h.sh("jq -e -c 'select(.level == \"error\") | .message' <" .. h.q(file))
    assert(jq == 0, "jq -e on the merged stream: " .. out .. "\n" .. text)
    assert.matches("bucket", out, 1, true)
  end)

  it("keeps the plain line on a separate stderr, and drops it there too with RESCLEAN_LOG_STDERR=json", function()
    local bucket = "resclean-no-such-bucket-" .. sys.pid()
    local r = fs.sweep(bucket, { "--once" })
    assert.are.equal(2, r.code)
    assert.matches("^resclean: ", r.stderr)
    r = fs.sweep(bucket, { "--once" }, { RESCLEAN_LOG_STDERR = "json" })
    assert.are.equal(2, r.code)
    assert.are.equal("", r.stderr)
    assert.is_true(#(r.by.error or {}) + #(r.by.sweep or {}) >= 1)
  end)
end)
