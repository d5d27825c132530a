-- Reconcile: objects in the bucket that no row owns (orphans), and
-- confirmed rows whose object is missing. scripts/reconcile.lua parses the
-- flags and calls M.main.
--
-- An orphan is an object whose key matches the policy's key_pattern, that
-- was last modified before the cutoff, and that no owner (policy.owners)
-- holds. Orphans appear when a presigned PUT lands after its row was swept
-- or cancelled.
--
-- Ownership. For the policy's own table an object is owned when some row's
-- key(row) (the sweep's key function, on the sweep's row shape) equals the
-- object key: rows are found by the UUIDs embedded in the key, or by the
-- policy's key_id(key) inverse, then key(row) is compared. For every other
-- owner {table, key_column} the column is compared with the key and with
-- the UUIDs embedded in it. A key whose owner cannot be proven either way
-- (no embedded UUID, no key_id, and key() is not the bare id) refuses the
-- run (exit 2).
--
-- Nothing any row names is deleted. Each key left without owner is looked
-- up in every uuid and text column of every table the role can read (one
-- query per table per page: its columns' `= ANY($n)` ORed, one scan of the
-- table rather than one per column); a key named by a column of an
-- owner is kept, a key named by any other column refuses the run (exit 2)
-- naming the table and column to add to owners.
--
-- Plan, then apply: every page of the listing is planned first; only a
-- complete plan with no refusal and within the mass-delete valve
-- (reconcile_max_delete_fraction of the candidates, or --max-delete N)
-- is applied, so a run that refuses deletes nothing. Just before each
-- DeleteObjects the owners and every readable table are asked again (a
-- row may have appeared). A listing that would never end (a token given
-- twice, keys out of order, pages without objects) ends the run unapplied.
--
-- Only rows the role sees protect objects: --apply refuses while
-- row-level security hides rows of an owner or readable table.
--
-- Listing order is byte order, which for lower-case UUID keys is also
-- PostgreSQL's uuid order, so confirmed rows are checked against each page
-- by key range (owners whose key is the bare uuid column).
local errors = require("resclean.errors")
local log = require("resclean.log")
local config = require("resclean.config")
local policy_mod = require("resclean.policy")
local sweep = require("resclean.sweep")
local sys = require("resclean.sys")

local M = {}

M.PAGE = 1000 -- S3's most keys a list reply or a DeleteObjects request holds

-- Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
local function days_from_civil(y, m, d)
  y = m <= 2 and y - 1 or y
  local era = (y >= 0 and y or y - 399) // 400
  local yoe = y - era * 400
  local doy = (153 * (m + (m > 2 and -3 or 9)) + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  return era * 146097 + doe - 719468
end

-- "2026-11-29T19:30:01.123Z" (or +hh:mm) -> Unix seconds, or nil.
function M.parse_time(s)
  if type(s) ~= "string" then return nil end
  local y, mo, d, h, mi, sec, rest = s:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)[Tt ](%d%d):(%d%d):(%d%d%.?%d*)(.*)$")
  if not y then return nil end
  local off = 0
  if rest ~= "Z" and rest ~= "z" and rest ~= "" then
    local sign, oh, om = rest:match("^([+-])(%d%d):?(%d%d)$")
    if not sign then return nil end
    off = (tonumber(oh) * 3600 + tonumber(om) * 60) * (sign == "-" and -1 or 1)
  end
  local days = days_from_civil(tonumber(y), tonumber(mo), tonumber(d))
  return days * 86400 + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(sec) - off
end

M.human_age = policy_mod.human_age -- one spelling of an age, with status
local human_age = M.human_age

-- ------------------------------------------------------------ pure decisions

local X = "%x"
local UUID_ANY = "^" .. X:rep(8) .. "%-" .. X:rep(4) .. "%-" .. X:rep(4) .. "%-" .. X:rep(4) .. "%-" .. X:rep(12)
  .. "$"

-- Every UUID written anywhere in key (either case, overlapping windows
-- included), lower-cased, each once, in order of appearance.
function M.embedded_uuids(key)
  local out, seen = {}, {}
  if type(key) ~= "string" then return out end
  for i = 1, #key - 35 do
    local s = key:sub(i, i + 35)
    if s:find(UUID_ANY) then
      s = s:lower()
      if not seen[s] then
        seen[s] = true
        out[#out + 1] = s
      end
    end
  end
  return out
end

-- The row fields key(row) receives, as the sweep builds them
-- (sweep.build_sql): field "id" is id_column::text, then each key column
-- other than "id" under its own name. Returns list of {field, column}.
function M.key_fields(p)
  local f = { { "id", p.id_column } }
  for _, c in ipairs(p.key_columns) do
    if c ~= "id" then f[#f + 1] = { c, c } end
  end
  return f
end

-- What key() does with a row, found by calling it on a probe row whose
-- fields are distinct UUIDs: bare (it returns the id field unchanged) and
-- embeds (the uuid-typed columns, types[column] == "uuid", whose value it
-- writes into the key verbatim). types maps column -> "uuid" | "text" |
-- other. Pure: unit specs call it without a database.
function M.key_shape(p, types)
  local row, probes = { _created = "2000-01-01 00:00:00+00", age_s = 0,
                        _type = p.upload_types and p.upload_types[1] }, {}
  for i, f in ipairs(M.key_fields(p)) do
    local v = ("00000000-0000-4000-8000-%012d"):format(i)
    row[f[1]] = v
    probes[#probes + 1] = { field = f[1], column = f[2], value = v }
  end
  local shape = { embeds = {}, bare = false }
  local ok, key = pcall(p.key, row)
  if not ok or type(key) ~= "string" then
    shape.error = ok and "key() did not return a string" or ("key() raised: " .. tostring(key))
    return shape
  end
  shape.bare = key == row.id
  local lower, seen = key:lower(), {}
  for _, pr in ipairs(probes) do
    if types[pr.column] == "uuid" and not seen[pr.column] and lower:find(pr.value, 1, true) then
      seen[pr.column] = true
      shape.embeds[#shape.embeds + 1] = pr.column
    end
  end
  if p.key_id then
    -- The inverse must invert: key_id(key(row)) is the row's id.
    local ok2, id = pcall(p.key_id, key)
    if not ok2 or id ~= row.id then
      shape.inverse_error = ok2 and ("key_id(key(row)) returned %s, not the row's id %q"):format(
        type(id) == "string" and ("%q"):format(id) or tostring(id), row.id)
        or ("key_id() raised: " .. tostring(id))
    end
  end
  return shape
end

-- The mass-delete valve. would: objects the plan deletes; candidates:
-- objects that could be orphans (key matches key_pattern, older than the
-- cutoff; a key that can never be deleted does not dilute the fraction);
-- fraction: the policy's reconcile_max_delete_fraction; max: the
-- --max-delete count or nil. Returns true, limit or nil, message.
function M.valve(would, candidates, fraction, max)
  local limit = max or math.floor(fraction * candidates + 1e-9)
  if would <= limit then return true, limit end
  local what = ("would delete %d of %d candidates (%.1f%%; candidates: objects matching key_pattern and older "
    .. "than the cutoff)"):format(would, candidates, candidates > 0 and would * 100 / candidates or 100)
  if max then
    return nil, ("reconcile --apply refused: %s, limit %d (--max-delete %d); nothing was deleted. "
      .. "Check the plan (run without --apply), then pass --max-delete %d to allow it"):format(what, limit, max, would)
  end
  return nil, ("reconcile --apply refused: %s, limit %d (reconcile_max_delete_fraction %g of the candidates); "
    .. "nothing was deleted. Check the plan (run without --apply), then pass --max-delete %d to allow it, or "
    .. "raise reconcile_max_delete_fraction in the policy"):format(what, limit, fraction, would)
end

-- The listing's bound. S3 gives each key once, in ascending byte order,
-- and each continuation token once; a listing that breaks this (a token
-- given again, a key not after the one before it, a truncated page without
-- a token) or that sends more than EMPTY_PAGES pages beyond one per key
-- would plan forever. Returns check(page): nil while the listing is sane,
-- else what happened (the run ends, exit 3, nothing deleted).
M.EMPTY_PAGES = 100
local function count(n, what) return ("%d %s%s"):format(n, what, n == 1 and "" or "s") end
function M.listing_guard()
  local tokens, last, pages, keys = {}, nil, 0, 0
  return function(page)
    pages = pages + 1
    local t = page.truncated and page.next_continuation
    if page.truncated and (not t or t == "") then
      return ("page %d of the listing is truncated but gives no continuation token"):format(pages)
    end
    if t and tokens[t] then
      return ("the listing repeats a continuation token after %s and %s: it would never end")
        :format(count(pages, "page"), count(keys, "object"))
    end
    for _, e in ipairs(page.keys or {}) do
      if last and e.key <= last then
        return ("the listing went back: key %q came after %q (page %d): S3 lists each key once, in "
          .. "ascending order"):format(e.key, last, pages)
      end
      last, keys = e.key, keys + 1
    end
    if t and pages > keys + M.EMPTY_PAGES then
      return ("the listing sent %s for %s (more than %d pages without an object): it would never end")
        :format(count(pages, "page"), count(keys, "object"), M.EMPTY_PAGES)
    end
    if t then tokens[t] = true end
    return nil
  end
end

-- ------------------------------------------------------------ the database

-- Type of a column for lookups: "uuid", "text" (text, varchar, char, and
-- domains over them) or the type's name.
local BASE_TYPE = [[
  (SELECT CASE WHEN bt.typname = 'uuid' THEN 'uuid'
               WHEN bt.typname IN ('text', 'varchar', 'bpchar') THEN 'text'
               ELSE format_type(a.atttypid, NULL) END
     FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
     JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
    WHERE a.attrelid = to_regclass($1) AND a.attname = %s AND a.attnum > 0 AND NOT a.attisdropped)]]

-- The SELECT list the sweep gives key(row) (session.row_columns), FROM t.
function M.row_select(conn, p)
  return ("SELECT %s FROM %s"):format(require("resclean.session").row_columns(conn, p), conn:quote_ident(p.table))
end

local function policy_error(p, field, message)
  return { kind = "policy", field = field,
           message = ("policy %s: field '%s': %s"):format(p.source or "(defaults)", field, message) }
end

-- How rows of the policy's own table are found for a key, and whether a key
-- that no row's key() matches is proven an orphan. Returns owner fields or
-- nil, err.
local function key_owner(conn, p, owner)
  local cols = {}
  for _, f in ipairs(M.key_fields(p)) do cols[f[2]] = true end
  local types = {}
  for c in pairs(cols) do
    local res, err = conn:query("SELECT " .. BASE_TYPE:format("$2") .. " AS t", conn:quote_ident(p.table), c)
    if not res then return nil, err end
    if not res[1].t then
      local field = c == p.id_column and "id_column" or "key_columns"
      return nil, policy_error(p, field, ("column %q does not exist in table %q"):format(c, p.table))
    end
    types[c] = res[1].t
  end
  local shape = M.key_shape(p, types)
  if shape.inverse_error then return nil, policy_error(p, "key_id", shape.inverse_error) end
  -- Rows are looked up by the id column and every uuid column key() embeds.
  local lookup, seen = {}, {}
  for _, c in ipairs({ p.id_column, table.unpack(shape.embeds) }) do
    if not seen[c] then
      seen[c] = true
      lookup[#lookup + 1] = { column = c, uuid = types[c] == "uuid" }
    end
  end
  owner.by_key, owner.shape, owner.types, owner.lookup = true, shape, types, lookup
  owner.row_sql = M.row_select(conn, p)
  return owner
end

-- Check every owner table and key column; learn the column's type and
-- whether the table has a boolean uploaded column. Returns owners or nil,
-- err (kind "policy" for what is missing).
function M.check_owners(conn, p, page_size)
  page_size = page_size or M.PAGE
  local listed = false
  for _, o in ipairs(p.owners) do listed = listed or o.table == p.table end
  if not listed then
    return nil, policy_error(p, "owners", ("the policy's table %q is not among its owners: its objects would "
      .. "look orphaned"):format(p.table))
  end
  local out = {}
  for i, o in ipairs(p.owners) do
    local res, err = conn:query(([[
      SELECT to_regclass($1)::oid::int8 AS oid, %s AS key_type,
        (SELECT a.atttypid = 'boolean'::regtype FROM pg_attribute a
          WHERE a.attrelid = to_regclass($1) AND a.attname = $3 AND a.attnum > 0 AND NOT a.attisdropped) AS uploaded]])
      :format(BASE_TYPE:format("$2")),
      conn:quote_ident(o.table), o.key_column, p.uploaded_column)
    if not res then return nil, err end
    local r = res[1]
    if not r.oid then
      return nil, policy_error(p, ("owners[%d].table"):format(i), ("owner table %q does not exist; reconciling "
        .. "without every owner would take the objects it owns for orphans"):format(o.table))
    end
    if not r.key_type then
      return nil, policy_error(p, ("owners[%d].key_column"):format(i),
        ("column %q does not exist in owner table %q"):format(o.key_column, o.table))
    end
    local kind = r.key_type == "uuid" and "uuid" or (r.key_type == "text" and "text" or "other")
    local t, c = conn:quote_ident(o.table), conn:quote_ident(o.key_column)
    local owner = { table = o.table, key_column = o.key_column, kind = kind, key_type = r.key_type, oid = r.oid }
    if kind == "uuid" then
      owner.owned_sql = ("SELECT DISTINCT %s::text AS k FROM %s WHERE %s = ANY($1::uuid[])"):format(c, t, c)
    else
      owner.owned_sql = ("SELECT DISTINCT %s::text AS k FROM %s WHERE %s::text = ANY($1::text[])"):format(c, t, c)
    end
    -- The policy's table owns through key(row) by the columns key() reads;
    -- an entry for another of its columns is a plain owner column.
    local key_col = false
    for _, f in ipairs(M.key_fields(p)) do key_col = key_col or f[2] == o.key_column end
    if o.table == p.table and key_col then
      local ok
      ok, err = key_owner(conn, p, owner)
      if not ok then return nil, err end
    end
    -- Missing objects: rows marked uploaded, by key range, where the key is
    -- the bare uuid column (the listing's order is then the column's order).
    if r.uploaded and kind == "uuid" and (not owner.by_key or owner.shape.bare and o.key_column == p.id_column) then
      local u = conn:quote_ident(p.uploaded_column)
      owner.range_sql = function(lo, hi)
        local where = { u }
        local args = {}
        if lo then
          where[#where + 1] = ("%s > $%d::uuid"):format(c, #args + 1)
          args[#args + 1] = lo
        end
        if hi then
          where[#where + 1] = ("%s <= $%d::uuid"):format(c, #args + 1)
          args[#args + 1] = hi
        end
        return ("SELECT %s::text AS k FROM %s WHERE %s ORDER BY %s LIMIT %d"):format(
          c, t, table.concat(where, " AND "), c, page_size), args
      end
    end
    out[i] = owner
  end
  return out
end

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
      for _, f in ipairs(M.key_fields(p)) do cover(o.oid, f[2]) end
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

-- Tables of ctx (owners, readable tables) whose rows row-level security
-- hides from the role: RLS is active for it (row_security_active: RLS on,
-- the role neither superuser nor BYPASSRLS nor the owner, or FORCE) and no
-- policy shows it every row (a permissive SELECT or ALL policy for it
-- USING (true), no restrictive one for it). Rows it cannot see name
-- nothing, so their objects would look orphaned. Returns the tables' names,
-- those of them with FORCE, and the role's name; or nil, err.
local HIDDEN_SQL = [[
  WITH pol AS (
    SELECT p.polrelid, p.polpermissive, coalesce(pg_get_expr(p.polqual, p.polrelid) = 'true', false) AS all_rows
      FROM pg_policy p
     WHERE p.polcmd IN ('r', '*')
       AND (0 = ANY(p.polroles) OR EXISTS (SELECT 1 FROM unnest(p.polroles) AS r
                                            WHERE r <> 0 AND pg_has_role(r, 'USAGE'))))
  SELECT c.oid::regclass::text AS name, c.relforcerowsecurity AS forced, quote_ident(current_user) AS role
    FROM pg_class c
   WHERE c.oid = ANY($1::oid[]) AND row_security_active(c.oid)
     AND NOT (EXISTS (SELECT 1 FROM pol WHERE pol.polrelid = c.oid AND pol.polpermissive AND pol.all_rows)
              AND NOT EXISTS (SELECT 1 FROM pol WHERE pol.polrelid = c.oid AND NOT pol.polpermissive
                                                  AND NOT pol.all_rows))
   ORDER BY 1]]

function M.hidden_rows(conn, ctx)
  local oids, names, forced = {}, {}, {}
  for _, o in ipairs(ctx.owners) do oids[#oids + 1] = o.oid end
  for _, t in ipairs(ctx.tables) do oids[#oids + 1] = t.oid end
  local res, err = conn:query(HIDDEN_SQL, oids)
  if not res then return nil, err end
  for i, r in ipairs(res) do
    names[i] = r.name
    if r.forced then forced[#forced + 1] = r.name end
  end
  return names, forced, res[1] and res[1].role
end

local function add(list, set, v)
  if not set[v] then
    set[v] = true
    list[#list + 1] = v
  end
end

-- For keys, the values a column may hold that name them: uuids (for uuid
-- columns) and texts (the keys, the UUIDs in them as written and lower-cased),
-- and value -> keys it names.
local function lookup_values(keys)
  local uuids, texts, names, su, st = {}, {}, {}, {}, {}
  local function name(v, k)
    names[v] = names[v] or {}
    names[v][#names[v] + 1] = k
  end
  for _, k in ipairs(keys) do
    add(texts, st, k)
    name(k, k)
    for _, u in ipairs(M.embedded_uuids(k)) do
      add(uuids, su, u)
      add(texts, st, u)
      if u ~= k then name(u, k) end
      local upper = u:upper()
      if k:find(upper, 1, true) then
        add(texts, st, upper)
        name(upper, k)
      end
    end
  end
  return uuids, texts, names
end

-- Rows of the policy's table that may own keys; owned[key] = table for the
-- keys some row's key(row) equals. Returns the set of keys proven orphans
-- of this owner (the rest unprovable), or nil, err.
local function owned_by_key(conn, p, o, keys, owned)
  local uuids, texts, su, st = {}, {}, {}, {}
  local want, inverse = {}, {}
  for _, k in ipairs(keys) do
    want[k] = true
    for _, u in ipairs(M.embedded_uuids(k)) do add(uuids, su, u) end
    add(texts, st, k)
    if p.key_id then
      local ok, id = pcall(p.key_id, k)
      if ok and type(id) == "string" and id ~= "" then
        inverse[k] = true
        add(texts, st, id)
        if id:find(UUID_ANY) then add(uuids, su, id:lower()) end
      end
    end
  end
  local where, args = {}, {}
  for _, l in ipairs(o.lookup) do
    local c = conn:quote_ident(l.column)
    if l.uuid then
      if #uuids > 0 then
        args[#args + 1] = uuids
        where[#where + 1] = ("%s = ANY($%d::uuid[])"):format(c, #args)
      end
    else
      args[#args + 1] = texts
      where[#where + 1] = ("%s::text = ANY($%d::text[])"):format(c, #args)
    end
  end
  if #where > 0 then
    local res, err = conn:query(o.row_sql .. " WHERE " .. table.concat(where, " OR "), table.unpack(args))
    if not res then return nil, err end
    for _, row in ipairs(res) do
      local k = policy_mod.row_key(p, row)
      if k and want[k] then owned[k] = owned[k] or o.table end
    end
  end
  -- Not owned is proven when every row that could own the key was looked
  -- at: the row key_id names, the row whose id is the key (bare key()), or
  -- the rows whose embedded uuid columns hold a UUID of the key.
  local proven = {}
  local shape = o.shape
  for _, k in ipairs(keys) do
    if inverse[k] or shape.bare or (#shape.embeds > 0 and #M.embedded_uuids(k) > 0) then proven[k] = true end
  end
  return proven
end

-- Which of keys does some owner hold? Returns owned (key -> owner table)
-- and unprovable (keys no owner holds whose orphanhood cannot be proven),
-- or nil, err.
function M.owned(conn, p, owners, keys)
  local owned, proven = {}, nil
  local uuids, texts, names = lookup_values(keys)
  for _, o in ipairs(owners) do
    if o.by_key then
      -- Only key(row) owns: a row that merely holds a UUID of the key is
      -- found by M.named and keeps the object, reported as such.
      local err
      proven, err = owned_by_key(conn, p, o, keys, owned)
      if not proven then return nil, err end
    else
      local vals = o.kind == "uuid" and uuids or texts
      if #vals > 0 then
        local res, err = conn:query(o.owned_sql, vals)
        if not res then return nil, err end
        for _, r in ipairs(res) do
          for _, k in ipairs(names[r.k] or {}) do owned[k] = owned[k] or o.table end
        end
      end
    end
  end
  local unprovable = {}
  for _, k in ipairs(keys) do
    if not owned[k] and proven and not proven[k] then unprovable[#unprovable + 1] = k end
  end
  return owned, unprovable
end

-- Which of keys does a row of any readable table name? One query per
-- table (its columns ORed: one scan of the table, not one per column).
-- Returns named (key -> list of column entries) or nil, err.
function M.named(conn, tables, keys)
  local named = {}
  if #keys == 0 then return named end
  local uuids, texts, names = lookup_values(keys)
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

-- ------------------------------------------------------------ a run

local Run = {}
Run.__index = Run

local COUNTS = { "listed", "considered", "recent", "candidates", "owned", "kept", "orphans", "planned",
                 "object_deleted", "failed", "refused", "unprovable", "missing_objects" }

function M.new_run(opts)
  local r = setmetatable({
    policy = opts.policy, apply = opts.apply, human = opts.human, out = opts.out or io.stdout,
    page_size = opts.page_size or M.PAGE,
    run_id = sweep.run_id(), started = sys.monotime(), counts = {},
    plan = {},       -- orphans to delete, in listing order
    refusals = {},   -- {entry, cols}: keys named by a column no owner covers
    unprovable = {}, -- entries whose owner cannot be proven
  }, Run)
  for _, c in ipairs(COUNTS) do r.counts[c] = 0 end
  return r
end

function Run:say(fmt, ...)
  if self.human then self.out:write(fmt:format(...), "\n") end
end

local WHAT = { planned = "would delete", object_deleted = "deleted" }

function Run:orphan(entry, outcome, reason, extra)
  self.counts[outcome] = self.counts[outcome] + 1
  local f = {
    run_id = self.run_id, key = entry.key, size = entry.size, last_modified = entry.last_modified,
    age_s = math.floor(entry.age_s), outcome = outcome, reason = reason,
  }
  for k, v in pairs(extra or {}) do f[k] = v end
  local bad = outcome == "failed" or outcome == "refused" or outcome == "unprovable"
  log.emit(bad and "warn" or "info", "orphan", f)
  local why = f.named_by and ("named by " .. f.named_by) or f.owner and ("now owned by " .. f.owner)
    or tostring(reason)
  local what = WHAT[outcome] or outcome == "kept" and ("kept: " .. why)
    or outcome == "refused" and ("REFUSED: " .. why .. " (not an owner)")
    or outcome == "unprovable" and "REFUSED: owner cannot be proven (set key_id)"
    or ("%s (%s)"):format(outcome:upper(), why)
  self:say("orphan   %s  %s bytes  modified %s (%s ago)  %s", entry.key, tostring(entry.size or "?"),
    tostring(entry.last_modified), human_age(entry.age_s), what)
end

function Run:missing(owner, key)
  self.counts.missing_objects = self.counts.missing_objects + 1
  log.warn("missing_object", {
    run_id = self.run_id, table = owner.table, resource_id = key, key = key,
    message = "the row is marked uploaded but its object is missing; not changed",
  })
  self:say("missing  %s  confirmed row in %s has no object (reported only)", key, owner.table)
end

-- Confirmed rows of each owner in key range (lo, hi] whose key is not in
-- present; HEAD double-checks them (a PUT may have landed after the
-- listing). Returns true or nil, err.
function Run:check_range(conn, store, owners, lo, hi, present)
  for _, o in ipairs(owners) do
    if o.range_sql then
      local from = lo
      while true do
        local sql, args = o.range_sql(from, hi)
        local res, err = conn:query(sql, table.unpack(args))
        if not res then return nil, err end
        local absent = {}
        for _, r in ipairs(res) do
          if not present[r.k] then absent[#absent + 1] = r.k end
        end
        if #absent > 0 then
          local heads = store:head_many(absent, self.policy.concurrency)
          for i, k in ipairs(absent) do
            if heads[i] == false then self:missing(o, k) end
          end
        end
        if #res < self.page_size then break end
        from = res[#res].k
      end
    end
  end
  return true
end

local function names_of(cols)
  local out = {}
  for i, c in ipairs(cols) do out[i] = c.name end
  return table.concat(out, ", ")
end

-- Plan one page of the listing: candidates, their owners, the rows that
-- name the rest. Nothing is deleted here. Returns true or nil, err.
function Run:plan_page(conn, store, ctx, entries, db_now, cutoff, range)
  local p = self.policy
  local candidates, keys, present = {}, {}, {}
  local last_uuid
  for _, e in ipairs(entries) do
    self.counts.listed = self.counts.listed + 1
    present[e.key] = true
    if e.key:find(policy_mod.UUID_PATTERN) then last_uuid = e.key end
    if policy_mod.check_key(p, e.key) then
      self.counts.considered = self.counts.considered + 1
      local lm = e.mtime or M.parse_time(e.last_modified)
      if lm and lm < cutoff then
        e.age_s = db_now() - lm
        self.counts.candidates = self.counts.candidates + 1
        candidates[#candidates + 1] = e
        keys[#keys + 1] = e.key
      else
        self.counts.recent = self.counts.recent + 1
      end
    end
  end
  if #keys > 0 then
    local owned, unprovable = M.owned(conn, p, ctx.owners, keys)
    if not owned then return nil, unprovable end
    local bad = {}
    for _, k in ipairs(unprovable) do bad[k] = true end
    local rest, rkeys = {}, {}
    for _, e in ipairs(candidates) do
      if owned[e.key] then
        self.counts.owned = self.counts.owned + 1
      elseif bad[e.key] then
        self.unprovable[#self.unprovable + 1] = e
      else
        rest[#rest + 1] = e
        rkeys[#rkeys + 1] = e.key
      end
    end
    local named, err = M.named(conn, ctx.tables, rkeys)
    if not named then return nil, err end
    for _, e in ipairs(rest) do
      local cols = named[e.key]
      if not cols then
        self.counts.orphans = self.counts.orphans + 1
        self.plan[#self.plan + 1] = e
        if not self.apply then self:orphan(e, "planned") end
      else
        local foreign = {}
        for _, c in ipairs(cols) do
          if not c.covered then foreign[#foreign + 1] = c end
        end
        if #foreign > 0 then
          self.refusals[#self.refusals + 1] = { entry = e, cols = foreign }
        else
          self:orphan(e, "kept", "named_by_row", { named_by = names_of(cols) })
        end
      end
    end
  end
  if last_uuid then
    local ok, err = self:check_range(conn, store, ctx.owners, range.lo, last_uuid, present)
    if not ok then return nil, err end
    range.lo = last_uuid
  end
  return true
end

-- Plan every page of the listing (nothing is deleted), then the confirmed
-- rows past the last key. A listing that would never end (M.listing_guard)
-- ends the run. Returns true or nil, err.
function Run:plan_all(conn, store, ctx, db_now, cutoff)
  local bucket = self.policy.bucket
  local range, token, guard = {}, nil, M.listing_guard()
  repeat
    local page, err = store.client:list({ continuation = token, max = self.page_size })
    local bad = page and guard(page)
    if bad then
      err = errors.new("transient", bad)
    elseif err and errors.classify(err) == "item" then
      err.class = "transient" -- a reply that is not a listing: as when the storage cannot be reached, exit 3
    end
    if err then
      err.message = ("storage bucket %q: %s; the plan is unfinished: nothing was deleted"):format(bucket,
        tostring(err.message))
      return nil, err
    end
    local ok
    ok, err = self:plan_page(conn, store, ctx, page.keys or {}, db_now, cutoff, range)
    if not ok then return nil, err end
    token = page.truncated and page.next_continuation or nil
  until not token or sys.stopping()
  if sys.stopping() then return true end
  return self:check_range(conn, store, ctx.owners, range.lo, nil, {})
end

-- Row-level security that hides rows (M.hidden_rows): a warn line naming
-- the tables and what lets the role see every row; with --apply, the
-- refusal. Returns true to go on, or nil, err.
function Run:check_hidden(conn, ctx)
  local hidden, forced, role = M.hidden_rows(conn, ctx)
  if not hidden then return nil, forced end
  if #hidden == 0 then return true end
  local force = #forced > 0
  local msg = ("row-level security hides rows of %s from role %s%s: objects those rows name would look orphaned. "
    .. "Let the role see every row: ALTER ROLE %s BYPASSRLS, or a policy such as CREATE POLICY resclean_reads_all "
    .. "ON %s FOR SELECT TO %s USING (true), or run reconcile as the table's owner%s"):format(
    table.concat(hidden, ", "), role,
    force and (" (FORCE ROW LEVEL SECURITY on %s: it applies to the owner too)"):format(table.concat(forced, ", "))
      or "", role, hidden[1], role, force and " without FORCE ROW LEVEL SECURITY" or "")
  log.warn("row_security", { run_id = self.run_id, tables = table.concat(hidden, ", "), message = msg })
  if self.apply then return nil, "reconcile --apply refused, nothing deleted: " .. msg end
  self:say("warning: %s; until then --apply refuses", msg)
  return true
end

-- Why the plan cannot be applied (keys named by tables that are not owners,
-- keys whose owner cannot be proven): logs each such key and returns the
-- operator's message, or nil.
function Run:refusal()
  local p = self.policy
  local parts = {}
  if #self.refusals > 0 then
    local by, order = {}, {}
    for _, r in ipairs(self.refusals) do
      self:orphan(r.entry, "refused", "named_by_row", { named_by = names_of(r.cols) })
      for _, c in ipairs(r.cols) do
        if not by[c.name] then
          by[c.name] = { col = c, n = 0 }
          order[#order + 1] = c.name
        end
        by[c.name].n = by[c.name].n + 1
      end
    end
    for _, name in ipairs(order) do
      local c, n = by[name].col, by[name].n
      parts[#parts + 1] = ("%d object%s that no owner holds %s named by %s, which is not among the policy's owners: "
        .. "add { table = %q, key_column = %q } to owners in %s%s"):format(n, n == 1 and "" or "s",
        n == 1 and "is" or "are", name, c.table, c.column, p.source or "the policy",
        c.on_path and "" or (" (and schema %q to the role's search_path)"):format(c.schema))
    end
  end
  if #self.unprovable > 0 then
    for _, e in ipairs(self.unprovable) do self:orphan(e, "unprovable", "owner_unknown") end
    parts[#parts + 1] = ("cannot prove that no row of %q owns %d object%s (e.g. %q): key() is not the bare %s "
      .. "and the key holds no UUID of a uuid column key() embeds; set key_id in %s to a function(key) "
      .. "returning the %s of the row whose key(row) is key"):format(p.table, #self.unprovable,
      #self.unprovable == 1 and "" or "s", self.unprovable[1].key, p.id_column, p.source or "the policy",
      p.id_column)
  end
  if #parts == 0 then return nil end
  return "reconcile refused, nothing deleted: " .. table.concat(parts, "; ")
    .. " (an object a row names is never deleted)"
end

-- Just before chunk's keys are deleted, asks again every table that could
-- name them (the owners, then every readable table: M.named): a row may
-- have appeared since the plan. Logs the keys now kept; returns the entries
-- still orphaned, or nil, err.
function Run:recheck(conn, ctx, chunk)
  local keys = {}
  for i, e in ipairs(chunk) do keys[i] = e.key end
  local owned, err = M.owned(conn, self.policy, ctx.owners, keys)
  if not owned then return nil, err end
  local rest, rkeys = {}, {}
  for _, e in ipairs(chunk) do
    if owned[e.key] then
      self.counts.orphans = self.counts.orphans - 1
      self:orphan(e, "kept", "owned_now", { owner = owned[e.key] })
    else
      rest[#rest + 1] = e
      rkeys[#rkeys + 1] = e.key
    end
  end
  local named
  named, err = M.named(conn, ctx.tables, rkeys)
  if not named then return nil, err end
  local del = {}
  for _, e in ipairs(rest) do
    if named[e.key] then
      self.counts.orphans = self.counts.orphans - 1
      self:orphan(e, "kept", "named_now", { named_by = names_of(named[e.key]) })
    else
      del[#del + 1] = e
    end
  end
  return del
end

-- Apply the plan: one DeleteObjects per page, each after Run:recheck.
-- Returns true or nil, err.
function Run:apply_plan(conn, store, ctx)
  local plan = self.plan
  for first = 1, #plan, self.page_size do
    if sys.stopping() then return true end
    local healthy, why = log.healthy()
    if not healthy then
      return nil, errors.new("config", "the log cannot be written (" .. tostring(why)
        .. "): stopped before deleting more")
    end
    local del, err = self:recheck(conn, ctx, table.move(plan, first, math.min(first + self.page_size - 1, #plan),
      1, {}))
    if not del then return nil, err end
    if #del > 0 then
      local dkeys = {}
      for i, e in ipairs(del) do dkeys[i] = e.key end
      log.hold()
      local results = store:delete_many(dkeys, self.policy.concurrency)
      local unreachable, last = 0, nil
      for i, e in ipairs(del) do
        local r = results[i]
        if r == true then
          self:orphan(e, "object_deleted")
        else
          if type(r) == "table" and errors.classify(r) == "transient" then
            unreachable = unreachable + 1
            last = r
          end
          self:orphan(e, "failed", type(r) == "table" and (r.code or r.kind) or tostring(r))
        end
      end
      log.release()
      if unreachable == #del then return nil, last end
    end
  end
  return true
end

function Run:summary(fields)
  local f = { run_id = self.run_id, bucket = self.policy.bucket, apply = self.apply == true,
              duration_ms = math.floor((sys.monotime() - self.started) * 1000 + 0.5) }
  for k, v in pairs(self.counts) do f[k] = v end
  for k, v in pairs(fields or {}) do f[k] = v end
  log.emit(f.error and "error" or "info", "reconcile", f)
  return f
end

-- Ends the run on err: summary, exit code and message.
function Run:stop_on(err)
  local msg = type(err) == "string" and err or errors.message(err)
  self:summary({ error = msg })
  return type(err) == "string" and errors.EXIT.usage or errors.exit_code(err), msg
end

-- The whole run over an open connection and store. ctx: owners, tables
-- and unreadable (M.check_owners, M.name_columns). opts: apply, json, older_than,
-- page_size, max_delete. Returns exit code[, message for stderr].
function M.reconcile(conn, store, ctx, p, opts)
  local run = M.new_run({ policy = p, apply = opts.apply, human = not opts.json, page_size = opts.page_size })
  local res, err = conn:query("SELECT extract(epoch FROM now())::float8 AS now")
  if not res then return run:stop_on(err) end
  local t0, db0 = sys.monotime(), res[1].now
  local function db_now() return db0 + (sys.monotime() - t0) end
  local cutoff = db0 - opts.older_than
  local owner_names = {}
  for i, o in ipairs(ctx.owners) do owner_names[i] = o.table .. "." .. o.key_column end
  run:say("reconcile: bucket %s, objects modified more than %s ago (before %s, database clock)",
    p.bucket, human_age(opts.older_than), os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(cutoff)))
  run:say("owners: %s", table.concat(owner_names, ", "))
  if #ctx.unreadable > 0 then
    log.warn("unreadable_tables", { run_id = run.run_id, tables = table.concat(ctx.unreadable, ", "),
      message = "the role cannot read these tables: objects their rows name are not protected from deletion" })
    run:say("warning: the role cannot read %s; objects named there are not protected",
      table.concat(ctx.unreadable, ", "))
  end
  for _, o in ipairs(ctx.owners) do
    if o.by_key and not o.range_sql then
      run:say("note: confirmed rows of %s are not checked for missing objects (key() is not the bare %s)",
        o.table, p.id_column)
    end
  end
  local ok
  ok, err = run:check_hidden(conn, ctx)
  if not ok then return run:stop_on(err) end
  -- 1. Plan every page; nothing is deleted.
  ok, err = run:plan_all(conn, store, ctx, db_now, cutoff)
  if not ok then return run:stop_on(err) end
  if sys.stopping() then
    run:summary({ stopped = true })
    return errors.EXIT.ok
  end
  local c = run.counts
  -- 2. Refuse a plan that would delete what a row names, or that is too big.
  local refusal = run:refusal()
  local within, limit_or_msg = M.valve(#run.plan, c.candidates, p.reconcile_max_delete_fraction, opts.max_delete)
  if refusal or (opts.apply and not within) then
    if opts.apply then
      for _, e in ipairs(run.plan) do run:orphan(e, "planned") end
    end
    return run:stop_on(refusal or limit_or_msg)
  end
  -- 3. Apply, after asking again about row-level security (switched on
  -- while planning, it would hide rows from the re-checks).
  if opts.apply then
    ok, err = run:check_hidden(conn, ctx)
    if ok then ok, err = run:apply_plan(conn, store, ctx) end
    if not ok then return run:stop_on(err) end
  end
  local s = run:summary({ older_than_s = opts.older_than, delete_limit = opts.apply and limit_or_msg or nil,
                          stopped = sys.stopping() or nil })
  run:say("listed %d objects: %d match key_pattern, %d too recent; of the %d candidates %d owned, %d kept "
    .. "(named by a row), %d orphaned; %d confirmed rows without object",
    c.listed, c.considered, c.recent, c.candidates, c.owned, c.kept, c.orphans, c.missing_objects)
  if opts.apply then
    run:say("deleted: %d, failed: %d", c.object_deleted, c.failed)
  elseif c.orphans > 0 then
    run:say("plan only: nothing was deleted; run with --apply to delete the orphaned objects")
    if within then
      run:say("mass-delete limit: %d of %d candidates (%.1f%%), within the limit %d", #run.plan, c.candidates,
        #run.plan * 100 / math.max(c.candidates, 1), limit_or_msg)
    else
      run:say("note: %s", (limit_or_msg:gsub("reconcile %-%-apply refused", "reconcile --apply would refuse")
        :gsub("; nothing was deleted", "")))
    end
  end
  return s.failed > 0 and errors.EXIT.failed or errors.EXIT.ok
end

local STANDBY_REFUSAL = "reconcile must run against the primary: a standby replays the primary's changes "
  .. "with a delay, so it may lack the newest rows, and the objects they own would look orphaned and be deleted; "
  .. "point DATABASE_URL at the primary (or list every host with target_session_attrs=read-write)"

-- Every statement in a READ ONLY transaction of its own with the timeout
-- SET LOCAL: nothing stays on the server connection (a transaction pool
-- hands it to the application next).
local function connect(p)
  local conn, err = require("resclean.pg").connect(config.conninfo())
  if not conn then return nil, err end
  -- A lagging standby lacks the newest rows: their objects would look orphaned.
  local ok_role
  ok_role, err = require("resclean.session").server_role(conn, { refuse = STANDBY_REFUSAL })
  if not ok_role then
    conn:close()
    return nil, err
  end
  conn:per_transaction(("SET TRANSACTION READ ONLY; SET LOCAL statement_timeout = %d")
    :format(math.ceil(p.statement_timeout * 1000)))
  return conn
end

-- From a loaded policy and parsed options to an exit code. opts: apply,
-- json, older_than (seconds), page_size, max_delete (or nil). fail(code,
-- msg) reports a run that cannot start (app.fail).
function M.main(p, opts, fail)
  local conn, err = connect(p)
  if not conn then return fail(errors.exit_code(err), "database: " .. errors.message(err)) end
  local owners, cols
  owners, err = M.check_owners(conn, p, opts.page_size)
  if owners then cols, err = M.name_columns(conn, p, owners) end
  if not cols then
    conn:close()
    return fail(errors.exit_code(err), errors.message(err))
  end
  local store, code, msg = require("resclean.app").open_store(p, true)
  if not store then
    conn:close()
    return fail(code, msg)
  end
  code, msg = M.reconcile(conn, store, { owners = owners, tables = cols.tables, unreadable = cols.unreadable },
    p, opts)
  store:close()
  conn:close()
  if msg then log.stderr(log.redact(msg)) end
  return code
end

return M
