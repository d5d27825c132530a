-- Reconcile's name scan: nothing any row names is deleted. Each key left
-- without owner is looked up in every uuid and text column of every table
-- the role can read (one query per table per page: its columns' `= ANY($n)`
-- ORed, one scan of the table rather than one per column); a key named by
-- a column of an owner is kept, a key named by any other column refuses
-- the run (exit 2) naming the table and column to add to owners.
local owners_mod = require("resclean.reconcile_owners")

local M = {}

-- Every uuid and text column of every table the role can read (all schemas
-- but the system's), grouped by table, and which of them an owner covers.
-- Returns {tables = {{ref, cols = {...}}, ...}, unreadable = {"schema.table", ...}}
-- or nil, err.
function M.name_columns(conn, p, owners)
  local res, err = conn:query([[
    SELECT c.oid::int8 AS oid, n.nspname::text AS schema, c.relname::text AS tbl, a.attname::text AS col,
      bt.typname = 'uuid' AS is_uuid, n.nspname = ANY(current_schemas(false)) AS on_path,
      has_schema_privilege(n.oid, 'USAGE') AND has_column_privilege(c.oid, a.attnum, 'SELECT') AS readable
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    JOIN pg_type t ON t.oid = a.atttypid
    JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
    WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
      AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp_)'
      AND bt.typname IN ('uuid', 'text', 'varchar', 'bpchar')
    ORDER BY n.nspname, c.relname, a.attnum]])
  if not res then return nil, err end
  local covered = {}
  local function cover(oid, col) covered[oid .. "." .. col] = true end
  for _, o in ipairs(owners) do
    cover(o.oid, o.key_column)
    if o.by_key then
      for _, f in ipairs(owners_mod.key_fields(p)) do cover(o.oid, f[2]) end
    end
  end
  local tables, by_oid, unreadable, seen = {}, {}, {}, {}
  for _, r in ipairs(res) do
    local tname = r.on_path and r.tbl or (r.schema .. "." .. r.tbl)
    if r.readable then
      local t = by_oid[r.oid]
      if not t then
        t = { ref = conn:quote_ident(r.schema) .. "." .. conn:quote_ident(r.tbl), oid = r.oid, cols = {} }
        by_oid[r.oid] = t
        tables[#tables + 1] = t
      end
      t.cols[#t.cols + 1] = {
        name = tname .. "." .. r.col, table = r.tbl, schema = r.schema, on_path = r.on_path, column = r.col,
        ident = conn:quote_ident(r.col), uuid = r.is_uuid, covered = covered[r.oid .. "." .. r.col] == true,
      }
    elseif not seen[tname] then
      seen[tname] = true
      unreadable[#unreadable + 1] = tname
    end
  end
  return { tables = tables, unreadable = unreadable }
end

-- Which of keys does a row of any readable table name? One query per
-- table (its columns ORed: one scan of the table, not one per column).
-- Returns named (key -> list of column entries) or nil, err.
function M.named(conn, tables, keys)
  local named = {}
  if #keys == 0 then return named end
  local uuids, texts, names = owners_mod.lookup_values(keys)
  local is_uuid, is_text = {}, {}
  for _, u in ipairs(uuids) do is_uuid[u] = true end
  for _, t in ipairs(texts) do is_text[t] = true end
  for _, t in ipairs(tables) do
    local sel, where, args, slot = {}, {}, {}, {}
    for i, col in ipairs(t.cols) do
      local kind = col.uuid and "uuid" or "text"
      local vals = col.uuid and uuids or texts
      if #vals > 0 then
        if not slot[kind] then
          args[#args + 1] = vals
          slot[kind] = #args
        end
        sel[#sel + 1] = ("%s::text AS c%d"):format(col.ident, i)
        where[#where + 1] = col.uuid and ("%s = ANY($%d::uuid[])"):format(col.ident, slot[kind])
          or ("%s::text = ANY($%d::text[])"):format(col.ident, slot[kind])
      end
    end
    if #where > 0 then
      local res, err = conn:query(("SELECT DISTINCT %s FROM %s WHERE %s"):format(table.concat(sel, ", "), t.ref,
        table.concat(where, " OR ")), table.unpack(args))
      if not res then return nil, err end
      for _, r in ipairs(res) do
        for i, col in ipairs(t.cols) do
          local v = r["c" .. i]
          if v ~= nil and (col.uuid and is_uuid[v] or not col.uuid and is_text[v]) then
            for _, k in ipairs(names[v] or {}) do
              named[k] = named[k] or {}
              local list = named[k]
              local dup = false
              for _, c in ipairs(list) do dup = dup or c == col end
              if not dup then list[#list + 1] = col end
            end
          end
        end
      end
    end
  end
  return named
end

return M
