-- The shipped deployment examples, read by the tools that will read them in production:
-- examples/env.example by systemd's own environment-file parser, by kubectl (a Secret made
-- with --from-env-file) and by sh (the crontab line sources it); the CronJob by kubectl. A tool
-- that is not installed skips its check, saying so. (systemd-analyze verify on the units runs in
-- deploy_spec, on the installed copies, whose paths name an installed binary and manual.)
local cjson = require("cjson")
local h = require("support.helpers")

local ROOT = (debug.getinfo(1, "S").source:match("^@(.*)/spec/[^/]*$") or ".")
local ENV_FILE = ROOT .. "/examples/env.example"
local CRONJOB = ROOT .. "/examples/kubernetes-cronjob.yaml"
local KUBE_API = ROOT .. "/spec/support/fake_kube_api.py"

-- Characters no reader treats specially: no quotes, $, `, \, spaces, ~, #, &, ;, | or <>.
local SAFE_VALUE = "^[%w_%./:@%%%?=,%+%-]*$"

local sh, have = h.sh, h.have

-- The assignments as written: ordered {name, value} and a name -> value map.
local function env_file_lines()
  local list, map = {}, {}
  for line in h.readall(ENV_FILE):gmatch("[^\n]*") do
    if line ~= "" and not line:match("^#") then
      local k, v = line:match("^([%u_][%u%d_]*)=(.*)$")
      assert(k, "not a KEY=value line in env.example: " .. line)
      list[#list + 1] = { k, v }
      map[k] = v
    end
  end
  return list, map
end

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function unbase64(s)
  local bits = s:gsub("[^%w%+/]", ""):gsub(".", function(c)
    local n, r = B64:find(c, 1, true) - 1, ""
    for i = 5, 0, -1 do r = r .. ((n >> i) & 1) end
    return r
  end)
  bits = bits:sub(1, #bits - #bits % 8) -- the padding's leftover bits
  return (bits:gsub("%d%d%d%d%d%d%d%d", function(b) return string.char(tonumber(b, 2)) end))
end

describe("examples/env.example", function()
  local list, written = env_file_lines()

  it("is KEY=value lines without quotes, comments on their own lines, values every reader takes as written", function()
    assert.is_true(#list >= 5)
    for _, kv in ipairs(list) do
      assert.matches(SAFE_VALUE, kv[2], nil, false, kv[1] .. "'s value has a character some reader changes")
    end
    assert.truthy(written.DATABASE_URL:match("^postgres://[^'\"]+sslmode=verify%-full"))
    assert.truthy(written.PGSSLROOTCERT:match("^/"), "verify-full needs the CA named: PGSSLROOTCERT")
  end)

  it("reads the same under sh (the crontab line sources it)", function()
    local out, code = sh(("env -i /bin/sh -c 'set -a && . %s && set +a && env'"):format(h.q(ENV_FILE)))
    assert.are.equal(0, code, out)
    local got = {}
    for k, v in out:gmatch("([%u_][%u%d_]*)=([^\n]*)") do got[k] = v end
    for k, v in pairs(written) do assert.are.equal(v, got[k], k) end
  end)

  it("reads the same under systemd's environment-file parser", function()
    local gen = "/usr/lib/systemd/user-environment-generators/30-systemd-environment-d-generator"
    if not io.open(gen) then
      pending("systemd's environment-d generator is not installed (" .. gen .. ")")
      return
    end
    -- The generator reads XDG_CONFIG_HOME/environment.d/*.conf with the parser EnvironmentFile=
    -- uses (plus $VAR expansion, which a value without $ never meets) and prints the result.
    local dir = h.tmpdir()
    assert(os.execute("mkdir -p " .. h.q(dir .. "/environment.d")))
    h.write(dir .. "/environment.d/50-resclean.conf", h.readall(ENV_FILE))
    local out, code = sh(("env -i XDG_CONFIG_HOME=%s %s"):format(h.q(dir), h.q(gen)))
    assert.are.equal(0, code, out)
    local got = {}
    for line in out:gmatch("[^\n]+") do
      local k, v = line:match("^([%u_][%u%d_]*)=(.*)$")
      if k then
        local quoted = v:match('^"(.*)"$')
        got[k] = quoted and quoted:gsub("\\(.)", "%1") or v
      end
    end
    for k, v in pairs(written) do assert.are.equal(v, got[k], k) end
  end)

  it("becomes a Kubernetes Secret whose values carry no quotes (kubectl --from-env-file)", function()
    if not have("kubectl") then
      pending("kubectl is not installed")
      return
    end
    local home = h.tmpdir()
    local out, code = sh(("HOME=%s kubectl create secret generic resclean --from-env-file=%s"
      .. " --dry-run=client -o json"):format(h.q(home), h.q(ENV_FILE)))
    assert.are.equal(0, code, out)
    local data = cjson.decode(out).data
    local n = 0
    for k, v in pairs(written) do
      local got = unbase64(data[k])
      assert.are.equal(v, got, k)
      assert.is_nil(got:find("[\"']"), k .. " carries a quote")
      n = n + 1
    end
    for _ in pairs(data) do n = n - 1 end
    assert.are.equal(0, n, "the Secret has other keys than the file")
  end)
end)

describe("examples/kubernetes-cronjob.yaml", function()
  it("passes kubectl apply --dry-run=client and mounts the CA that PGSSLROOTCERT names", function()
    if not have("kubectl") then
      pending("kubectl is not installed")
      return
    end
    -- kubectl maps kinds to resources through the server's discovery documents even for a
    -- client dry run; a stand-in serves them (the OpenAPI schemas need a real cluster, hence
    -- --validate=false).
    local api = h.start_server(KUBE_API)
    finally(function() os.execute("kill " .. api.pid .. " 2>/dev/null") end)
    local dir = h.tmpdir()
    h.write(dir .. "/config", ([[
apiVersion: v1
kind: Config
clusters: [{name: fake, cluster: {server: "http://127.0.0.1:%d"}}]
contexts: [{name: fake, context: {cluster: fake, user: nobody, namespace: cipherswarm}}]
users: [{name: nobody, user: {}}]
current-context: fake
]]):format(api.port))
    local out, code = sh(("HOME=%s KUBECONFIG=%s kubectl apply --dry-run=client --validate=false -o json -f %s")
      :format(h.q(dir), h.q(dir .. "/config"), h.q(CRONJOB)))
    assert.are.equal(0, code, out)
    assert.matches("GET /apis/batch/v1/namespaces/cipherswarm/cronjobs/resclean-sweep",
      h.readall(api.dir .. "/requests"), 1, true)
    local cj = cjson.decode(out)
    assert.are.equal("CronJob", cj.kind)
    assert.are.equal("Forbid", cj.spec.concurrencyPolicy)
    local job = cj.spec.jobTemplate.spec
    local pod = job.template.spec
    assert.are.equal("Never", pod.restartPolicy) -- podFailurePolicy requires it
    local c = pod.containers[1]
    assert.are.same({ "run", "sweep", "--once" }, { table.unpack(c.command, 2) })
    assert.matches("/bin/resclean$", c.command[1])
    assert.are.equal("resclean", c.envFrom[1].secretRef.name)
    for _, rule in ipairs(job.podFailurePolicy.rules) do
      if rule.onExitCodes then assert.are.equal(c.name, rule.onExitCodes.containerName) end
    end
    -- PGSSLROOTCERT names a file mounted from a volume of the pod, at env.example's path.
    local env = {}
    for _, e in ipairs(c.env) do env[e.name] = e.value end
    local _, written = env_file_lines()
    assert.are.equal(written.PGSSLROOTCERT, env.PGSSLROOTCERT)
    local mount
    for _, m in ipairs(c.volumeMounts) do
      if m.mountPath == env.PGSSLROOTCERT then mount = m end
    end
    assert.truthy(mount, "no volume mounted at PGSSLROOTCERT " .. tostring(env.PGSSLROOTCERT))
    local volume
    for _, v in ipairs(pod.volumes) do
      if v.name == mount.name then volume = v end
    end
    assert.truthy(volume and volume.configMap, "the CA mount has no configMap volume")
    assert.are.equal(mount.subPath, volume.configMap.items[1].path)
    assert.is_true(c.securityContext.readOnlyRootFilesystem)
  end)
end)
