-- Throughput of resclean.s3 against the harness's S3 server, next to curl's own SigV4.
--
--   bash spec/support/with-stack.sh ./resclean run spec/support/s3_bench.lua [N [ROUNDS]]
--
-- N keys (default 2000) are written once; then HEADs at concurrency 1 and 16 with
-- head_many, the same HEADs with `curl --aws-sigv4` (one at a time, and --parallel
-- --parallel-max 16), and DeleteObjects with delete_many (keys re-written between runs).
-- Each measurement runs ROUNDS times (default 3), interleaved; prints the median and range.
-- Credentials go to curl through a 0600 config file that is removed at once; nothing secret
-- is printed.
local here = arg and arg[0] and arg[0]:match("^(.*)/support/[^/]*$")
if here then package.path = here .. "/?.lua;" .. package.path end

local sys = require("resclean.sys")
local h = require("support.s3_helpers")
local helpers = require("support.helpers")

local N = tonumber(arg and arg[1]) or 2000
local ROUNDS = tonumber(arg and arg[2]) or 3
local env = h.env()
local bucket = h.unique_bucket("bench")
local c = h.client(bucket, { timeout = 120 })
assert(c:create_bucket())

local function timed(fn)
  local t0 = sys.monotime()
  local a, b = fn()
  return sys.monotime() - t0, a, b
end

local function report(what, n, secs, extra)
  print(("%-50s %6d in %6.3f s = %6.0f /s%s"):format(what, n, secs, n / secs, extra or ""))
end

-- results[name] = {n, {secs...}}; printed at the end as median and range of the rates
local results, order = {}, {}
local function record(name, n, secs)
  if not results[name] then
    results[name] = { n = n, secs = {} }
    order[#order + 1] = name
  end
  local r = results[name].secs
  r[#r + 1] = secs
end

local function put_all(keys)
  local secs = timed(function()
    for _, k in ipairs(keys) do assert(c:put(k, "x")) end
  end)
  return secs
end

local keys = {}
for i = 1, N do keys[i] = ("bench/%08d"):format(i) end
report("PUT, one at a time (setup)", N, put_all(keys))

local dir = helpers.tmpdir()
local cfg = dir .. "/curl.cfg"
local function curl_heads(parallel)
  local f = assert(io.open(cfg, "w"))
  os.execute("chmod 600 " .. helpers.q(cfg))
  f:write(('aws-sigv4 = "aws:amz:%s:s3"\n'):format(env.AWS_REGION))
  f:write(('user = "%s:%s"\n'):format(env.AWS_ACCESS_KEY_ID, env.AWS_SECRET_ACCESS_KEY))
  f:write('header = "x-amz-content-sha256: UNSIGNED-PAYLOAD"\nhead\nsilent\nno-progress-meter\n')
  f:write('write-out = "%{http_code}\\n"\n')
  for _, k in ipairs(keys) do
    f:write(('url = "%s/%s/%s"\noutput = "/dev/null"\n'):format(env.AWS_ENDPOINT_URL_S3, bucket, k))
  end
  f:close()
  local cmd = ("curl %s -K %s > %s 2>/dev/null"):format(parallel and "--parallel --parallel-max 16" or "",
    helpers.q(cfg), helpers.q(dir .. "/codes"))
  local t = timed(function() return os.execute(cmd) end)
  os.remove(cfg)
  local ok = 0
  for line in io.lines(dir .. "/codes") do
    if line == "200" then ok = ok + 1 end
  end
  assert(ok == N, ("curl: %d of %d HEADs answered 200"):format(ok, N))
  return t
end

local small = {}
for i = 1, math.min(N, 500) do small[i] = keys[i] end

for _ = 1, ROUNDS do
  for _, conc in ipairs({ 1, 16 }) do
    local secs, res, nfailed = timed(function() return c:head_many(keys, { concurrency = conc }) end)
    assert(nfailed == 0 and res[N].exists)
    record(("HEAD  resclean head_many, concurrency %d"):format(conc), N, secs)
  end
  record("HEAD  resclean head() in a Lua loop", N, (timed(function()
    for _, k in ipairs(keys) do assert(c:head(k).exists) end
  end)))
  record("HEAD  curl --aws-sigv4, one at a time", N, curl_heads(false))
  record("HEAD  curl --aws-sigv4 --parallel --parallel-max 16", N, curl_heads(true))
  for _, conc in ipairs({ 1, 16 }) do
    local dsecs, res, nfailed = timed(function() return c:delete_many(keys, { concurrency = conc }) end)
    assert(nfailed == 0 and res[N].deleted)
    record(("DEL   resclean delete_many, %d requests, concurrency %d"):format(math.ceil(N / 1000), conc), N, dsecs)
    put_all(keys)
  end
  record("DEL   resclean delete() in a Lua loop", #small, (timed(function()
    for _, k in ipairs(small) do assert(c:delete(k)) end
  end)))
  put_all(small)
end

-- CPU per operation, of the servers (from /proc/PID/stat of the stack's radosgw and OSD)
-- and of resclean (getrusage): what bounds the sweep when the machine is saturated.
local function proc_cpu(pid)
  local f = pid and io.open("/proc/" .. pid .. "/stat")
  if not f then return nil end
  local line = f:read("a")
  f:close()
  local fields = {}
  for v in line:gsub("^.-%) ", ""):gmatch("%S+") do fields[#fields + 1] = v end
  return (tonumber(fields[12]) + tonumber(fields[13])) / 100 -- utime + stime, in ticks of 1/100 s
end
local rgw, osd = os.getenv("RESCLEAN_RGW_PID"), os.getenv("RESCLEAN_OSD_PID")
local cpu_acc, cpu_order = {}, {}
local function cpu_of(name, fn)
  local function snap()
    local ru = sys.rusage()
    return { proc_cpu(rgw), proc_cpu(osd), ru.utime + ru.stime }
  end
  local a = snap()
  fn()
  local b = snap()
  if not cpu_acc[name] then
    cpu_acc[name] = { 0, 0, 0, n = 0 }
    cpu_order[#cpu_order + 1] = name
  end
  local row = cpu_acc[name]
  for i = 1, 3 do row[i] = row[i] + (b[i] - a[i]) end
  row.n = row.n + N
end
if rgw and osd then
  for _ = 1, ROUNDS do
    cpu_of("HEAD, head_many concurrency 16", function() c:head_many(keys, { concurrency = 16 }) end)
    cpu_of("DeleteObjects, 8 x 125 keys in parallel", function()
      c:delete_many(keys, { batch = 125, concurrency = 8 })
    end)
    put_all(keys)
  end
end

print(("%-56s %8s %18s"):format("", "median/s", "range/s"))
for _, name in ipairs(order) do
  local r = results[name]
  local rates = {}
  for i, s in ipairs(r.secs) do rates[i] = r.n / s end
  table.sort(rates)
  print(("%-56s %8.0f %8.0f..%-8.0f (%d x %d)"):format(name, rates[(#rates + 1) // 2], rates[1], rates[#rates],
    #rates, r.n))
end
if #cpu_order > 0 then
  print(("\n%-56s %10s %10s %10s"):format("CPU per key (us), over all rounds", "radosgw", "ceph-osd", "resclean"))
  for _, name in ipairs(cpu_order) do
    local r = cpu_acc[name]
    print(("%-56s %10.0f %10.0f %10.0f"):format(name, r[1] / r.n * 1e6, r[2] / r.n * 1e6, r[3] / r.n * 1e6))
  end
end
local st = c:stats()
print(("client: %d requests, %d retries, %d connections opened"):format(st.requests, st.retries, st.connections))

h.destroy_bucket(c)
c:close()
helpers.cleanup()
return 0
