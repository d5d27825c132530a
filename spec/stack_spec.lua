-- The throwaway test stack itself (spec/support/stack.sh, run through with-stack.sh): the real
-- PostgreSQL with examples/schema.sql loaded, and the real Ceph RGW checking S3 signatures.
-- Deliberately independent of the resclean primitives (psql and curl only), so that when this
-- spec fails the stack is to blame, and when it passes the other specs' failures are resclean's.
--
-- Secrets never appear in a string built here: commands reference "$AWS_SECRET_ACCESS_KEY" or
-- "$DATABASE_URL" and the shell expands them from the environment with-stack.sh set.

local TABLES = { "attack_resource_files", "attacks", "upload_resource_files" }
-- stack.sh next to this file, whatever the current directory.
local STACK_SH = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".") .. "/support/stack.sh"

local function quote(s)
  return "'" .. tostring(s):gsub("'", [['\'']]) .. "'"
end

-- Run `cmd` with sh; `env` adds variables for this call only. Returns output (stdout and
-- stderr) and the exit code.
local function sh(cmd, env)
  local prefix = {}
  for k, v in pairs(env or {}) do prefix[#prefix + 1] = k .. "=" .. quote(v) end
  prefix[#prefix + 1] = "sh -c " .. quote(cmd) .. " 2>&1"
  local p = assert(io.popen(table.concat(prefix, " ")))
  local out = p:read("a")
  local _, _, code = p:close()
  return out, code
end

local function need(name)
  local v = os.getenv(name)
  assert(v and v ~= "", name .. " is not set: run this spec through spec/support/with-stack.sh")
  return v
end

-- One value from the stack's database, over TCP with DATABASE_URL.
local function sql(query)
  local out, code = sh('psql "$DATABASE_URL" -X -A -t -v ON_ERROR_STOP=1 -c "$Q"', { Q = query })
  assert(code == 0, "psql failed: " .. out)
  return (out:gsub("%s+$", ""))
end

-- A signed S3 request (path style). `file` is the body for PUT; the payload hash header is
-- computed from it, as an SDK would. Returns the HTTP status (number) and the response body.
local function s3(method, path, file, env)
  local body = os.tmpname()
  local cmd = [[
    sha=$(sha256sum < "$IN" | cut -d' ' -f1)
    set -- -sS -o "$OUT" -w '%{http_code}' \
      --aws-sigv4 "aws:amz:us-east-1:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
      -H "x-amz-content-sha256: $sha"
    case $METHOD in
      HEAD) set -- "$@" -I ;;
      PUT) set -- "$@" -T "$IN" ;;
      *) set -- "$@" -X "$METHOD" ;;
    esac
    exec curl "$@" "$AWS_ENDPOINT_URL_S3$RPATH"]]
  local vars = { IN = file or "/dev/null", OUT = body, METHOD = method, RPATH = path }
  for k, v in pairs(env or {}) do vars[k] = v end
  local status = sh(cmd, vars)
  local f = io.open(body, "rb")
  local text = f and f:read("a") or ""
  if f then f:close() end
  os.remove(body)
  return tonumber(status:match("(%d%d%d)%s*$")), text, status
end

local function write_file(text)
  local name = os.tmpname()
  local f = assert(io.open(name, "wb"))
  f:write(text)
  f:close()
  return name
end

describe("the throwaway test stack", function()
  local dir = need("RESCLEAN_STACK_DIR")

  it("writes DIR/env with every variable the specs rely on, readable by its owner only", function()
    local f = assert(io.open(dir .. "/env"))
    local text = f:read("a")
    f:close()
    for _, name in ipairs({
      "DATABASE_URL", "PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE",
      "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION",
      "RESCLEAN_STACK_DIR", "RESCLEAN_CEPH_CONF", "RESCLEAN_RGW_PID", "RESCLEAN_PG_PID",
      "RESCLEAN_PGDATA", "RESCLEAN_PG_BIN",
    }) do
      assert.truthy(text:find("\nexport " .. name .. "=", 1, true) or text:find("^export " .. name .. "="),
        name .. " missing from DIR/env")
      need(name)
    end
    assert.are.equal("600", (sh('stat -c %a "$RESCLEAN_STACK_DIR/env"'):gsub("%s+$", "")))
    assert.are.equal("us-east-1", os.getenv("AWS_REGION"))
    assert.truthy(need("DATABASE_URL"):match("^postgres://resclean:[^@]+@127%.0%.0%.1:%d+/resclean%?sslmode=disable$"),
      "DATABASE_URL is not postgres://resclean:PASSWORD@127.0.0.1:PORT/resclean?sslmode=disable")
    assert.truthy(need("AWS_ENDPOINT_URL_S3"):match("^http://127%.0%.0%.1:%d+$"))
  end)

  describe("PostgreSQL", function()
    it("answers over TCP as resclean with the password from DATABASE_URL", function()
      assert.are.equal("resclean|resclean|127.0.0.1",
        sql("SELECT current_user || '|' || current_database() || '|' || host(inet_server_addr())"))
    end)

    it("refuses a wrong password (the password is really checked)", function()
      local out, code = sh('psql -X -h "$PGHOST" -p "$PGPORT" -U resclean -d resclean -c "SELECT 1"',
        { PGPASSWORD = "not-the-password" })
      assert.are_not.equal(0, code)
      assert.truthy(out:find("password authentication failed", 1, true), out)
    end)

    it("has the schema's tables and enum, owned by resclean", function()
      local list = "'" .. table.concat(TABLES, "','") .. "'"
      assert.are.equal(table.concat(TABLES, ","), sql(
        "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables"
        .. " WHERE schemaname = 'public' AND tablename IN (" .. list .. ") AND tableowner = 'resclean'"))
      assert.are.equal(
        "MASK_LIST,RULE_LIST,WORD_LIST,CHARSET,DYNAMIC_WORD_LIST,EPHEMERAL_WORD_LIST,"
        .. "EPHEMERAL_MASK_LIST,EPHEMERAL_RULE_LIST",
        sql("SELECT string_agg(enumlabel, ',' ORDER BY enumsortorder) FROM pg_enum"
          .. " WHERE enumtypid = 'attackresourcetype'::regtype"))
    end)

    it("keeps the upstream rules: no defaults, four nullable columns, only id and guid indexed", function()
      local where = " FROM information_schema.columns"
        .. " WHERE table_schema = 'public' AND table_name = 'attack_resource_files'"
      assert.are.equal("19", sql("SELECT count(*)" .. where))
      assert.are.equal("0", sql("SELECT count(*)" .. where .. " AND column_default IS NOT NULL"))
      assert.are.equal("content,file_label,project_id,tags",
        sql("SELECT string_agg(column_name, ',' ORDER BY column_name)" .. where .. " AND is_nullable = 'YES'"))
      assert.are.equal("attack_resource_files_guid_key,attack_resource_files_pkey",
        sql("SELECT string_agg(indexname, ',' ORDER BY indexname) FROM pg_indexes"
          .. " WHERE schemaname = 'public' AND tablename = 'attack_resource_files'"))
    end)

    it("refuses to delete a resource an attack references, with SQLSTATE 23503", function()
      -- One session, rolled back: nothing is left behind for the other specs.
      local out = sh([[psql "$DATABASE_URL" -X -q <<'SQL'
\set VERBOSITY verbose
BEGIN;
SELECT gen_random_uuid() AS id \gset
INSERT INTO attack_resource_files (id, file_name, download_url, checksum, guid, resource_type,
  line_format, line_encoding, used_for_modes, source, line_count, byte_size, is_uploaded,
  created_at, updated_at)
VALUES (:'id', 'words.txt', '', '', gen_random_uuid(), 'WORD_LIST', 'freeform', 'utf-8', '[]',
  'upload', 0, 0, false, now(), now());
INSERT INTO attacks (name, word_list_id) VALUES ('stack spec', :'id');
DELETE FROM attack_resource_files WHERE id = :'id';
ROLLBACK;
SQL]])
      assert.truthy(out:find("ERROR:  23503:", 1, true), out)
      assert.truthy(out:find("attacks_word_list_id_fkey", 1, true), out)
    end)
  end)

  describe("Ceph RGW", function()
    -- Unique per run, so reruns against a kept stack (RESCLEAN_KEEP_STACK) do not collide.
    local bucket = ("stack-spec-%d-%d"):format(os.time(), math.random(1000000))
    local key = "0b9e5f54-8c4e-4d6c-9a55-7f3f2c1e0d42"
    local body = "hello from the stack spec\n"

    local function put_object()
      local status, text = s3("PUT", "/" .. bucket)
      assert.are.equal(200, status, text)
      local file = write_file(body)
      status, text = s3("PUT", "/" .. bucket .. "/" .. key, file)
      os.remove(file)
      assert.are.equal(200, status, text)
    end

    teardown(function()
      s3("DELETE", "/" .. bucket .. "/" .. key)
      s3("DELETE", "/" .. bucket)
    end)

    it("creates a bucket, stores an object and gives it back with a signed request", function()
      put_object()
      local status, text = s3("GET", "/" .. bucket .. "/" .. key)
      assert.are.equal(200, status, text)
      assert.are.equal(body, text)
      status = s3("HEAD", "/" .. bucket .. "/no-such-key")
      assert.are.equal(404, status)
    end)

    it("answers 403 SignatureDoesNotMatch to a wrong secret key", function()
      put_object() -- a repeated CreateBucket answers 200 on RGW
      local status, text = s3("GET", "/" .. bucket .. "/" .. key, nil,
        { AWS_SECRET_ACCESS_KEY = "wrongwrongwrongwrongwrongwrongwrongwrong" })
      assert.are.equal(403, status)
      assert.truthy(text:find("SignatureDoesNotMatch", 1, true), text)
    end)

    it("answers 403 to an unsigned request for a private object", function()
      put_object()
      local out = sh('curl -s -o /dev/null -w "%{http_code}" "$AWS_ENDPOINT_URL_S3/$B/$K"',
        { B = bucket, K = key })
      assert.are.equal("403", out)
    end)

    it("comes back after radosgw is killed, through stack.sh restart-rgw", function()
      put_object()
      -- From DIR/env, not our environment: an earlier restart may have replaced the process.
      local old = sh('sed -n "s/^export RESCLEAN_RGW_PID=//p" "$RESCLEAN_STACK_DIR/env"'):match("%d+")
      assert.truthy(old, "no RESCLEAN_RGW_PID in DIR/env")
      assert.are.equal(0, select(2, sh('kill -9 "$P"', { P = old })))
      -- Wait (bounded) until the port no longer answers, so the restart is really needed.
      local down = sh([[for i in $(seq 100); do
          curl -s -o /dev/null --max-time 1 "$AWS_ENDPOINT_URL_S3/" || { echo down; exit; }
          sleep 0.05
        done]])
      assert.truthy(down:find("down", 1, true), "radosgw still answers after SIGKILL")

      local out, code = sh('bash "$S" restart-rgw "$RESCLEAN_STACK_DIR" 2>/dev/null', { S = STACK_SH })
      assert.are.equal(0, code, out)
      local new = out:match("(%d+)%s*$")
      assert.truthy(new and new ~= old, out)
      local env = sh('grep "^export RESCLEAN_RGW_PID=" "$RESCLEAN_STACK_DIR/env"')
      assert.are.equal("export RESCLEAN_RGW_PID=" .. new, (env:gsub("%s+$", "")))

      -- The objects live in the OSD, not in radosgw: the object survived.
      local status, text = s3("GET", "/" .. bucket .. "/" .. key)
      assert.are.equal(200, status, text)
      assert.are.equal(body, text)

      -- A bucket change notifies every radosgw watching; the killed one's watch was dropped by
      -- restart-rgw, otherwise this would wait ~30 s for the OSD to time it out.
      local started = os.time()
      assert.are.equal(204, (s3("DELETE", "/" .. bucket .. "/" .. key)))
      assert.are.equal(204, (s3("DELETE", "/" .. bucket)))
      assert.is_true(os.time() - started < 15, "bucket delete waited for the killed radosgw")
    end)
  end)
end)
