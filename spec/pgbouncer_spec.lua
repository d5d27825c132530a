-- Through Debian's PgBouncer (started by spec/support/stack.sh pgbouncer) in transaction
-- pooling, with an application's load (pgbench: INSERT/UPDATE transactions, 8 clients) on the
-- same pool of 2 server connections: every script exits as documented, the data is right, and
-- afterwards each pooled server connection is back to its defaults (timeouts, read-only,
-- prepared statements, advisory locks, LISTEN) and the application can write through it.
-- What needs a session (LISTEN, the singleton's lock) goes to RESCLEAN_DIRECT_DATABASE_URL, or
-- says it cannot.
local fs = require("support.faults_support")
local fx = require("support.fixtures")
local h = require("support.helpers")
local pg = require("resclean.pg")

local conn, bucket, client, TX, DIRECT, load_pid, load_dir

-- The pgbouncer lines stack.sh prints (NAME=value).
local function start_pgbouncer()
  local out, code = h.sh("bash spec/support/stack.sh pgbouncer " .. h.q(assert(os.getenv("RESCLEAN_STACK_DIR"))))
  assert(code == 0, "stack.sh pgbouncer failed: " .. out)
  local env = {}
  for name, value in out:gmatch("(RESCLEAN_PGBOUNCER_[%w_]+)=(%S+)") do env[name] = value end
  return env
end

local function env(extra)
  return fs.env(bucket, extra)
end

local function run(argv, extra)
  return h.run_script(argv, env(extra))
end

-- Every server connection of the pool (both: each client holds one in a transaction), as the
-- application sees it: settings, prepared statements, advisory locks, LISTEN, and a write.
local function assert_pool_clean(when)
  local a = fx.check(pg.connect(TX))
  local b = fx.check(pg.connect(TX))
  local ta = fx.check(a:begin())
  local tb = fx.check(b:begin())
  local pids = {}
  for _, c in ipairs({ a, b }) do
    local row = fx.check(c:query([[
      SELECT pg_backend_pid() AS pid,
        current_setting('statement_timeout') AS statement_timeout,
        current_setting('lock_timeout') AS lock_timeout,
        current_setting('idle_in_transaction_session_timeout') AS idle_in_transaction_session_timeout,
        current_setting('default_transaction_read_only') AS default_transaction_read_only,
        current_setting('transaction_read_only') AS transaction_read_only,
        (SELECT count(*) FROM pg_prepared_statements)::int AS prepared,
        (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid())::int AS advisory,
        (SELECT count(*) FROM pg_listening_channels())::int AS listening]]))[1]
    pids[#pids + 1] = row.pid
    row.pid = nil
    assert.same({ statement_timeout = "0", lock_timeout = "0", idle_in_transaction_session_timeout = "0",
                  default_transaction_read_only = "off", transaction_read_only = "off", prepared = 0,
                  advisory = 0, listening = 0 }, row, when)
    fx.check(c:query("INSERT INTO pool_app_load (v) VALUES (-1)"))
  end
  assert.are_not.equal(pids[1], pids[2], "two server connections")
  fx.check(ta:commit())
  fx.check(tb:commit())
  a:close()
  b:close()
  -- No advisory lock anywhere on the server.
  assert.are.equal(0, fx.check(conn:query("SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory'"))[1].n,
    when)
end

local function load_transactions()
  return fx.check(conn:query("SELECT count(*)::int AS n FROM pool_app_load WHERE v >= 0"))[1].n
end

describe("PgBouncer", function()
  -- Stopped after: its idle server connections would count as the role's sessions in later specs.
  teardown(function()
    h.sh("bash spec/support/stack.sh pgbouncer-stop " .. h.q(assert(os.getenv("RESCLEAN_STACK_DIR"))))
  end)

  describe("through PgBouncer in transaction pooling, under application load", function()
    setup(function()
      assert(h.have("pgbouncer"), "pgbouncer is not installed (make deps)")
      assert(h.have("pgbench"), "pgbench is not installed (postgresql-contrib / postgresql)")
      local pb = start_pgbouncer()
      TX = assert(pb.RESCLEAN_PGBOUNCER_TX_URL)
      DIRECT = assert(os.getenv("DATABASE_URL"))
      conn = fx.connect()
      bucket, client = fx.fresh_bucket(conn, "pgbouncer")
      fx.check(conn:query("DROP TABLE IF EXISTS pool_app_load"))
      fx.check(conn:query("CREATE TABLE pool_app_load (id bigserial PRIMARY KEY, v int NOT NULL)"))
      -- The application: short INSERT/UPDATE transactions, 8 clients, through the same pool.
      load_dir = h.tmpdir()
      local script = h.write(load_dir .. "/load.sql", table.concat({
        "\\set v random(0, 1000)",
        "BEGIN;",
        "INSERT INTO pool_app_load (v) VALUES (:v);",
        "UPDATE pool_app_load SET v = v + 1 WHERE id = (SELECT max(id) FROM pool_app_load) - :v % 10;",
        "COMMIT;",
      }, "\n") .. "\n")
      assert(os.execute(("pgbench -n -c 8 -T 900 -f %s %s >%s 2>&1 & echo $! >%s"):format(h.q(script), h.q(TX),
        h.q(load_dir .. "/pgbench.log"), h.q(load_dir .. "/pid"))))
      load_pid = tonumber(h.wait_for(function() return h.readall(load_dir .. "/pid"):match("%d+") end, 10, "pgbench"))
      h.wait_for(function() return load_transactions() > 50 end, 60, "the application load to run")
    end)

    teardown(function()
      if load_pid then os.execute(("kill -INT %d 2>/dev/null"):format(load_pid)) end
      if conn then conn:close() end
    end)

    -- The load ran throughout: it committed more meanwhile and never failed.
    local function assert_load_ran(before)
      h.wait_for(function() return load_transactions() > before end, 30, "more application transactions")
      local log = h.readall(load_dir .. "/pgbench.log")
      assert.is_nil(log:lower():find("error", 1, true), log)
      assert.is_nil(log:find("aborted", 1, true), log)
    end

    it("tells the pooler by its backend key: PgBouncer's own, PostgreSQL's is the backend's pid", function()
      local via = fx.check(pg.connect(TX))
      local pid = fx.check(via:query("SELECT pg_backend_pid() AS pid"))[1].pid
      assert.are_not.equal(pid, via:backend_pid())
      via:close()
      pid = fx.check(conn:query("SELECT pg_backend_pid() AS pid"))[1].pid
      assert.are.equal(pid, conn:backend_pid())
    end)

    it("sweeps twice in a row: both exit 0, every stale row and object gone, the pool clean", function()
      local policy = fs.policy("return { batch_size = 50 }")
      for round = 1, 2 do
        local before = load_transactions()
        local ids = fx.rows(conn, 120)
        fx.objects(client, ids)
        local r = run({ "scripts/sweep.lua", "--once", "--policy", policy }, { DATABASE_URL = TX })
        assert.are.equal(0, r.code, r.stderr .. r.stdout)
        assert.same({}, fx.existing_rows(conn, ids), "round " .. round)
        assert.same({}, fx.existing_objects(client, ids), "round " .. round)
        assert_pool_clean("after sweep " .. round)
        assert_load_ran(before)
      end
    end)

    it("cancels ids (exit 0) and leaves the pool clean", function()
      local ids = fx.rows(conn, 3, { age_s = 60 })
      fx.objects(client, ids)
      local r = run({ "scripts/cancel.lua", table.unpack(ids) }, { DATABASE_URL = TX })
      assert.are.equal(0, r.code, r.stderr .. r.stdout)
      assert.same({}, fx.existing_rows(conn, ids))
      assert.same({}, fx.existing_objects(client, ids))
      assert_pool_clean("after cancel")
    end)

    it("reports status (exit 0, the right counts) and leaves the pool clean", function()
      fx.reset(conn)
      fx.rows(conn, 7)
      local r = h.run({ "run", "scripts/status.lua", "--json" }, env({ DATABASE_URL = TX }))
      assert.are.equal(0, r.code, r.stderr)
      local s = require("cjson").decode(r.stdout)
      assert.are.equal(7, s.eligible)
      assert_pool_clean("after status")
    end)

    it("reconciles (exit 0) and leaves no server connection read-only: the application writes after it", function()
      local r = h.run({ "run", "scripts/reconcile.lua" }, env({ DATABASE_URL = TX }))
      assert.are.equal(0, r.code, r.stderr .. r.stdout)
      assert_pool_clean("after reconcile")
    end)

    it("singleton: exits 2 naming RESCLEAN_DIRECT_DATABASE_URL, sweeping nothing and holding no lock", function()
      fx.reset(conn)
      local ids = fx.rows(conn, 5)
      fx.objects(client, ids)
      local policy = fs.policy("return { singleton = true }")
      local r = run({ "scripts/sweep.lua", "--once", "--policy", policy }, { DATABASE_URL = TX })
      assert.are.equal(2, r.code, r.stderr .. r.stdout)
      assert.matches("RESCLEAN_DIRECT_DATABASE_URL", r.stderr, 1, true)
      assert.matches("transaction pool", r.stderr, 1, true)
      assert.same(h.set(ids), fx.existing_rows(conn, ids))
      assert_pool_clean("after a refused singleton")
    end)

    it("singleton with RESCLEAN_DIRECT_DATABASE_URL: takes the lock there, sweeps, and twice in a row", function()
      local policy = fs.policy("return { singleton = true }")
      for round = 1, 2 do
        local ids = fx.rows(conn, 5)
        fx.objects(client, ids)
        local r = run({ "scripts/sweep.lua", "--once", "--policy", policy },
          { DATABASE_URL = TX, RESCLEAN_DIRECT_DATABASE_URL = DIRECT })
        assert.are.equal(0, r.code, r.stderr .. r.stdout)
        assert.is_nil(r.by.singleton_busy, "round " .. round)
        assert.same({}, fx.existing_rows(conn, ids), "round " .. round)
        assert_pool_clean("after singleton sweep " .. round)
      end
    end)

    describe("cancel --notify", function()
      local events = fs.events

      local function sweeper(extra)
        return h.spawn({ "run", "scripts/sweep.lua", "--policy", fs.policy("return { interval = 3600, jitter = 0 }") },
          env(extra))
      end

      it("without a direct URL: a warning naming RESCLEAN_DIRECT_DATABASE_URL instead of `listening`", function()
        local p = sweeper({ DATABASE_URL = TX })
        finally(function() if p.alive() then p.kill("KILL") end end)
        h.wait_for(function() return #events(p, "sweep") > 0 end, 60, "the first cycle")
        local warn = events(p, "listen_unavailable")
        assert.are.equal(1, #warn, fs.output(p))
        assert.are.equal("warn", warn[1].level)
        assert.matches("RESCLEAN_DIRECT_DATABASE_URL", warn[1].message, 1, true)
        assert.are.equal(0, #events(p, "listening"))
        p.kill("TERM")
        assert.are.equal(0, p.wait(30))
        assert_pool_clean("after a sweeper that could not listen")
      end)

      it("with RESCLEAN_DIRECT_DATABASE_URL: listens there, takes requests written through the pool", function()
        local p = sweeper({ DATABASE_URL = TX, RESCLEAN_DIRECT_DATABASE_URL = DIRECT })
        finally(function() if p.alive() then p.kill("KILL") end end)
        h.wait_for(function() return #events(p, "listening") > 0 and #events(p, "sweep") > 0 end, 60,
          "the sweeper to listen")
        local ids = fx.rows(conn, 2, { age_s = 60 })
        fx.objects(client, ids)
        local r = run({ "scripts/cancel.lua", "--notify", table.unpack(ids) }, { DATABASE_URL = TX })
        assert.are.equal(0, r.code, r.stderr .. r.stdout)
        h.wait_for(function()
          local n = 0
          for _, l in ipairs(events(p, "resource")) do
            if l.via == "request" and (l.resource_id == ids[1] or l.resource_id == ids[2]) then n = n + 1 end
          end
          return n == 2
        end, 15, "both notified cancels")
        assert.same({}, fx.existing_rows(conn, ids))
        p.kill("TERM")
        assert.are.equal(0, p.wait(30))
        assert_pool_clean("after notified cancels")
      end)
    end)
  end)

  describe("through PgBouncer in session pooling", function()
    it("the sweeper listens on DATABASE_URL itself (a session pool gives sessions)", function()
      local pb = start_pgbouncer()
      local c = fx.connect()
      local b = fx.unique_bucket("pgbsession")
      fx.bucket(b)
      local p = h.spawn({ "run", "scripts/sweep.lua", "--policy", fs.policy("return { interval = 3600, jitter = 0 }") },
        fs.env(b, { DATABASE_URL = pb.RESCLEAN_PGBOUNCER_SESSION_URL }))
      finally(function()
        if p.alive() then p.kill("KILL") end
        c:close()
      end)
      local lines = h.wait_for(function()
        local got = {}
        for _, l in ipairs(fs.partial_log(fs.output(p))) do got[l.event] = true end
        return got.listening and got.sweep and got
      end, 60, "the sweeper to listen")
      assert.is_nil(lines.listen_unavailable)
      p.kill("TERM")
      assert.are.equal(0, p.wait(30))
    end)
  end)
end)
