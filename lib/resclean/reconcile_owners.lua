-- Reconcile's ownership proof: which objects some row owns, which keys no
-- owner holds, and whether that can be proven.
--
-- An orphan is an object whose key matches the policy's key_pattern, that
-- was last modified before the cutoff, and that no owner (policy.owners)
-- holds. For the policy's own table an object is owned when some row's
-- key(row) (the sweep's key function, on the sweep's row shape) equals the
-- object key: rows are found by the UUIDs embedded in the key, or by the
-- policy's key_id(key) inverse, then key(row) is compared. For every other
-- owner {table, key_column} the column is compared with the key and with
-- the UUIDs embedded in it. A key whose owner cannot be proven either way
-- (no embedded UUID, no key_id, and key() is not the bare id) is
-- unprovable (the run refuses, exit 2).
--
-- Only rows the role sees protect objects: M.hidden_rows names the tables
-- whose rows row-level security hides.
--
-- Listing order is byte order, which for lower-case UUID keys is also
-- PostgreSQL's uuid order, so confirmed rows are checked against each page
-- by key range (owners whose key is the bare uuid column: owner.range_sql).
local policy_mod = require("resclean.policy")

local M = {}

local UUID = policy_mod.UUID_PATTERN -- lower case: matched against lower-cased text

-- ------------------------------------------------------------ pure decisions

-- Every UUID written anywhere in key (either case, overlapping windows
-- included), lower-cased, each once, in order of appearance.
function M.embedded_uuids(key)
  local out, seen = {}, {}
  if type(key) ~= "string" then return out end
  for i = 1, #key - 35 do
    local s = key:sub(i, i + 35):lower()
    if s:find(UUID) and not seen[s] then
      seen[s] = true
      out[#out + 1] = s
    end
  end
  return out
end

-- The row fields key(row) receives, as the sweep builds them
-- (session.build_sql): field "id" is id_column::text, then each key column
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
      return nil, policy_mod.error(p.source, field, ("column %q does not exist in table %q"):format(c, p.table))
    end
    types[c] = res[1].t
  end
  local shape = M.key_shape(p, types)
  if shape.inverse_error then return nil, policy_mod.error(p.source, "key_id", shape.inverse_error) end
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

-- range_sql(lo, hi) of an owner: the query (and its arguments) for the
-- keys in (lo, hi] of its confirmed rows (u: the uploaded column), in key
-- order, page_size at a time. t, c: the table and key column, quoted.
local function range_sql(u, t, c, page_size)
  return function(lo, hi)
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

-- Check every owner table and key column; learn the column's type and
-- whether the table has a boolean uploaded column. page_size: the rows
-- owner.range_sql asks for at a time. Returns owners or nil, err (kind
-- "policy" for what is missing).
function M.check_owners(conn, p, page_size)
  local listed = false
  for _, o in ipairs(p.owners) do listed = listed or o.table == p.table end
  if not listed then
    return nil, policy_mod.error(p.source, "owners",
      ("the policy's table %q is not among its owners: its objects would look orphaned"):format(p.table))
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
      return nil, policy_mod.error(p.source, ("owners[%d].table"):format(i),
        ("owner table %q does not exist; reconciling without every owner would take the objects it owns "
         .. "for orphans"):format(o.table))
    end
    if not r.key_type then
      return nil, policy_mod.error(p.source, ("owners[%d].key_column"):format(i),
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
      owner.range_sql = range_sql(conn:quote_ident(p.uploaded_column), t, c, page_size)
    end
    out[i] = owner
  end
  return out
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
-- and value -> keys it names. The owners' lookups and the name scan's.
function M.lookup_values(keys)
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
        local lid = id:lower()
        if lid:find(UUID) then add(uuids, su, lid) end
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
  local uuids, texts, names = M.lookup_values(keys)
  for _, o in ipairs(owners) do
    if o.by_key then
      -- Only key(row) owns: a row that merely holds a UUID of the key is
      -- found by the name scan (reconcile_names.named) and keeps the object, reported as such.
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

return M
