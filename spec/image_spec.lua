-- The OCI image (make image): the .deb installed on Debian, the non-root user resclean (65532),
-- ENTRYPOINT resclean; run here with a read-only root filesystem and the host's network against
-- the stack: status (and check), and a --once --dry-run sweep. make image rebuilds only for
-- another .deb, so `make test` then `make asan test` build it once. Skipped, saying why, where
-- podman cannot run containers.
local cjson = require("cjson")
local fx = require("support.fixtures")
local h = require("support.helpers")

local ROOT = (debug.getinfo(1, "S").source:match("^@(.*)/spec/[^/]*$") or ".")
-- The flags these machines need (../shared/notes/containers.md); the Makefile's defaults too.
local PODMAN = "podman --runtime runc --cgroup-manager=cgroupfs"
local LIMITS = "--ulimit nofile=1024:1024 --ulimit nproc=1024:1024"
local STACK_ENV = { "DATABASE_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION" }

local sh, have = h.sh, h.have

local function trim(s) return (s:gsub("%s+$", "")) end
local function first_line_of(s) return s:match("^[^\n]*") end

local function why_not()
  if not have("podman") then return "podman is not installed (make deps installs it)" end
  if not have("runc") then return "runc is not installed (make deps installs it)" end
  if not have("dpkg-buildpackage") then return "dpkg-buildpackage is not installed (make deps installs it)" end
  local out, code = sh(PODMAN .. " info --format '{{.Host.OCIRuntime.Name}}'")
  if code ~= 0 then return "podman cannot run here: " .. first_line_of(out) end
  return nil
end

describe("the image (make image)", function()
  local skip = why_not()
  local image

  -- podman run --rm --read-only --network=host IMAGE ARGS, the stack's environment passed by name
  -- (the values stay out of the command line), and extra NAME=value.
  local function run(args, extra, opts)
    local set, pass = {}, {}
    for _, name in ipairs(STACK_ENV) do pass[#pass + 1] = "-e " .. name end
    for k, v in pairs(extra or {}) do
      set[#set + 1] = k .. "=" .. h.q(v)
      pass[#pass + 1] = "-e " .. k
    end
    local out = h.tmpdir()
    local _, _, code = os.execute(("env %s %s run --rm --read-only --network=host %s %s %s %s %s >%s 2>%s")
      :format(table.concat(set, " "), PODMAN, LIMITS, table.concat(pass, " "), (opts or {}).flags or "",
        image, args, h.q(out .. "/out"), h.q(out .. "/err")))
    return { code = code, stdout = h.readall(out .. "/out"), stderr = h.readall(out .. "/err") }
  end

  if skip then
    it("is skipped: " .. skip, function() pending(skip) end)
    return
  end

  setup(function()
    local out, code = sh(("make -s -C %s image"):format(h.q(ROOT)))
    assert(code == 0, "make image failed:\n" .. out)
    image = "localhost/resclean:" .. trim(h.readall(ROOT .. "/VERSION"))
  end)

  it("runs resclean as the non-root user resclean (65532), ENTRYPOINT resclean, this version", function()
    local info = sh(PODMAN .. " image inspect --format '{{.Config.User}} {{json .Config.Entrypoint}}' " .. image)
    assert.are.equal('65532:65532 ["resclean"]', trim(info))
    local r = run("--version")
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal(first_line_of(h.run({ "--version" }).stdout), first_line_of(r.stdout))
    r = run("-un", nil, { flags = "--entrypoint id" })
    assert.are.equal("resclean", trim(r.stdout))
  end)

  it("holds resclean as the .deb installed it (Debian packages only)", function()
    local r = run("-S /usr/bin/resclean /usr/share/resclean/scripts/sweep.lua /usr/lib/resclean/resclean_net.so",
      nil, { flags = "--entrypoint dpkg" })
    assert.are.equal(0, r.code, r.stderr)
    local _, n = r.stdout:gsub("resclean: ", "")
    assert.are.equal(3, n, r.stdout)
    local label = trim(sh(PODMAN .. " image inspect --format '{{ index .Labels \"org.resclean.deb-sha256\" }}' "
      .. image))
    local version = trim(sh(("awk 'NR == 1 { gsub(/[()]/, \"\", $2); print $2 }' %s/debian/changelog")
      :format(h.q(ROOT))))
    local deb = ("%s/build/deb/resclean_%s_%s.deb"):format(ROOT, version, trim(sh("dpkg --print-architecture")))
    assert.are.equal(trim(sh("sha256sum " .. h.q(deb))):sub(1, 64), label, "the image is not built from " .. deb)
  end)

  it("runs resclean run status (and check) against the stack with a read-only root filesystem", function()
    local bucket = fx.unique_bucket("image")
    fx.bucket(bucket)
    local r = run("run status --json", { RESCLEAN_BUCKET = bucket })
    assert.are.equal(0, r.code, r.stderr)
    assert.is_number(cjson.decode(r.stdout).pending.total, r.stdout)
    if io.open(ROOT .. "/scripts/check.lua") then
      r = run("run check", { RESCLEAN_BUCKET = bucket })
      assert.are.equal(0, r.code, r.stdout .. r.stderr)
    end
  end)

  it("sweeps once with --dry-run in the container: finds the stale rows, deletes nothing", function()
    local conn = fx.connect()
    local bucket, client = fx.fresh_bucket(conn, "image")
    local stale = fx.rows(conn, 3)
    fx.rows(conn, 2, { age_s = 60 })
    fx.objects(client, { stale[1], stale[2] })
    local r = h.decode_run(run("run sweep --once --dry-run", { RESCLEAN_BUCKET = bucket }))
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal(3, r.summary.total, r.stdout)
    assert.are.equal(2, r.summary.object_deleted)
    for _, l in ipairs(r.by.resource) do assert.is_true(l.dry_run) end
    assert.are.equal(5, fx.count(conn))
    assert.are.equal(2, fx.count_set(fx.existing_objects(client, stale)))
    conn:close()
  end)
end)
