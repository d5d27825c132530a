-- Is the claim using an index? A claim that scans a large table on every
-- batch is slow and loads the database; warn once per run with the index
-- to create.
local log = require("resclean.log")

local M = {}

M.LARGE_TABLE_ROWS = 100000

-- The partial index that serves the claim, for the policy's table.
function M.index_sql(conn, p)
  local t = p.table
  return ("CREATE INDEX CONCURRENTLY IF NOT EXISTS %s ON %s (%s) WHERE NOT %s;"):format(
    conn:quote_ident(("%s_pending_created_idx"):format(t):sub(1, 63)), conn:quote_ident(t),
    conn:quote_ident(p.created_column), conn:quote_ident(p.uploaded_column))
end

-- Valid indexes of the policy's table whose first column is created_column (the claim
-- orders by it): {name, def, partial} rows, or nil, err.
function M.created_indexes(conn, p)
  return conn:query([[
    SELECT i.relname::text AS name, pg_get_indexdef(i.oid) AS def, x.indpred IS NOT NULL AS partial
    FROM pg_index x
    JOIN pg_class i ON i.oid = x.indexrelid
    JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = x.indkey[0]
    WHERE x.indrelid = to_regclass($1) AND a.attname = $2 AND x.indisvalid
    ORDER BY 1]], conn:quote_ident(p.table), p.created_column)
end

-- Returns {seq_scan=bool, rows=estimate, plan=text} or nil, err.
function M.inspect(conn, sql, p)
  local res, err = conn:query("EXPLAIN " .. sql.claim_first, p.max_age, p.upload_types, p.batch_size)
  if not res then return nil, err end
  local lines = {}
  for i, r in ipairs(res) do lines[i] = r["QUERY PLAN"] end
  local plan = table.concat(lines, "\n")
  local est
  est, err = conn:query("SELECT greatest(reltuples, 0)::int8 AS n FROM pg_class WHERE oid = to_regclass($1)",
    conn:quote_ident(p.table))
  if not est then return nil, err end
  local seq = plan:find("Seq Scan on " .. p.table, 1, true) ~= nil
    or plan:find("Seq Scan on " .. conn:quote_ident(p.table), 1, true) ~= nil
  return { seq_scan = seq, rows = est[1] and est[1].n or 0, plan = plan }
end

-- Hook for sweep.cycle: one warning when a large table is scanned.
function M.check(conn, sql, run)
  local info = M.inspect(conn, sql, run.policy)
  if info and info.seq_scan and info.rows >= M.LARGE_TABLE_ROWS then
    log.warn("claim_seq_scan", {
      run_id = run.run_id, table = run.policy.table, rows = info.rows,
      message = "the claim scans the whole table; create the partial index",
      index = M.index_sql(conn, run.policy),
    })
  end
end

return M
