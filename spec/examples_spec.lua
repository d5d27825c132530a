-- The shipped deployment examples, read by the tools that will read them in production:
-- examples/env.example by systemd's own environment-file parser, by kubectl (a Secret made
-- with --from-env-file) and by sh (the crontab line sources it); the CronJob and the Deployment by
-- kubectl, compose.yaml by a YAML parser; all three name the image of this release. A tool
-- that is not installed skips its check, saying so. (systemd-analyze verify on the units runs in
-- deploy_spec, on the installed copies, whose paths name an installed binary and manual.)
local cjson = require("cjson")
local h = require("support.helpers")

local ROOT = (debug.getinfo(1, "S").source:match("^@(.*)/spec/[^/]*$") or ".")
local ENV_FILE = ROOT .. "/examples/env.example"
local CRONJOB = ROOT .. "/examples/kubernetes-cronjob.yaml"
local DEPLOYMENT = ROOT .. "/examples/kubernetes-deployment.yaml"
local COMPOSE = ROOT .. "/examples/compose.yaml"
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

-- The image the examples name: make image's, pushed to a registry, tagged with this release.
local function release_image()
  return "registry.example.com/resclean:" .. (h.readall(ROOT .. "/VERSION"):gsub("%s+$", ""))
end

-- kubectl apply --dry-run=client of file: the object as kubectl would send it. kubectl maps
-- kinds to resources through the server's discovery documents even for a client dry run; a
-- stand-in serves them (the OpenAPI schemas need a real cluster, hence --validate=false).
-- Returns nil and the reason when kubectl is not installed.
local function kubectl_apply(file, expect_get)
  if not have("kubectl") then return nil, "kubectl is not installed" end
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
    :format(h.q(dir), h.q(dir .. "/config"), h.q(file)))
  assert.are.equal(0, code, out)
  assert.matches("GET " .. expect_get, h.readall(api.dir .. "/requests"), 1, true)
  return cjson.decode(out)
end

-- A pod of the examples: the release's image (its ENTRYPOINT is resclean: args only), the Secret,
-- PGSSLROOTCERT naming a file mounted from a volume of the pod at env.example's path, non-root on
-- a read-only root filesystem.
local function check_pod(pod, args)
  local c = pod.containers[1]
  assert.are.equal(release_image(), c.image)
  assert.is_nil(c.command, "command overrides the image's ENTRYPOINT (resclean): give args")
  assert.are.same(args, c.args)
  assert.are.equal("resclean", c.envFrom[1].secretRef.name)
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
  assert.is_true(pod.securityContext.runAsNonRoot)
  assert.are.equal(65532, pod.securityContext.runAsUser) -- the image's user
  return c
end

describe("examples/kubernetes-cronjob.yaml", function()
  it("passes kubectl apply --dry-run=client: the release's image, one sweep, the CA PGSSLROOTCERT names", function()
    local cj, why = kubectl_apply(CRONJOB, "/apis/batch/v1/namespaces/cipherswarm/cronjobs/resclean-sweep")
    if not cj then
      pending(why)
      return
    end
    assert.are.equal("CronJob", cj.kind)
    assert.are.equal("Forbid", cj.spec.concurrencyPolicy)
    local job = cj.spec.jobTemplate.spec
    local pod = job.template.spec
    assert.are.equal("Never", pod.restartPolicy) -- podFailurePolicy requires it
    local c = check_pod(pod, { "run", "sweep", "--once", "--metrics-push",
      "http://pushgateway.monitoring.svc:9091/metrics/job/resclean/instance/resclean-sweep" })
    for _, rule in ipairs(job.podFailurePolicy.rules) do
      if rule.onExitCodes then assert.are.equal(c.name, rule.onExitCodes.containerName) end
    end
  end)
end)

describe("examples/kubernetes-deployment.yaml", function()
  it("passes kubectl apply --dry-run=client: the release's image, the long-running sweep, one pod", function()
    local d, why = kubectl_apply(DEPLOYMENT, "/apis/apps/v1/namespaces/cipherswarm/deployments/resclean-sweep")
    if not d then
      pending(why)
      return
    end
    assert.are.equal("Deployment", d.kind)
    assert.are.equal(1, d.spec.replicas)
    assert.are.equal("Recreate", d.spec.strategy.type)
    local pod = d.spec.template.spec
    for k, v in pairs(d.spec.selector.matchLabels) do assert.are.equal(v, d.spec.template.metadata.labels[k]) end
    local c = check_pod(pod, { "run", "sweep", "--metrics-listen", "0.0.0.0:9469" })
    -- Probed on /healthz (200 while the loop keeps time, 503 when it stalls), scraped on /metrics.
    assert.are.equal(9469, c.ports[1].containerPort)
    for _, probe in ipairs({ c.readinessProbe, c.livenessProbe }) do
      assert.are.equal("/healthz", probe.httpGet.path)
      assert.are.equal(c.ports[1].name, probe.httpGet.port)
    end
    local ann = d.spec.template.metadata.annotations
    assert.are.equal("true", ann["prometheus.io/scrape"])
    assert.are.equal("9469", ann["prometheus.io/port"])
    -- SIGTERM lets the batches in hand finish: at least the systemd unit's TimeoutStopSec.
    assert.is_true(pod.terminationGracePeriodSeconds >= 120)
  end)
end)

describe("examples/compose.yaml", function()
  it("runs the release's image's long-running sweep beside PostgreSQL and MinIO, secrets in an env file", function()
    local py = h.python()
    local out, code = sh(("%s -c %s %s"):format(py,
      h.q("import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)"), h.q(COMPOSE)))
    if code ~= 0 and out:match("No module named .yaml") then
      pending("python3's yaml module is not installed (make deps installs python3-yaml)")
      return
    end
    assert.are.equal(0, code, out)
    local services = cjson.decode(out).services
    assert.truthy(services.postgres and services.minio, "no postgres or minio service")
    local r = services.resclean
    assert.are.equal(release_image(), r.image)
    assert.are.same({ "run", "sweep" }, r.command) -- not --once: it takes the application's cancels
    assert.is_nil(r.entrypoint)
    assert.are.same({ "resclean.env" }, r.env_file)
    -- No secret in the compose file itself; the endpoint names the MinIO service.
    for name in pairs(r.environment) do
      assert.is_falsy(name:match("SECRET") or name:match("PASSWORD") or name == "DATABASE_URL",
        name .. " belongs in the env file")
    end
    assert.are.equal("http://minio:9000", r.environment.AWS_ENDPOINT_URL_S3)
    assert.are.equal("service_healthy", r.depends_on.postgres.condition)
    assert.truthy(r.depends_on.minio)
    assert.are.equal("65532:65532", r.user)
    assert.is_true(r.read_only)
    assert.are.same({ "ALL" }, r.cap_drop)
    -- Every setting the file's comment puts in resclean.env is one env.example has.
    local _, written = env_file_lines()
    for name in h.readall(COMPOSE):gmatch("\n#%s+([%u_]+)=") do
      assert.truthy(written[name] ~= nil, name .. " is not in env.example")
    end
  end)
end)
