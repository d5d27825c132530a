-- Fixtures for integration specs, the demo and the bench: the upstream
-- tables filled with realistic rows (through SQL on the harness's
-- PostgreSQL) and objects in a bucket (through resclean.s3 on its RGW).
local pg = require("resclean.pg")
local s3 = require("resclean.s3")

local M = {}

local function need(name)
  local v = os.getenv(name)
  if not v or v == "" then
    error(name .. " is not set: run the specs through spec/support/with-stack.sh (make test)", 3)
  end
  return v
end

function M.check(res, err)
  if not res then
    error(("%s error %s: %s"):format(err.kind or "?", tostring(err.code), tostring(err.message)), 2)
  end
  return res
end
local check = M.check

function M.connect()
  return check(pg.connect(need("DATABASE_URL")))
end

function M.s3_options(bucket, extra)
  local o = {
    endpoint = need("AWS_ENDPOINT_URL_S3"), region = os.getenv("AWS_REGION") or "us-east-1",
    access_key = need("AWS_ACCESS_KEY_ID"), secret_key = need("AWS_SECRET_ACCESS_KEY"),
    bucket = bucket,
  }
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

-- A client on a fresh bucket.
function M.bucket(name, extra)
  local c = check(s3.client(M.s3_options(name, extra)))
  check(c:create_bucket())
  return c
end

-- Is conn the throwaway stack's database? spec/support/stack.sh writes a random token into the
-- table resclean_throwaway_stack there and exports it as RESCLEAN_THROWAWAY_STACK: only where
-- both are present and equal may a helper truncate. Returns true, or nil and why not (one line
-- naming what to fix). Checked once per connection.
local throwaway_ok = setmetatable({}, { __mode = "k" })
local function conn_name(conn) -- user@host:port/db, never the password
  local s = tostring(conn)
  return s:match("%((.-)%)$") or s
end
local WHY_STACK = "these helpers empty tables and run only on the throwaway stack that"
  .. " spec/support/with-stack.sh starts (make test, make demo)"
function M.throwaway(conn)
  if throwaway_ok[conn] then return true end
  local want = os.getenv("RESCLEAN_THROWAWAY_STACK")
  if not want or want == "" then
    return nil, "RESCLEAN_THROWAWAY_STACK is not set: " .. WHY_STACK
  end
  local res, err = conn:query("SELECT to_regclass('public.resclean_throwaway_stack') IS NOT NULL AS marked")
  if not res then
    return nil, ("could not check %s for the throwaway marker: %s"):format(conn_name(conn),
      (tostring(err.message):gsub("%s+$", "")))
  end
  if not res[1].marked then
    return nil, ("database %s has no table resclean_throwaway_stack, so it is not a throwaway stack: %s")
      :format(conn_name(conn), WHY_STACK)
  end
  res, err = conn:query("SELECT token FROM public.resclean_throwaway_stack")
  if not res then
    return nil, ("could not read resclean_throwaway_stack in %s: %s"):format(conn_name(conn),
      (tostring(err.message):gsub("%s+$", "")))
  end
  if #res ~= 1 or res[1].token ~= want then
    return nil, ("the token in %s's resclean_throwaway_stack does not match RESCLEAN_THROWAWAY_STACK:"
      .. " DATABASE_URL names another stack's database than this environment's"):format(conn_name(conn))
  end
  throwaway_ok[conn] = true
  return true
end

-- Empty the tables resclean works on; raises, touching nothing, unless conn is the throwaway
-- stack's database (M.throwaway).
function M.reset(conn)
  local ok, why = M.throwaway(conn)
  if not ok then error("fixtures.reset refused: " .. why, 2) end
  check(conn:query("TRUNCATE attacks, attack_resource_files, upload_resource_files, resclean_cancel_requests"))
end

-- A fresh start for one spec: empty tables and a client on a new bucket named after tag.
-- Returns the bucket's name and the client.
function M.fresh_bucket(conn, tag)
  M.reset(conn)
  local name = M.unique_bucket(tag)
  return name, M.bucket(name)
end

-- Insert n rows; returns their ids (text). opts: age_s (default 2 days),
-- type (WORD_LIST), uploaded (false), content (for ephemeral types).
function M.rows(conn, n, opts)
  opts = opts or {}
  local res = check(conn:query([[
    INSERT INTO attack_resource_files (id, file_name, download_url, checksum, guid, resource_type,
      line_format, line_encoding, used_for_modes, source, line_count, byte_size, content,
      is_uploaded, created_at, updated_at)
    SELECT gen_random_uuid(), 'list-' || g || '.txt', '', '', gen_random_uuid(), $2::attackresourcetype,
      'freeform', 'utf-8', '[0]'::json, 'upload', 0, 0, $4::json, $3,
      now() - make_interval(secs => $5::float8 + g * 0.001), now()
    FROM generate_series(1, $1::int) AS g
    RETURNING id::text AS id]],
    n, opts.type or "WORD_LIST", opts.uploaded or false,
    opts.content, opts.age_s or 2 * 86400))
  local ids = {}
  for i, r in ipairs(res) do ids[i] = r.id end
  return ids
end

-- Wait, by the database clock, until every object in the buckets of clients
-- (a list) is older than `age` seconds: reconcile only considers old objects.
function M.wait_objects_older(conn, clients, age)
  local newest = 0
  for _, client in ipairs(clients) do
    for _, e in ipairs(check(client:list({})).keys) do
      local t = check(conn:query("SELECT extract(epoch FROM $1::timestamptz)::float8 AS t", e.last_modified))[1].t
      newest = math.max(newest, t)
    end
  end
  require("support.helpers").wait_for(function()
    return check(conn:query("SELECT extract(epoch FROM now())::float8 AS n"))[1].n > newest + age + 0.5
  end, age + 30, "the objects to be older than " .. age .. " s")
end

-- Put a small object for every id.
function M.objects(client, ids, body)
  for _, id in ipairs(ids) do check(client:put(id, body or ("data of " .. id))) end
end

-- Reference an id from an attack (blocks its deletion: 23503).
function M.reference(conn, id)
  check(conn:query("INSERT INTO attacks (name, word_list_id) VALUES ('attack', $1)", id))
end

-- Which of ids still have a row?
function M.existing_rows(conn, ids)
  local res = check(conn:query("SELECT id::text AS id FROM attack_resource_files WHERE id = ANY($1::uuid[])", ids))
  local set = {}
  for _, r in ipairs(res) do set[r.id] = true end
  return set
end

function M.count(conn, where, ...)
  local res = check(conn:query("SELECT count(*)::int AS n FROM attack_resource_files" ..
    (where and (" WHERE " .. where) or ""), ...))
  return res[1].n
end

-- Which of ids still have an object?
function M.existing_objects(client, ids)
  local set = {}
  for _, id in ipairs(ids) do
    local h = check(client:head(id))
    if h.exists then set[id] = true end
  end
  return set
end

function M.count_set(set)
  local n = 0
  for _ in pairs(set) do n = n + 1 end
  return n
end

local counter = 0
-- A bucket name unique to this process and call.
function M.unique_bucket(prefix)
  counter = counter + 1
  return ("%s-%d-%d"):format(prefix or "spec", require("resclean.sys").pid(), counter)
end

return M
