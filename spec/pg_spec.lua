-- resclean.pg against the real PostgreSQL that spec/support starts (DATABASE_URL).
-- Every spec uses its own uniquely named tables, so it does not depend on examples/schema.sql
-- and does not collide with other specs.
local errors = require("resclean.errors")
local pg = require("resclean.pg")
local helpers = require("support.helpers")

local URL = os.getenv("DATABASE_URL")

local function connect(conninfo)
  local c, err = pg.connect(conninfo or URL)
  assert(c, "connect failed: " .. tostring(err))
  return c
end

-- Raise on nil, err, so a failing statement fails the spec with the server's message.
local function ok(res, err)
  if res == nil then error(tostring(err), 2) end
  return res
end

-- The harness's URL with one more option (URI or key=value form).
local function with_option(url, key, value)
  if url:match("^postgres") then
    return url .. (url:find("?", 1, true) and "&" or "?") .. key .. "=" .. value
  end
  return url .. " " .. key .. "=" .. value
end

-- key=value conninfo for the same server, built from what the connection reports.
local function keyword_conninfo(c)
  local info = c:info()
  local parts = {}
  for _, k in ipairs({ "host", "port", "user", "dbname" }) do
    if info[k] then parts[#parts + 1] = ("%s='%s'"):format(k, info[k]) end
  end
  return table.concat(parts, " ")
end

local function count(c, tbl, where)
  return ok(c:query(("SELECT count(*) AS n FROM %s %s"):format(tbl, where or "")))[1].n
end

describe("resclean.pg", function()
  assert(URL, "DATABASE_URL is not set: run the specs through spec/support/with-stack.sh")

  local main   -- a connection shared by the simple specs
  local names = {}

  -- A table name no other spec (or concurrent run) uses; dropped in teardown.
  local function unique(stem)
    local name = ("pgspec_%s_%d_%d"):format(stem, main:backend_pid(), #names + 1)
    names[#names + 1] = name
    return main:quote_ident(name)
  end

  setup(function()
    main = connect()
  end)

  teardown(function()
    if main then
      for i = #names, 1, -1 do main:query("DROP TABLE IF EXISTS " .. main:quote_ident(names[i]) .. " CASCADE") end
      main:close()
    end
  end)

  describe("connect", function()
    it("connects with the harness URL and names the session resclean", function()
      local res = ok(main:query("SELECT current_setting('application_name') AS app"))
      assert.equal("resclean", res[1].app)
      assert.equal("resclean", main:info().application_name)
    end)

    it("sets a connect timeout unless one is given", function()
      if os.getenv("PGCONNECT_TIMEOUT") == nil then
        assert.equal("10", main:info().connect_timeout)
      end
      local c = connect(with_option(URL, "connect_timeout", "3"))
      assert.equal("3", c:info().connect_timeout)
      c:close()
    end)

    it("keeps an application_name given in the connection string", function()
      local c = connect(with_option(URL, "application_name", "custom_app"))
      assert.equal("custom_app", ok(c:query("SHOW application_name"))[1].application_name)
      c:close()
    end)

    it("accepts a key=value connection string as well as a URI", function()
      local c = connect(keyword_conninfo(main))
      assert.equal(1, ok(c:query("SELECT 1 AS one"))[1].one)
      c:close()
    end)

    it("uses libpq's PG* environment when the connection string is nil", function()
      local info = main:info()
      local script = helpers.tmpfile([[
        local c = assert(require("resclean.pg").connect(nil))
        io.write(c:query("SELECT current_database() AS d, current_setting('application_name') AS a")[1].d)
        c:close()
      ]])
      local r = helpers.run({ "run", script }, {
        DATABASE_URL = false, PGHOST = info.host or info.hostaddr, PGPORT = info.port,
        PGUSER = info.user, PGDATABASE = info.dbname,
      })
      assert.equal(0, r.code, r.stderr)
      assert.equal(info.dbname, r.stdout)
    end)

    it("shows no password in tostring or info", function()
      -- the harness authenticates with a password (in DATABASE_URL, and PGPASSWORD for libpq)
      local secret = URL:match("^postgres[%w]*://[^:/@]+:([^@]+)@") or os.getenv("PGPASSWORD")
      assert(secret and #secret >= 8, "the harness should connect with a password")
      local c = connect(keyword_conninfo(main) .. " password='" .. secret .. "'")
      for _, conn in ipairs({ main, c }) do
        assert.matches("^resclean%.pg%.conn %(.+@.+%)$", tostring(conn))
        assert.is_nil(tostring(conn):find(secret, 1, true))
        assert.is_nil(conn:info().password)
        for k, v in pairs(conn:info()) do assert.is_nil(tostring(v):find(secret, 1, true), k) end
      end
      c:close()
      assert.is_nil(tostring(c):find(secret, 1, true))
    end)

    it("shows no password in the error of a failed connect", function()
      local secret = "Wr0ng-secret-pw"
      local c, err = pg.connect(keyword_conninfo(main) .. " password=" .. secret)
      assert.is_nil(c)
      assert.same({ "pg", "connection" }, { err.kind, err.code })
      assert.is_nil(err.message:find(secret, 1, true))
      assert.is_nil(tostring(err):find(secret, 1, true))
      c, err = pg.connect(URL:gsub("^(postgres[%w]*://[^:/@]+:)[^@]+@", "%1" .. secret .. "@"))
      assert.is_nil(c)
      assert.is_nil(err.message:find(secret, 1, true))
    end)

    it("never echoes a piece of a password from a malformed connection string", function()
      local c, err = pg.connect("host=127.0.0.1 password=abcd1234 efgh5678")
      assert.is_nil(c)
      assert.same({ "pg", "connection", false }, { err.kind, err.code, errors.retryable(err) })
      assert.matches("invalid connection string", err.message)
      assert.is_nil(err.message:find("efgh5678", 1, true))
      assert.is_nil(err.message:find("abcd1234", 1, true))

      c, err = pg.connect("postgresql://someone:pa%zz-secret-word@127.0.0.1/db")
      assert.is_nil(c)
      assert.is_nil(err.message:find("secret-word", 1, true))
      assert.is_nil(tostring(err):find("secret-word", 1, true))
    end)

    it("reports an unreachable server as a retryable connection error", function()
      local c, err = pg.connect("host=127.0.0.1 port=1 connect_timeout=2 password=unreach4ble")
      assert.is_nil(c)
      assert.same({ "pg", "connection", true }, { err.kind, err.code, errors.retryable(err) })
      assert.is_string(err.message)
      assert.is_nil(err.message:find("unreach4ble", 1, true))
      assert.matches("^pg connection: ", tostring(err))
    end)

    it("closes idempotently, and a closed connection raises on use", function()
      local c = connect()
      c:close()
      c:close()
      assert.equal("closed", c:status())
      assert.matches("closed$", tostring(c))
      assert.has_error(function() c:query("SELECT 1") end, "attempt to use a closed connection")
      assert.has_error(function() c:begin() end, "attempt to use a closed connection")
      assert.has_error(function() c:prepare("x", "SELECT 1") end, "attempt to use a closed connection")
      assert.has_error(function() c:quote_ident("x") end, "attempt to use a closed connection")
      assert.has_error(function() c:backend_pid() end, "attempt to use a closed connection")
    end)

    it("closes at the end of a <close> scope", function()
      local outer
      do
        local c <close> = connect()
        outer = c
        assert.equal("ok", c:status())
      end
      assert.equal("closed", outer:status())
    end)

    it("reports status, backend pid and server version", function()
      local st, txst = main:status()
      assert.same({ "ok", "idle" }, { st, txst })
      assert.equal(ok(main:query("SELECT pg_backend_pid() AS p"))[1].p, main:backend_pid())
      assert.is_true(main:server_version() >= 100000)
      assert.is_true(math.type(pg.libpq_version) == "integer")
    end)
  end)

  describe("query", function()
    it("round-trips booleans, integers to the int8 limits, floats and numerics with their Lua types", function()
      local row = ok(main:query([[SELECT $1::bool AS t, $2::bool AS f, $3::int2 AS i2, $4::int2 AS i2min,
          $5::int4 AS i4, $6::int8 AS i8max, $7::int8 AS i8min, $8::float8 AS f8, $9::float4 AS f4,
          $10::float8 AS big, $11::float8 AS inf, $12::float8 AS ninf, $13::float8 AS nan, $14::float8 AS whole,
          $15::oid AS o]],
        true, false, 32767, -32768, -2147483648, math.maxinteger, math.mininteger, 0.1, 1.5,
        -1.5e300, math.huge, -math.huge, 0 / 0, 3.0, 4294967295))[1]
      assert.is_true(row.t)
      assert.is_false(row.f)
      assert.equal(32767, row.i2)
      assert.equal(-32768, row.i2min)
      assert.equal(-2147483648, row.i4)
      assert.equal(math.maxinteger, row.i8max)
      assert.equal(math.mininteger, row.i8min)
      for _, k in ipairs({ "i2", "i4", "i8max", "i8min", "o" }) do assert.equal("integer", math.type(row[k]), k) end
      assert.equal(0.1, row.f8)
      assert.equal(1.5, row.f4)
      assert.equal(-1.5e300, row.big)
      assert.equal(math.huge, row.inf)
      assert.equal(-math.huge, row.ninf)
      assert.is_true(row.nan ~= row.nan)
      assert.equal(3.0, row.whole)
      for _, k in ipairs({ "f8", "f4", "big", "inf", "whole" }) do assert.equal("float", math.type(row[k]), k) end
      assert.equal(4294967295, row.o)
    end)

    it("returns a numeric as a number when no digit is lost, else as its exact text", function()
      local row = ok(main:query([[SELECT 123::numeric AS int, '-9223372036854775808'::numeric AS min,
          '3600.123456'::numeric AS frac, '1.10'::numeric AS scaled, '0.000001'::numeric AS small,
          '123456789012345.5'::numeric AS long, '99999999999999999999'::numeric AS huge,
          '1e-400'::numeric AS tiny, 'NaN'::numeric AS nan, $1::numeric AS bound]], 0.25))[1]
      assert.equal(123, row.int)
      assert.equal("integer", math.type(row.int))
      assert.equal(math.mininteger, row.min)
      assert.equal(3600.123456, row.frac)
      assert.equal("float", math.type(row.frac))
      assert.equal(1.1, row.scaled)
      assert.equal(0.000001, row.small)
      assert.equal("123456789012345.5", row.long)
      assert.equal("99999999999999999999", row.huge)
      assert.equal("string", type(row.tiny))
      assert.is_true(row.nan ~= row.nan)
      assert.equal(0.25, row.bound)
    end)

    it("returns text, uuid, timestamptz, json, enums and the rest as strings", function()
      local mood = unique("mood")
      ok(main:query(("CREATE TYPE %s AS ENUM ('sad', 'ok')"):format(mood)))
      local uuid = "0b5a1f58-4c3e-4d7b-9a59-3c1f6d6b7e01"
      local row = ok(main:query(([[SELECT $1::text AS s, $2::uuid AS u, '2024-05-06 07:08:09.5+00'::timestamptz
          AT TIME ZONE 'UTC' AS ts, $3::json AS j, $4::%s AS m, '\x00ff'::bytea AS b, $5::varchar(5) AS v]])
        :format(mood), "plain", uuid:upper(), '{"a": [1, "x"]}', "ok", "héllo"))[1]
      assert.equal("plain", row.s)
      assert.equal(uuid, row.u)
      assert.equal("2024-05-06 07:08:09.5", row.ts)
      assert.equal('{"a": [1, "x"]}', row.j)
      assert.equal("ok", row.m)
      assert.equal("\\x00ff", row.b)
      assert.equal("héllo", row.v)
      ok(main:query("DROP TYPE " .. mood))
    end)

    it("keeps unicode and empty strings intact and tells them from NULL", function()
      local s = "zoë ✓ 日本語 🙂 \"'\\ \t\n"
      local row = ok(main:query("SELECT $1::text AS s, char_length($1::text) AS n, $2::text AS e, $3::text AS z",
        s, "", nil))[1]
      assert.equal(s, row.s)
      assert.equal(utf8.len(s), row.n)
      assert.equal("", row.e)
      assert.is_nil(row.z)
    end)

    it("leaves NULL columns out of the row and counts trailing nil parameters", function()
      local res = ok(main:query("SELECT $1::int AS a, $2::text AS b, $3::int IS NULL AS c", nil, nil, nil))
      assert.same({ c = true }, res[1])
      assert.same({ "a", "b", "c" }, res.columns)
      -- two placeholders, the second bound to a trailing nil: the server must see two values
      res = ok(main:query("SELECT $1::int AS a, $2::int IS NULL AS b", 1, nil))
      assert.same({ a = 1, b = true }, res[1])
    end)

    it("returns rows at 1..n with the ordered column names, n and the command", function()
      local res = ok(main:query("SELECT g AS z, g * 2 AS a, 'x' AS m FROM generate_series(1, 3) g ORDER BY g"))
      assert.equal(3, res.n)
      assert.equal(3, #res)
      assert.same({ "z", "a", "m" }, res.columns)
      assert.equal("SELECT", res.command)
      assert.same({ z = 2, a = 4, m = "x" }, res[2])
      -- metadata names can be column names too: rows are separate tables
      res = ok(main:query("SELECT 1 AS n, 2 AS columns, 3 AS affected, 4 AS command"))
      assert.same({ n = 1, columns = 2, affected = 3, command = 4 }, res[1])
      assert.equal(1, res.n)
    end)

    it("returns an empty result, not nil, for a statement without rows", function()
      local res = ok(main:query("SELECT 1 AS x WHERE false"))
      assert.equal(0, res.n)
      assert.equal(0, #res)
      assert.same({ "x" }, res.columns)
      res = ok(main:query("SET statement_timeout = 0"))
      assert.equal(0, res.n)
      assert.equal("SET", res.command)
    end)

    it("reports the affected row count of INSERT, UPDATE and DELETE", function()
      local t = unique("dml")
      ok(main:query(("CREATE TABLE %s (id int PRIMARY KEY, v text)"):format(t)))
      local res = ok(main:query(("INSERT INTO %s SELECT g, 'v' || g FROM generate_series(1, 5) g"):format(t)))
      assert.same({ 5, "INSERT", 0 }, { res.affected, res.command, res.n })
      res = ok(main:query(("UPDATE %s SET v = $1 WHERE id > $2"):format(t), "new", 3))
      assert.same({ 2, "UPDATE" }, { res.affected, res.command })
      res = ok(main:query(("DELETE FROM %s WHERE id = ANY($1) RETURNING id"):format(t), { 1, 2, 99 }))
      assert.same({ 2, "DELETE", 2 }, { res.affected, res.command, res.n })
      table.sort(res, function(x, y) return x.id < y.id end)
      assert.same({ { id = 1 }, { id = 2 } }, { res[1], res[2] })
      res = ok(main:query(("UPDATE %s SET v = 'x' WHERE false"):format(t)))
      assert.equal(0, res.affected)
    end)

    it("binds a Lua array as a PostgreSQL array, hostile elements intact", function()
      local hostile = table.pack('quote"d', "back\\slash", "com,ma", "{brace}", "}", "NULL", "null", "",
        " padded ", nil, "ünï", "'; DROP TABLE x; --", "\\\"", "a\tb\nc", nil)
      assert.equal(15, hostile.n)
      local res = ok(main:query(
        "SELECT t.v, t.i FROM unnest($1::text[]) WITH ORDINALITY AS t(v, i) ORDER BY t.i", hostile))
      assert.equal(hostile.n, res.n)
      for i = 1, hostile.n do
        assert.equal(i, res[i].i)
        assert.equal(hostile[i], res[i].v, "element " .. i)
      end
      res = ok(main:query("SELECT cardinality($1::text[]) AS n, $1::text[] IS NULL AS isnull", {}))
      assert.same({ n = 0, isnull = false }, res[1])
    end)

    it("binds arrays of numbers, booleans, nested arrays and uuids for = ANY", function()
      local row = ok(main:query([==[SELECT $1::int8[] AS i, array_to_string($1::int8[], ',') AS is,
          $2::float8[] = ARRAY[0.1, -2.5e-10, 'Infinity']::float8[] AS f, $3::bool[] = ARRAY[true, false, NULL] AS b,
          $4::int[] = ARRAY[[1, 2], [3, 4]] AS two_d]==],
        { math.maxinteger, math.mininteger, 0 }, { 0.1, -2.5e-10, math.huge }, table.pack(true, false, nil),
        { { 1, 2 }, { 3, 4 } }))[1]
      assert.equal(("%d,%d,0"):format(math.maxinteger, math.mininteger), row.is)
      assert.is_true(row.f)
      assert.is_true(row.b)
      assert.is_true(row.two_d)

      local t = unique("uuids")
      ok(main:query(("CREATE TABLE %s (id uuid PRIMARY KEY)"):format(t)))
      local ids = {}
      for i = 1, 5 do ids[i] = ("00000000-0000-4000-8000-%012d"):format(i) end
      ok(main:query(("INSERT INTO %s SELECT unnest($1::uuid[])"):format(t), ids))
      local res = ok(main:query(("SELECT id FROM %s WHERE id = ANY($1::uuid[]) ORDER BY id"):format(t),
        { ids[2], ids[4], "00000000-0000-4000-8000-999999999999" }))
      assert.same({ ids[2], ids[4] }, { res[1].id, res[2].id })
      assert.equal(2, res.n)
    end)

    it("keeps an SQL injection string as data", function()
      local t = unique("inj")
      ok(main:query(("CREATE TABLE %s (v text)"):format(t)))
      local evil = ("x'); DROP TABLE %s; --"):format(t)
      ok(main:query(("INSERT INTO %s VALUES ($1)"):format(t), evil))
      local res = ok(main:query(("SELECT v FROM %s WHERE v = $1 OR v = ANY($2)"):format(t), evil,
        { "'); DELETE FROM " .. t .. "; --" }))
      assert.equal(1, res.n)
      assert.equal(evil, res[1].v)
      assert.equal(1, count(main, t))
    end)

    it("runs one statement per query; exec runs a script and returns the last result", function()
      local res, err = main:query("SELECT 1; SELECT 2")
      assert.is_nil(res)
      assert.equal("42601", err.code)
      res = ok(main:exec("SELECT 1 AS a; SELECT 2 AS b"))
      assert.same({ b = 2 }, res[1])
      assert.has_error(function() main:exec("SELECT $1", 1) end)
    end)

    it("refuses COPY and leaves the connection usable", function()
      assert.has_error(function() main:query("COPY (SELECT 1) TO STDOUT") end, "COPY is not supported by resclean.pg")
      local t = unique("copy")
      ok(main:query(("CREATE TABLE %s (v int)"):format(t)))
      assert.has_error(function() main:query(("COPY %s FROM STDIN"):format(t)) end)
      assert.same({ "ok", "idle" }, { main:status() })
      assert.equal(0, count(main, t))
    end)

    it("raises on misuse", function()
      assert.has_error(function() main:query() end)
      assert.has_error(function() main:query({}) end)
      assert.has_error(function() main:query("SELECT $1", function() end) end)
      assert.has_error(function() main:query("SELECT $1", main) end)
      assert.has_error(function() main:query("SELECT $1", "a\0b") end)
      assert.has_error(function() main:query("SELECT 1\0; DROP TABLE x") end)
      assert.has_error(function() main:query("SELECT $1", { a = 1 }) end)
      assert.has_error(function() main:query("SELECT $1", { 1, 2, x = 3 }) end)
      assert.has_error(function() main:query("SELECT $1", { { { { { { { 1 } } } } } } }) end)
      assert.has_error(function() main:query("SELECT $1", { n = -1 }) end)
      assert.has_error(function() main.query({}, "SELECT 1") end)
      assert.has_error(function() pg.connect(42) end)
      assert.has_error(function() main:prepare(nil, "SELECT 1") end)
      assert.has_error(function() main:quote_ident(nil) end)
      -- and the connection is still fine
      assert.equal(1, ok(main:query("SELECT 1 AS x"))[1].x)
    end)
  end)

  describe("errors", function()
    it("returns nil and an error table with SQLSTATE, message and retryable", function()
      local res, err = main:query("SELEC 1")
      assert.is_nil(res)
      assert.same({ "pg", "42601", false }, { err.kind, err.code, errors.retryable(err) })
      assert.matches("syntax error", err.message)
      assert.equal("ERROR", err.severity)
      assert.matches("^pg 42601: syntax error", tostring(err))
      assert.equal("resclean.error", getmetatable(err).__name) -- the metatable s3 errors have too
      res, err = main:query("SELECT 1 / $1::int AS x", 0)
      assert.is_nil(res)
      assert.equal("22012", err.code)
    end)

    it("carries detail, constraint and table of a unique violation", function()
      local t = unique("uniq")
      ok(main:query(("CREATE TABLE %s (id int CONSTRAINT %s PRIMARY KEY)"):format(t, unique("uniq_pk"))))
      ok(main:query(("INSERT INTO %s VALUES (1)"):format(t)))
      local res, err = main:query(("INSERT INTO %s VALUES (1)"):format(t))
      assert.is_nil(res)
      assert.equal("23505", err.code)
      assert.is_false(errors.retryable(err))
      assert.matches("already exists", err.detail)
      assert.equal(names[#names], err.constraint)
      assert.equal(names[#names - 1], err.table)
    end)

    it("marks a statement timeout retryable", function()
      local c = connect()
      ok(c:query("SET statement_timeout = '50ms'"))
      local res, err = c:query("SELECT pg_sleep(5)")
      assert.is_nil(res)
      assert.same({ "57014", true }, { err.code, errors.retryable(err) })
      c:close()
    end)
  end)

  describe("prepared statements", function()
    it("prepares once and executes with parameters", function()
      assert.is_true(ok(main:prepare("pgspec_add", "SELECT $1::int + $2::int AS s, $3::text[] AS a")))
      local res = ok(main:exec_prepared("pgspec_add", 2, 3, { "x", nil, n = 2 }))
      assert.same({ s = 5, a = '{x,NULL}' }, res[1])
      local again, err = main:prepare("pgspec_add", "SELECT 1")
      assert.is_nil(again)
      assert.equal("42P05", err.code)
      res, err = main:exec_prepared("pgspec_no_such_statement")
      assert.is_nil(res)
      assert.equal("26000", err.code)
      -- Nothing stays on the server (a transaction pool would hand it on).
      assert.equal(0, ok(main:query("SELECT count(*)::int AS n FROM pg_prepared_statements"))[1].n)
      local tx <close> = ok(main:begin())
      assert.same({ s = 7 }, { s = ok(tx:exec_prepared("pgspec_add", 3, 4, {}))[1].s })
      ok(tx:commit())
    end)

    it("refuses SQL the server cannot parse at prepare, keeping nothing", function()
      local res, err = main:prepare("pgspec_bad", "SELEC 1")
      assert.is_nil(res)
      assert.equal("42601", err.code)
      res, err = main:exec_prepared("pgspec_bad")
      assert.is_nil(res)
      assert.equal("26000", err.code)
    end)
  end)

  describe("per-transaction settings", function()
    it("are SET LOCAL after every BEGIN and around statements outside a transaction", function()
      local c = connect()
      c:per_transaction("SET TRANSACTION READ ONLY; SET LOCAL statement_timeout = 1234")
      local row = ok(c:query("SELECT current_setting('statement_timeout') AS t, "
        .. "current_setting('transaction_read_only') AS ro"))[1]
      assert.same({ t = "1234ms", ro = "on" }, row)
      local res, err = c:query("CREATE TEMP TABLE pgspec_ro (x int)")
      assert.is_nil(res)
      assert.equal("25006", err.code)
      local tx = ok(c:begin())
      assert.equal("1234ms", ok(tx:query("SHOW statement_timeout"))[1].statement_timeout)
      ok(tx:commit())
      c:per_transaction(nil)
      row = ok(c:query("SELECT current_setting('statement_timeout') AS t, "
        .. "current_setting('transaction_read_only') AS ro"))[1]
      assert.same({ t = "0", ro = "off" }, row)
      assert.equal("idle", select(2, c:status()))
      c:close()
    end)

    it("a setting that fails leaves no transaction open", function()
      local c = connect()
      c:per_transaction("SET LOCAL no_such_setting_at_all = 1")
      local res, err = c:query("SELECT 1 AS one")
      assert.is_nil(res)
      assert.equal("42704", err.code)
      assert.equal("idle", select(2, c:status()))
      res, err = c:begin()
      assert.is_nil(res)
      assert.equal("42704", err.code)
      assert.equal("idle", select(2, c:status()))
      c:per_transaction(nil)
      assert.equal(1, ok(c:query("SELECT 1 AS one"))[1].one)
      c:close()
    end)
  end)

  describe("locking across connections", function()
    local a, b, t

    before_each(function()
      a, b = connect(), connect()
      t = unique("lock")
      ok(a:query(("CREATE TABLE %s (id int PRIMARY KEY)"):format(t)))
      ok(a:query(("INSERT INTO %s SELECT generate_series(1, 10)"):format(t)))
    end)

    after_each(function()
      a:close()
      b:close()
    end)

    it("gives two claimers disjoint rows with FOR UPDATE SKIP LOCKED, and the second never waits", function()
      local claim = ([[WITH c AS MATERIALIZED (SELECT id FROM %s ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
        SELECT id, extract(epoch FROM clock_timestamp() - statement_timestamp())::float8 AS waited FROM c]])
        :format(t)
      local txa <close> = ok(a:begin())
      local txb <close> = ok(b:begin())
      ok(txb:query("SET LOCAL lock_timeout = '2s'"))
      local ra = ok(txa:query(claim, 4))
      local rb = ok(txb:query(claim, 4))   -- would fail with 55P03 after 2 s if it waited
      assert.equal(4, ra.n)
      assert.equal(4, rb.n)
      assert.is_true(rb[1].waited < 0.5, "the second claim waited " .. rb[1].waited .. " s")
      local seen = {}
      for _, r in ipairs(ra) do seen[r.id] = "a" end
      for _, r in ipairs(rb) do
        assert.is_nil(seen[r.id], "row " .. r.id .. " claimed twice")
        seen[r.id] = "b"
      end
      ok(txa:commit())
      ok(txb:commit())
    end)

    it("returns 55P03, that resource's (item, not retryable), for FOR UPDATE NOWAIT on a locked row", function()
      local txa <close> = ok(a:begin())
      ok(txa:query(("SELECT id FROM %s WHERE id = $1 FOR UPDATE"):format(t), 3))
      local txb <close> = ok(b:begin())
      local res, err = txb:query(("SELECT id FROM %s WHERE id = $1 FOR UPDATE NOWAIT"):format(t), 3)
      assert.is_nil(res)
      assert.same({ "pg", "55P03", "item", false }, { err.kind, err.code, errors.classify(err), errors.retryable(err) })
      ok(txb:rollback())
      ok(txa:rollback())
      -- released: now b gets it
      local txb2 <close> = ok(b:begin())
      assert.equal(1, ok(txb2:query(("SELECT id FROM %s WHERE id = 3 FOR UPDATE NOWAIT"):format(t))).n)
    end)

    it("reports lock_timeout as 55P03, that resource's (item, not retryable)", function()
      local txa <close> = ok(a:begin())
      ok(txa:query(("SELECT id FROM %s WHERE id = 1 FOR UPDATE"):format(t)))
      local txb <close> = ok(b:begin())
      ok(txb:query("SET LOCAL lock_timeout = '50ms'"))
      local res, err = txb:query(("DELETE FROM %s WHERE id = 1"):format(t))
      assert.is_nil(res)
      assert.same({ "55P03", "item", false }, { err.code, errors.classify(err), errors.retryable(err) })
    end)
  end)

  describe("transactions", function()
    local a, b, t

    before_each(function()
      a, b = connect(), connect()
      t = unique("tx")
      ok(a:query(("CREATE TABLE %s (id int PRIMARY KEY)"):format(t)))
    end)

    after_each(function()
      a:close()
      b:close()
    end)

    it("commits: the other connection sees the rows", function()
      local tx <close> = ok(a:begin())
      assert.same({ "ok", "intrans" }, { a:status() })
      ok(tx:query(("INSERT INTO %s VALUES (1)"):format(t)))
      assert.equal(0, count(b, t))
      assert.is_true(tx:commit())
      assert.equal(1, count(b, t))
      assert.same({ "ok", "idle" }, { a:status() })
      assert.matches("finished", tostring(tx))
    end)

    it("rolls back a <close> transaction left by an error, and the error goes through", function()
      local okay, e = pcall(function()
        local tx <close> = ok(a:begin())
        ok(tx:query(("INSERT INTO %s VALUES (1), (2)"):format(t)))
        error("boom")
      end)
      assert.is_false(okay)
      assert.matches("boom", e)
      assert.equal(0, count(b, t))
      assert.same({ "ok", "idle" }, { a:status() })
      assert.equal(0, count(a, t))
    end)

    it("rolls back a <close> transaction left without commit", function()
      do
        local tx <close> = ok(a:begin())
        ok(tx:query(("INSERT INTO %s VALUES (1)"):format(t)))
      end
      assert.equal(0, count(b, t))
      local tx <close> = ok(a:begin())   -- the connection is free for the next one
      ok(tx:rollback())
    end)

    it("rolls back explicitly", function()
      local tx <close> = ok(a:begin())
      ok(tx:query(("INSERT INTO %s VALUES (1)"):format(t)))
      assert.is_true(tx:rollback())
      assert.equal(0, count(a, t))
    end)

    it("undoes only the part after a savepoint", function()
      local tx <close> = ok(a:begin())
      ok(tx:query(("INSERT INTO %s VALUES (1)"):format(t)))
      local sp = ok(tx:savepoint())
      assert.is_string(sp)
      ok(tx:query(("INSERT INTO %s VALUES (2)"):format(t)))
      assert.equal("named", ok(tx:savepoint("named")))
      ok(tx:query(("INSERT INTO %s VALUES (3)"):format(t)))
      ok(tx:release("named"))
      assert.is_true(tx:rollback_to(sp))
      ok(tx:query(("INSERT INTO %s VALUES (4)"):format(t)))
      ok(tx:commit())
      local res = ok(b:query(("SELECT id FROM %s ORDER BY id"):format(t)))
      assert.same({ { id = 1 }, { id = 4 } }, { res[1], res[2] })
      assert.equal(2, res.n)
    end)

    it("returns 23503 for a foreign-key violation and stays usable after rolling back to a savepoint", function()
      local child = unique("child")
      ok(a:query(("CREATE TABLE %s (id int PRIMARY KEY, parent int REFERENCES %s (id))"):format(child, t)))
      ok(a:query(("INSERT INTO %s VALUES (1), (2)"):format(t)))
      ok(a:query(("INSERT INTO %s VALUES (10, 1)"):format(child)))
      local tx <close> = ok(a:begin())
      ok(tx:query("SET CONSTRAINTS ALL IMMEDIATE"))
      ok(tx:savepoint("rows"))
      local res, err = tx:query(("DELETE FROM %s WHERE id = ANY($1)"):format(t), { 1, 2 })
      assert.is_nil(res)
      assert.same({ "23503", false }, { err.code, errors.retryable(err) })
      assert.equal(names[#names], err.table)
      assert.is_string(err.constraint)
      assert.same({ "ok", "inerror" }, { a:status() })
      ok(tx:rollback_to("rows"))
      assert.equal(1, ok(tx:query(("DELETE FROM %s WHERE id = $1"):format(t), 2)).affected)
      ok(tx:commit())
      res = ok(b:query(("SELECT id FROM %s"):format(t)))
      assert.same({ { id = 1 } }, { res[1] })
    end)

    it("reports a commit of a transaction aborted by an error as an error, with nothing committed", function()
      local tx <close> = ok(a:begin())
      ok(tx:query(("INSERT INTO %s VALUES (1)"):format(t)))
      assert.is_nil(tx:query("SELECT 1 / 0"))
      local done, err = tx:commit()
      assert.is_nil(done)
      assert.same({ "25P02", false }, { err.code, errors.retryable(err) })
      assert.equal(0, count(b, t))
      assert.same({ "ok", "idle" }, { a:status() })
    end)

    it("applies isolation and read-only options", function()
      local tx <close> = ok(a:begin({ isolation = "serializable", read_only = true }))
      assert.equal("serializable", ok(tx:query("SHOW transaction_isolation"))[1].transaction_isolation)
      local res, err = tx:query(("INSERT INTO %s VALUES (1)"):format(t))
      assert.is_nil(res)
      assert.equal("25006", err.code)
      assert.has_error(function() a:begin({ isolation = "chaotic" }) end)
    end)

    it("raises on misuse: a second begin, a finished transaction, a closed connection", function()
      local tx <close> = ok(a:begin())
      assert.has_error(function() a:begin() end, "a transaction is already open on this connection")
      ok(tx:commit())
      assert.has_error(function() tx:commit() end, "attempt to use a finished transaction")
      assert.has_error(function() tx:rollback() end, "attempt to use a finished transaction")
      assert.has_error(function() tx:query("SELECT 1") end, "attempt to use a finished transaction")
      assert.has_error(function() tx:savepoint() end, "attempt to use a finished transaction")
      local tx2 <close> = ok(a:begin())
      assert.has_error(function() tx2:rollback_to() end)
      a:close()
      assert.has_error(function() tx2:commit() end, "attempt to use a closed connection")
    end)

    it("rolls back a transaction that was garbage-collected without being closed", function()
      -- in a function of its own, so no stack slot still refers to the transaction
      local function leak()
        local tx = ok(a:begin())
        ok(tx:query(("INSERT INTO %s VALUES (1)"):format(t)))
      end
      leak()
      collectgarbage()
      collectgarbage()
      assert.same({ 0, "idle" }, { count(a, t), select(2, a:status()) })
      assert.equal(0, count(b, t))
    end)
  end)

  describe("a lost connection", function()
    -- pg_terminate_backend(pid, timeout) waits until the backend is gone: no polling needed
    local function terminate(killer, victim)
      local res = ok(killer:query("SELECT pg_terminate_backend($1, 10000) AS done", victim:backend_pid()))
      assert.is_true(res[1].done)
    end

    it("is reported as a retryable connection error on this and the next call, and a new connect works", function()
      local victim, killer = connect(), connect()
      terminate(killer, victim)
      local res, err = victim:query("SELECT 1")
      assert.is_nil(res)
      assert.same({ "pg", true }, { err.kind, errors.retryable(err) })
      assert.is_true(err.code == "connection" or err.code:sub(1, 2) == "08", err.code)
      assert.equal("bad", victim:status())
      assert.matches("lost$", tostring(victim))
      res, err = victim:query("SELECT 1")
      assert.is_nil(res)
      assert.same({ "connection", true }, { err.code, errors.retryable(err) })
      res, err = victim:begin()
      assert.is_nil(res)
      assert.equal("connection", err.code)
      victim:close()
      local fresh = connect()
      assert.equal(1, ok(fresh:query("SELECT 1 AS x"))[1].x)
      fresh:close()
      killer:close()
    end)

    it("inside a transaction: commit fails, leaving the scope does not raise, nothing is committed", function()
      local t = unique("lost")
      ok(main:query(("CREATE TABLE %s (id int)"):format(t)))
      local victim, killer = connect(), connect()
      local okay, e = pcall(function()
        local tx <close> = ok(victim:begin())
        ok(tx:query(("INSERT INTO %s VALUES (1)"):format(t)))
        terminate(killer, victim)
        local done, err = tx:commit()
        assert.is_nil(done)
        assert.same({ "connection", true }, { err.code, errors.retryable(err) })
        error("after the lost commit")
      end)
      assert.is_false(okay)
      assert.matches("after the lost commit", e)
      assert.equal(0, count(killer, t))
      okay, e = pcall(function()
        local v2 = connect()
        local tx <close> = ok(v2:begin())
        assert.equal("resclean.pg.tx (open)", tostring(tx))
        terminate(killer, v2)
        error("unwinding")   -- __close must not raise over this despite the dead connection
      end)
      assert.is_false(okay)
      assert.matches("unwinding", e)
      victim:close()
      killer:close()
    end)
  end)

  describe("quoting", function()
    it("quotes identifiers from the policy so any name works", function()
      local weird = ('pgspec "we;ird" %d'):format(main:backend_pid())
      local q = main:quote_ident(weird)
      assert.equal('"' .. weird:gsub('"', '""') .. '"', q)
      names[#names + 1] = weird
      ok(main:query(("CREATE TABLE %s (%s int)"):format(q, main:quote_ident("select"))))
      ok(main:query(("INSERT INTO %s VALUES (7)"):format(q)))
      assert.equal(7, ok(main:query(("SELECT %s AS v FROM %s"):format(main:quote_ident("select"), q)))[1].v)
    end)

    it("quotes literals", function()
      local s = "it's a \\ test"
      assert.equal(s, ok(main:query("SELECT " .. main:quote_literal(s) .. "::text AS v"))[1].v)
    end)
  end)

  describe("memory", function()
    -- under `make asan test` LeakSanitizer reports any PGresult or buffer left behind
    it("runs 10,000 queries, errors and prepared executions without keeping anything", function()
      local c = connect()
      local sum = 0
      for i = 1, 10000 do
        sum = sum + ok(c:query("SELECT $1::int + 1 AS v, $2::text[] AS a", i, { "x", "y" }))[1].v
      end
      assert.equal(10000 * 10001 / 2 + 10000, sum)
      for _ = 1, 1000 do assert.is_nil(c:query("SELECT 1 / 0")) end
      ok(c:prepare("pgspec_loop", "SELECT $1::int AS v"))
      for i = 1, 1000 do assert.equal(i, ok(c:exec_prepared("pgspec_loop", i))[1].v) end
      for _ = 1, 100 do
        local tx <close> = ok(c:begin())
        ok(tx:savepoint())
      end
      c:close()
    end)
  end)
end)
