/*
 * resclean.pg: PostgreSQL primitives over libpq.
 *
 *   local pg = require "resclean.pg"
 *   local conn <close> = assert(pg.connect(os.getenv "DATABASE_URL"))
 *   local tx <close> = conn:begin()
 *   local res, err = tx:query("SELECT id FROM t WHERE id = ANY($1::uuid[]) FOR UPDATE", ids)
 *
 * Values are always bound with PQexecParams (text format), never interpolated.
 *
 * Nothing outlives a transaction on the server, so a connection through a transaction pool
 * (PgBouncer pool_mode=transaction) hands its server connection back as it found it: a "prepared"
 * statement is its SQL text kept here per connection and run unnamed, and the settings given with
 * conn:per_transaction() are sent right after every BEGIN (in the same message) and around every
 * statement run outside a transaction (BEGIN; settings; statement; COMMIT).
 * Misuse raises; the world failing returns nil, err with err = {kind="pg", code, message, ...}.
 *
 * Memory libpq hands us (results, conninfo arrays, escaped strings) is parked in the Conn before
 * any Lua allocation that could raise, so an out-of-memory error leaks nothing: the next call on
 * the connection, close or __gc frees it.
 */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include <lauxlib.h>
#include <lua.h>

#include "luax.h"
#include "resclean.h"

#define CONN_MT "resclean.pg.conn"
#define TX_MT "resclean.pg.tx"

/* Built-in type OIDs (catalog/pg_type_d.h is a server header); they are fixed forever. */
enum {
    BOOLOID = 16,
    INT8OID = 20,
    INT2OID = 21,
    INT4OID = 23,
    OIDOID = 26,
    FLOAT4OID = 700,
    FLOAT8OID = 701,
    NUMERICOID = 1700
};

#define MAX_PARAMS 65535  /* protocol limit */
#define MAX_ARRAY_DEPTH 6 /* PostgreSQL's MAXDIM */
#define SMALL_PARAMS 16

typedef struct Conn {
    PGconn *pg;             /* NULL once closed */
    PGresult *res;          /* result being turned into Lua values */
    PQconninfoOption *opts; /* conninfo being read */
    char *mem;              /* libpq string being pushed (PQfreemem) */
    int intx;               /* a Tx owns the open transaction */
    int abandoned;          /* that Tx was collected while open: roll back before next use */
    char desc[256];         /* user@host:port/db for __tostring; never the password */
} Conn;

enum { TX_DONE, TX_OPEN };

typedef struct Tx {
    int state;
    int nsavepoints; /* for generated savepoint names */
} Tx;                /* user value 1: the connection */

/* A connection's user values: 1 the prepared statements' SQL by name, 2 the per-transaction
   settings (a string; nil: none). */
enum { UV_STATEMENTS = 1, UV_PER_TX = 2, NUV };

enum { Q_PARAMS, Q_SIMPLE };

/* ---------------------------------------------------------------- helpers */

static void release(Conn *c) {
    if (c->res) {
        PQclear(c->res);
        c->res = NULL;
    }
    if (c->opts) {
        PQconninfoFree(c->opts);
        c->opts = NULL;
    }
    if (c->mem) {
        PQfreemem(c->mem);
        c->mem = NULL;
    }
}

static Conn *checkconn(lua_State *L, int idx) {
    Conn *c = (Conn *)luaL_checkudata(L, idx, CONN_MT);
    if (c->pg == NULL)
        luaL_error(L, "attempt to use a closed connection");
    release(c);
    return c;
}

/* Pushes s with trailing blanks removed and each line break (plus its indentation) turned into one
   space: libpq messages are multi-line, log lines are not. */
static void pushmsg(lua_State *L, const char *s) {
    luaL_Buffer b;
    size_t len = strlen(s);
    while (len > 0 && isspace((unsigned char)s[len - 1]))
        len--;
    luaL_buffinit(L, &b);
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '\n') {
            while (i + 1 < len && isspace((unsigned char)s[i + 1]))
                i++;
            luaL_addchar(&b, ' ');
        } else {
            luaL_addchar(&b, s[i]);
        }
    }
    luaL_pushresult(&b);
}

/* Pushes nil and a fresh error table {kind="pg", code} (the caller adds message). */
static void newerror(lua_State *L, const char *code) {
    lua_pushnil(L);
    luax_newerror(L, "pg", code);
}

static int pusherror(lua_State *L, const char *code, const char *msg) {
    newerror(L, code);
    pushmsg(L, msg);
    lua_setfield(L, -2, "message");
    return 2;
}

/* nil, err for a failed call; r may be NULL (libpq could not even build a result). */
static int resulterror(lua_State *L, Conn *c, const PGresult *r) {
    const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    const char *msg = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    int lost = PQstatus(c->pg) == CONNECTION_BAD;
    if (msg == NULL && r != NULL)
        msg = PQresultErrorMessage(r);
    if (msg == NULL || *msg == '\0')
        msg = PQerrorMessage(c->pg);
    if (msg == NULL || *msg == '\0')
        msg = lost ? "connection to the server was lost" : "unknown error";
    /* a dead connection is one condition whatever the server said on its way out (57P01, ...) */
    newerror(L, lost ? "connection" : (state ? state : "libpq"));
    pushmsg(L, msg);
    lua_setfield(L, -2, "message");
    if (lost && state != NULL && *state != '\0')
        luax_setstr(L, "sqlstate", state);
    if (r != NULL) {
        static const struct {
            const char *name;
            int field;
        } extra[] = {{"detail", PG_DIAG_MESSAGE_DETAIL},
                     {"hint", PG_DIAG_MESSAGE_HINT},
                     {"severity", PG_DIAG_SEVERITY_NONLOCALIZED},
                     {"schema", PG_DIAG_SCHEMA_NAME},
                     {"table", PG_DIAG_TABLE_NAME},
                     {"column", PG_DIAG_COLUMN_NAME},
                     {"constraint", PG_DIAG_CONSTRAINT_NAME},
                     {NULL, 0}};
        for (int i = 0; extra[i].name; i++) {
            const char *v = PQresultErrorField(r, extra[i].field);
            if (v != NULL && *v != '\0')
                luax_setstr(L, extra[i].name, v);
        }
    }
    return 2;
}

static int lost(lua_State *L, Conn *c) {
    const char *msg = PQerrorMessage(c->pg);
    return pusherror(L, "connection", (msg && *msg) ? msg : "connection to the server was lost");
}

/* Before talking to the server: finish an abandoned transaction. Returns 0 when the connection is
   known to be dead (nil, err pushed). */
static int ready(lua_State *L, Conn *c) {
    if (c->abandoned) {
        PGresult *r;
        c->abandoned = 0;
        r = PQexec(c->pg, "ROLLBACK");
        fprintf(stderr, "resclean.pg: a transaction was garbage-collected without commit or rollback; "
                        "rolled back\n");
        PQclear(r);
    }
    if (PQstatus(c->pg) == CONNECTION_BAD) {
        lost(L, c);
        return 0;
    }
    return 1;
}

static void notice(void *arg, const PGresult *r) {
    const char *sev = PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED);
    (void)arg;
    /* NOTICE and below are chatter (DROP ... IF EXISTS); warnings deserve an operator's eye */
    if (sev && strcmp(sev, "WARNING") == 0)
        fprintf(stderr, "resclean.pg: %s", PQresultErrorMessage(r));
}

/* ---------------------------------------------------------------- parameters */

/* Shortest text that reads back as the same double, with '.' whatever the C locale says. */
static void fmtfloat(lua_Number v, char *buf, size_t size) {
    if (isnan(v)) {
        snprintf(buf, size, "NaN");
        return;
    }
    if (isinf(v)) {
        snprintf(buf, size, v > 0 ? "Infinity" : "-Infinity");
        return;
    }
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, size, "%.*g", prec, (double)v);
        if (strtod(buf, NULL) == v)
            break;
    }
    for (char *p = buf; *p; p++)
        if (!isdigit((unsigned char)*p) && *p != '-' && *p != '+' && *p != 'e')
            *p = '.';
}

static void fmtnumber(lua_State *L, int idx, char *buf, size_t size) {
    if (lua_isinteger(L, idx))
        snprintf(buf, size, LUA_INTEGER_FMT, (LUAI_UACINT)lua_tointeger(L, idx));
    else
        fmtfloat(lua_tonumber(L, idx), buf, size);
}

static size_t put(char *out, size_t pos, const char *s, size_t len) {
    if (out)
        memcpy(out + pos, s, len);
    return pos + len;
}

/* Length of the array literal for the table at idx; writes it to out unless out is NULL. The first
   (measuring) pass checks everything and raises before anything is allocated; the second pass
   cannot fail. Raw access only, so both passes see the same elements. Stack use is balanced. */
static size_t arrayliteral(lua_State *L, int idx, int arg, int depth, char *out) {
    lua_Integer n;
    size_t pos = 0;
    if (depth >= MAX_ARRAY_DEPTH)
        luaL_argerror(L, arg, "array nested too deeply");
    luaL_checkstack(L, 4, "array nested too deeply");
    lua_pushliteral(L, "n"); /* table.pack style length, so nil elements count */
    lua_rawget(L, idx);
    if (lua_isnil(L, -1)) {
        n = (lua_Integer)lua_rawlen(L, idx);
    } else if (lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 0) {
        n = lua_tointeger(L, -1);
    } else {
        return (size_t)luaL_argerror(L, arg, "array field 'n' must be a non-negative integer");
    }
    lua_pop(L, 1);
    if (out == NULL) { /* a table with other keys is not an array: refuse rather than drop them */
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            lua_pop(L, 1);
            if (lua_isinteger(L, -1)
                    ? (lua_tointeger(L, -1) < 1 || lua_tointeger(L, -1) > n)
                    : !(lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "n") == 0))
                luaL_argerror(L, arg, "table is not an array (it has non-sequence keys)");
        }
    }
    pos = put(out, pos, "{", 1);
    for (lua_Integer i = 1; i <= n; i++) {
        char buf[64];
        if (i > 1)
            pos = put(out, pos, ",", 1);
        switch (lua_rawgeti(L, idx, i)) {
        case LUA_TNIL: pos = put(out, pos, "NULL", 4); break;
        case LUA_TBOOLEAN: pos = put(out, pos, lua_toboolean(L, -1) ? "t" : "f", 1); break;
        case LUA_TNUMBER:
            fmtnumber(L, -1, buf, sizeof buf);
            pos = put(out, pos, buf, strlen(buf));
            break;
        case LUA_TSTRING: { /* always quoted: "NULL", "" and blanks stay strings */
            size_t len;
            const char *s = lua_tolstring(L, -1, &len);
            if (memchr(s, '\0', len))
                luaL_argerror(L, arg, "array element contains a zero byte");
            pos = put(out, pos, "\"", 1);
            for (size_t j = 0; j < len; j++) {
                if (s[j] == '"' || s[j] == '\\')
                    pos = put(out, pos, "\\", 1);
                pos = put(out, pos, s + j, 1);
            }
            pos = put(out, pos, "\"", 1);
            break;
        }
        case LUA_TTABLE:
            pos += arrayliteral(L, lua_gettop(L), arg, depth + 1, out ? out + pos : NULL);
            break;
        default:
            luaL_argerror(
                L, arg,
                lua_pushfstring(L, "cannot bind an array element of type %s", luaL_typename(L, -1)));
        }
        lua_pop(L, 1);
    }
    return put(out, pos, "}", 1);
}

/* Text for parameter idx (NULL for SQL NULL). May push a string, which stays on the stack until the
   query is done. */
static const char *param(lua_State *L, int idx) {
    char buf[64];
    switch (lua_type(L, idx)) {
    case LUA_TNIL: return NULL;
    case LUA_TBOOLEAN: return lua_toboolean(L, idx) ? "t" : "f";
    case LUA_TNUMBER: fmtnumber(L, idx, buf, sizeof buf); return lua_pushstring(L, buf);
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        if (memchr(s, '\0', len)) /* libpq would silently cut the value short */
            luaL_argerror(L, idx, "string contains a zero byte");
        return s;
    }
    case LUA_TTABLE: {
        luaL_Buffer b;
        size_t len = arrayliteral(L, idx, idx, 0, NULL);
        char *p = luaL_buffinitsize(L, &b, len);
        arrayliteral(L, idx, idx, 0, p);
        luaL_pushresultsize(&b, len);
        return lua_tostring(L, -1);
    }
    default:
        luaL_argerror(L, idx, lua_pushfstring(L, "cannot bind a %s", luaL_typename(L, idx)));
        return NULL;
    }
}

static const char *checktext(lua_State *L, int idx) {
    size_t len;
    const char *s = luaL_checklstring(L, idx, &len);
    if (memchr(s, '\0', len))
        luaL_argerror(L, idx, "string contains a zero byte");
    return s;
}

/* ---------------------------------------------------------------- results */

static void pushint(lua_State *L, const char *s, int len) {
    char *end;
    long long v;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0 || end != s + len || end == s)
        lua_pushlstring(L, s, (size_t)len);
    else
        lua_pushinteger(L, (lua_Integer)v);
}

static int pushspecial(lua_State *L, const char *s) {
    if (strcmp(s, "NaN") == 0)
        lua_pushnumber(L, (lua_Number)NAN);
    else if (strcmp(s, "Infinity") == 0)
        lua_pushnumber(L, (lua_Number)HUGE_VAL);
    else if (strcmp(s, "-Infinity") == 0)
        lua_pushnumber(L, -(lua_Number)HUGE_VAL);
    else
        return 0;
    return 1;
}

static void pushfloat(lua_State *L, const char *s, int len) {
    if (pushspecial(L, s))
        return;
    if (lua_stringtonumber(L, s) == 0) { /* locale-proof, unlike strtod */
        lua_pushlstring(L, s, (size_t)len);
    } else if (lua_isinteger(L, -1)) { /* "3" from a float column is still a float */
        lua_Integer i = lua_tointeger(L, -1);
        lua_pop(L, 1);
        lua_pushnumber(L, (i == 0 && s[0] == '-') ? -0.0 : (lua_Number)i);
    }
}

/* numeric: an integer when it has no fraction and fits 64 bits; a float when it has at most 15
   significant digits (DBL_DIG: the decimal survives the trip through a double unchanged); else
   the exact text. */
static void pushnumeric(lua_State *L, const char *s, int len) {
    const char *p = s, *dot;
    int sig = 0, lead = 0, zeros = 0, seen = 0;
    if (pushspecial(L, s))
        return;
    dot = strchr(s, '.');
    if (dot == NULL) {
        pushint(L, s, len);
        return;
    }
    if (*p == '-')
        p++;
    for (; *p; p++) {
        if (*p == '.')
            continue;
        if (!isdigit((unsigned char)*p)) {
            lua_pushlstring(L, s, (size_t)len);
            return;
        }
        if (!seen && *p == '0') {
            if (p > dot)
                lead++;
            continue;
        }
        seen = 1;
        if (*p == '0') {
            zeros++;
            continue;
        } /* trailing zeros are not significant (yet) */
        sig += zeros + 1;
        zeros = 0;
    }
    if (sig <= 15 && lead < 300 && lua_stringtonumber(L, s) != 0) {
        if (lua_isinteger(L, -1)) { /* cannot happen with a '.', but be exact about the type */
            lua_Integer i = lua_tointeger(L, -1);
            lua_pop(L, 1);
            lua_pushnumber(L, (lua_Number)i);
        }
        return;
    }
    lua_pushlstring(L, s, (size_t)len);
}

static void pushvalue(lua_State *L, const PGresult *r, int row, int col) {
    const char *s = PQgetvalue(r, row, col);
    int len = PQgetlength(r, row, col);
    switch (PQftype(r, col)) {
    case BOOLOID: lua_pushboolean(L, s[0] == 't'); break;
    case INT2OID:
    case INT4OID:
    case INT8OID:
    case OIDOID: pushint(L, s, len); break;
    case FLOAT4OID:
    case FLOAT8OID: pushfloat(L, s, len); break;
    case NUMERICOID: pushnumeric(L, s, len); break;
    default: lua_pushlstring(L, s, (size_t)len); break;
    }
}

/* "INSERT 0 1" -> "INSERT", "SELECT 3" -> "SELECT", "CREATE TABLE" unchanged */
static void pushcommand(lua_State *L, const char *tag) {
    size_t len = strlen(tag);
    for (;;) {
        size_t i = len;
        while (i > 0 && isdigit((unsigned char)tag[i - 1]))
            i--;
        if (i == len || i == 0 || tag[i - 1] != ' ')
            break;
        len = i - 1;
    }
    lua_pushlstring(L, tag, len);
}

/* res = {row1, ..., rowN, n=N, columns={...}, command="SELECT", affected=N} */
static int pushresult(lua_State *L, const PGresult *r) {
    int nrows = PQntuples(r), ncols = PQnfields(r), res, names;
    const char *affected = PQcmdTuples((PGresult *)r);
    luaL_checkstack(L, ncols + LUA_MINSTACK, "too many columns");
    lua_createtable(L, nrows, 4);
    res = lua_gettop(L);
    lua_createtable(L, ncols, 0);
    for (int j = 0; j < ncols; j++) {
        lua_pushstring(L, PQfname(r, j));
        lua_rawseti(L, -2, j + 1);
    }
    lua_setfield(L, res, "columns");
    names = lua_gettop(L) + 1;
    for (int j = 0; j < ncols; j++)
        lua_pushstring(L, PQfname(r, j));
    /* res name1 ... nameN */
    for (int i = 0; i < nrows; i++) {
        lua_createtable(L, 0, ncols);
        for (int j = 0; j < ncols; j++) {
            if (PQgetisnull(r, i, j))
                continue; /* NULL: absent */
            lua_pushvalue(L, names + j);
            pushvalue(L, r, i, j);
            lua_rawset(L, -3);
        }
        lua_rawseti(L, res, i + 1);
    }
    lua_settop(L, res);
    lua_pushinteger(L, nrows);
    lua_setfield(L, res, "n");
    if (*PQcmdStatus((PGresult *)r)) {
        pushcommand(L, PQcmdStatus((PGresult *)r));
        lua_setfield(L, res, "command");
    }
    if (*affected) {
        lua_pushinteger(L, (lua_Integer)strtoll(affected, NULL, 10));
        lua_setfield(L, res, "affected");
    }
    return 1;
}

/* Leaves the connection usable after a COPY it cannot serve. */
static void endcopy(Conn *c) {
    PGresult *r;
    ExecStatusType st = PQresultStatus(c->res);
    PQclear(c->res);
    c->res = NULL;
    if (st == PGRES_COPY_OUT) {
        char *buf;
        while (PQgetCopyData(c->pg, &buf, 0) > 0)
            PQfreemem(buf);
    } else {
        PQputCopyEnd(c->pg, "COPY is not supported by resclean.pg");
    }
    while ((r = PQgetResult(c->pg)) != NULL)
        PQclear(r);
}

/* Turns c->res into Lua values (or nil, err) and frees it. want_rows: 0 for commands that return
   true on success. */
static int finish(lua_State *L, Conn *c, int want_rows) {
    int n;
    switch (c->res ? PQresultStatus(c->res) : PGRES_FATAL_ERROR) {
    case PGRES_TUPLES_OK:
    case PGRES_COMMAND_OK:
    case PGRES_EMPTY_QUERY:
        if (want_rows)
            n = pushresult(L, c->res);
        else {
            lua_pushboolean(L, 1);
            n = 1;
        }
        break;
    case PGRES_COPY_IN:
    case PGRES_COPY_OUT:
    case PGRES_COPY_BOTH: endcopy(c); return luaL_error(L, "COPY is not supported by resclean.pg");
    default: n = resulterror(L, c, c->res); break;
    }
    PQclear(c->res);
    c->res = NULL;
    return n;
}

/* Sends sql (BEGIN and the per-transaction settings). Returns 1 when the transaction is open; 0
   with the failure in c->res (NULL when libpq could not even build a result), rolled back. */
static int open_tx(Conn *c, const char *sql) {
    PGTransactionStatusType ts;
    c->res = PQexec(c->pg, sql);
    if (PQresultStatus(c->res) == PGRES_COMMAND_OK) {
        PQclear(c->res);
        c->res = NULL;
        return 1;
    }
    ts = PQtransactionStatus(c->pg);
    if (c->res != NULL && (ts == PQTRANS_INERROR || ts == PQTRANS_INTRANS))
        PQclear(PQexec(c->pg, "ROLLBACK"));
    return 0;
}

static int result_ok(const PGresult *r) {
    ExecStatusType st = PQresultStatus(r);
    return st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK || st == PGRES_EMPTY_QUERY;
}

/* Runs text (SQL, simple or with the n values at first..first+n-1). per_tx (or NULL): the
   connection's "BEGIN; settings", sent first when no transaction is open, the statement then
   committed (rolled back when it failed). */
static int run(lua_State *L, Conn *c, int mode, const char *text, int first, int n, const char *per_tx) {
    const char *small[SMALL_PARAMS];
    const char **values = small;
    int wrap;
    if (n > MAX_PARAMS)
        return luaL_error(L, "too many parameters (%d, at most %d)", n, MAX_PARAMS);
    luaL_checkstack(L, n + LUA_MINSTACK, "too many parameters");
    if (n > SMALL_PARAMS)
        values = (const char **)lua_newuserdatauv(L, (size_t)n * sizeof *values, 0);
    for (int i = 0; i < n; i++)
        values[i] = param(L, first + i);
    if (!ready(L, c))
        return 2;
    wrap = per_tx != NULL && !c->intx && PQtransactionStatus(c->pg) == PQTRANS_IDLE;
    if (wrap && !open_tx(c, per_tx))
        return finish(L, c, 1);
    if (mode == Q_PARAMS)
        c->res = PQexecParams(c->pg, text, n, NULL, values, NULL, NULL, 0);
    else
        c->res = PQexec(c->pg, text);
    if (wrap) {
        int ok = result_ok(c->res);
        PGresult *end = PQexec(c->pg, ok ? "COMMIT" : "ROLLBACK");
        if (ok && PQresultStatus(end) != PGRES_COMMAND_OK) {
            PQclear(c->res);
            c->res = end;
        } else {
            PQclear(end);
        }
    }
    return finish(L, c, 1);
}

/* The per-transaction settings of the connection at idx ("BEGIN; ..."), or NULL; pushed (kept on
   the stack while used). */
static const char *per_tx(lua_State *L, int idx) {
    lua_getiuservalue(L, idx, UV_PER_TX);
    return lua_tostring(L, -1);
}

/* The SQL of the statement prepared as name on the connection at idx (pushed), or NULL with
   nil, err pushed (26000, as the server says of an unknown statement). */
static const char *statement(lua_State *L, int idx, const char *name) {
    lua_getiuservalue(L, idx, UV_STATEMENTS);
    if (lua_getfield(L, -1, name) == LUA_TSTRING)
        return lua_tostring(L, -1);
    pusherror(L, "26000", lua_pushfstring(L, "prepared statement \"%s\" does not exist", name));
    return NULL;
}

/* A utility statement (BEGIN, SAVEPOINT, ...): true or nil, err. */
static int command(lua_State *L, Conn *c, const char *sql) {
    if (!ready(L, c))
        return 2;
    c->res = PQexec(c->pg, sql);
    return finish(L, c, 0);
}

/* Pushes name quoted as an identifier. */
static const char *pushident(lua_State *L, Conn *c, int idx) {
    size_t len;
    const char *s = luaL_checklstring(L, idx, &len);
    if (memchr(s, '\0', len))
        luaL_argerror(L, idx, "string contains a zero byte");
    c->mem = PQescapeIdentifier(c->pg, s, len);
    if (c->mem == NULL) /* invalid encoding: the caller's data is wrong */
        luaL_error(L, "cannot quote identifier: %s", PQerrorMessage(c->pg));
    lua_pushstring(L, c->mem);
    PQfreemem(c->mem);
    c->mem = NULL;
    return lua_tostring(L, -1);
}

/* ---------------------------------------------------------------- connect */

/* Conninfo parse errors quote the offending token, which may be a piece of a password: keep the
   message, blank out what it quotes. */
static void pushredacted(lua_State *L, const char *msg) {
    luaL_Buffer b;
    const char *p = msg, *q;
    luaL_buffinit(L, &b);
    while ((q = strchr(p, '"')) != NULL) {
        const char *e = strchr(q + 1, '"');
        if (e == NULL)
            break;
        luaL_addlstring(&b, p, (size_t)(q - p + 1));
        if (e - q - 1 == 1 && q[1] == '=')
            luaL_addchar(&b, '=');
        else
            luaL_addstring(&b, "...");
        luaL_addchar(&b, '"');
        p = e + 1;
    }
    luaL_addstring(&b, p);
    luaL_pushresult(&b);
}

/* Replaces secret in the string on top (belt and braces: libpq does not echo passwords). */
static void scrub(lua_State *L, const char *secret) {
    if (secret != NULL && strlen(secret) >= 3) {
        luaL_gsub(L, lua_tostring(L, -1), secret, "***");
        lua_remove(L, -2);
    }
}

static int looks_like_conninfo(const char *s) {
    return strchr(s, '=') != NULL || strncmp(s, "postgresql://", 13) == 0 ||
           strncmp(s, "postgres://", 11) == 0;
}

static int l_connect(lua_State *L) {
    const char *conninfo = NULL, *password = NULL;
    const char *kw[8], *val[8];
    int k = 0, ud;
    Conn *c;
    if (!lua_isnoneornil(L, 1)) {
        luaL_argexpected(L, lua_type(L, 1) == LUA_TSTRING, 1, "string or nil");
        conninfo = checktext(L, 1);
    }
    lua_settop(L, 1);
    c = (Conn *)lua_newuserdatauv(L, sizeof *c, NUV - 1); /* closed until PQconnectdbParams succeeds */
    memset(c, 0, sizeof *c);
    luaL_setmetatable(L, CONN_MT);
    lua_newtable(L);
    lua_setiuservalue(L, -2, UV_STATEMENTS);
    ud = lua_gettop(L);
    if (conninfo != NULL && looks_like_conninfo(conninfo)) {
        c->opts = PQconninfoParse(conninfo, &c->mem);
        if (c->opts == NULL) {
            newerror(L, "connection");
            pushredacted(L, c->mem ? c->mem : "out of memory");
            pushmsg(L, lua_pushfstring(L, "invalid connection string: %s", lua_tostring(L, -1)));
            lua_setfield(L, -4, "message");
            lua_pop(L, 2);
            release(c);
            return 2;
        }
        for (PQconninfoOption *o = c->opts; o->keyword; o++)
            if (strcmp(o->keyword, "password") == 0 && o->val)
                password = lua_pushstring(L, o->val); /* anchored on the stack */
        release(c);
    }
    /* defaults go before dbname, so the connection string can override them */
    if (getenv("PGAPPNAME") == NULL) {
        kw[k] = "application_name";
        val[k++] = "resclean";
    }
    if (getenv("PGCONNECT_TIMEOUT") == NULL) {
        kw[k] = "connect_timeout";
        val[k++] = "10";
    }
    if (getenv("PGCLIENTENCODING") == NULL) {
        kw[k] = "client_encoding";
        val[k++] = "UTF8";
    }
    if (conninfo != NULL) {
        kw[k] = "dbname";
        val[k++] = conninfo;
    }
    kw[k] = val[k] = NULL;
    c->pg = PQconnectdbParams(kw, val, 1);
    if (c->pg == NULL)
        return pusherror(L, "connection", "out of memory");
    if (PQstatus(c->pg) != CONNECTION_OK) {
        newerror(L, "connection");
        pushmsg(L, PQerrorMessage(c->pg));
        scrub(L, password);
        scrub(L, getenv("PGPASSWORD"));
        lua_setfield(L, -2, "message");
        PQfinish(c->pg);
        c->pg = NULL;
        return 2;
    }
    PQsetNoticeReceiver(c->pg, notice, NULL);
    snprintf(c->desc, sizeof c->desc, "%s@%s:%s/%s", PQuser(c->pg), PQhost(c->pg), PQport(c->pg),
             PQdb(c->pg));
    lua_pushvalue(L, ud);
    return 1;
}

/* ---------------------------------------------------------------- connection methods */

static int conn_close(lua_State *L) { /* close, __close and __gc */
    Conn *c = (Conn *)luaL_checkudata(L, 1, CONN_MT);
    release(c);
    if (c->pg != NULL) {
        PQfinish(c->pg); /* the server rolls back whatever transaction was open */
        c->pg = NULL;
    }
    c->intx = c->abandoned = 0;
    return 0;
}

static int conn_tostring(lua_State *L) {
    Conn *c = (Conn *)luaL_checkudata(L, 1, CONN_MT);
    const char *state = c->pg == NULL ? " closed" : PQstatus(c->pg) == CONNECTION_BAD ? " lost" : "";
    if (c->pg == NULL && c->desc[0] == '\0')
        lua_pushfstring(L, "%s (closed)", CONN_MT);
    else
        lua_pushfstring(L, "%s (%s)%s", CONN_MT, c->desc, state);
    return 1;
}

static int conn_query(lua_State *L) {
    Conn *c = checkconn(L, 1);
    const char *sql = checktext(L, 2);
    int n = lua_gettop(L) - 2;
    return run(L, c, Q_PARAMS, sql, 3, n, per_tx(L, 1));
}

static int conn_exec(lua_State *L) {
    Conn *c = checkconn(L, 1);
    const char *sql = checktext(L, 2);
    luaL_argcheck(L, lua_gettop(L) == 2, 3, "exec takes no parameters (use query)");
    return run(L, c, Q_SIMPLE, sql, 3, 0, per_tx(L, 1));
}

/* prepare(name, sql): the server parses sql (an unnamed statement: nothing stays on the server
   connection) and it is kept as name on this connection; exec_prepared(name, ...) runs it unnamed.
   A name prepared twice is 42P05, as the server says. */
static int conn_prepare(lua_State *L) {
    Conn *c = checkconn(L, 1);
    const char *name = checktext(L, 2), *sql = checktext(L, 3);
    lua_settop(L, 3);
    lua_getiuservalue(L, 1, UV_STATEMENTS);
    if (lua_getfield(L, 4, name) != LUA_TNIL)
        return pusherror(L, "42P05",
                         lua_pushfstring(L, "prepared statement \"%s\" already exists", name));
    lua_pop(L, 1);
    if (!ready(L, c))
        return 2;
    c->res = PQprepare(c->pg, "", sql, 0, NULL);
    if (!result_ok(c->res))
        return finish(L, c, 0);
    lua_pushvalue(L, 3);
    lua_setfield(L, 4, name);
    return finish(L, c, 0);
}

static int conn_exec_prepared(lua_State *L) {
    Conn *c = checkconn(L, 1);
    const char *name = checktext(L, 2), *sql;
    int n = lua_gettop(L) - 2;
    const char *settings = per_tx(L, 1);
    if ((sql = statement(L, 1, name)) == NULL)
        return 2;
    return run(L, c, Q_PARAMS, sql, 3, n, settings);
}

/* per_transaction(sql or nil): statements (SET LOCAL ..., SET TRANSACTION READ ONLY) sent after
   every BEGIN, in its message, and around every statement run outside a transaction. */
static int conn_per_transaction(lua_State *L) {
    checkconn(L, 1);
    if (lua_isnoneornil(L, 2))
        lua_pushnil(L);
    else
        lua_pushfstring(L, "BEGIN; %s", checktext(L, 2));
    lua_setiuservalue(L, 1, UV_PER_TX);
    return 0;
}

static int conn_quote_ident(lua_State *L) {
    Conn *c = checkconn(L, 1);
    pushident(L, c, 2);
    return 1;
}

static int conn_quote_literal(lua_State *L) {
    Conn *c = checkconn(L, 1);
    size_t len;
    const char *s = luaL_checklstring(L, 2, &len);
    if (memchr(s, '\0', len))
        luaL_argerror(L, 2, "string contains a zero byte");
    c->mem = PQescapeLiteral(c->pg, s, len);
    if (c->mem == NULL)
        return luaL_error(L, "cannot quote literal: %s", PQerrorMessage(c->pg));
    lua_pushstring(L, c->mem);
    release(c);
    return 1;
}

static int conn_status(lua_State *L) {
    static const char *const tx[] = {"idle", "active", "intrans", "inerror", "unknown"};
    Conn *c = (Conn *)luaL_checkudata(L, 1, CONN_MT);
    PGTransactionStatusType ts;
    if (c->pg == NULL) {
        lua_pushliteral(L, "closed");
        return 1;
    }
    lua_pushstring(L, PQstatus(c->pg) == CONNECTION_OK ? "ok" : "bad");
    ts = PQtransactionStatus(c->pg);
    lua_pushstring(L, tx[(unsigned)ts < 5 ? ts : 4]);
    return 2;
}

static int conn_backend_pid(lua_State *L) {
    lua_pushinteger(L, PQbackendPID(checkconn(L, 1)->pg));
    return 1;
}

/* socket() -> the connection's descriptor, to wait on (LISTEN) */
static int conn_socket(lua_State *L) {
    lua_pushinteger(L, PQsocket(checkconn(L, 1)->pg));
    return 1;
}

/* notifications() -> {{channel, payload, pid}, ...} of what has arrived (reads the socket without
   blocking), or nil, err when the connection is gone. */
static int conn_notifications(lua_State *L) {
    Conn *c = checkconn(L, 1);
    PGnotify *n;
    lua_Integer i = 0;
    if (!ready(L, c))
        return 2;
    if (!PQconsumeInput(c->pg) || PQstatus(c->pg) == CONNECTION_BAD)
        return lost(L, c);
    lua_newtable(L);
    while ((n = PQnotifies(c->pg)) != NULL) {
        lua_createtable(L, 0, 3);
        lua_pushstring(L, n->relname);
        lua_setfield(L, -2, "channel");
        lua_pushstring(L, n->extra);
        lua_setfield(L, -2, "payload");
        lua_pushinteger(L, n->be_pid);
        lua_setfield(L, -2, "pid");
        PQfreemem(n);
        lua_rawseti(L, -2, ++i);
    }
    return 1;
}

static int conn_server_version(lua_State *L) {
    lua_pushinteger(L, PQserverVersion(checkconn(L, 1)->pg));
    return 1;
}

/* Effective connection options, secrets left out. */
static int conn_info(lua_State *L) {
    Conn *c = checkconn(L, 1);
    c->opts = PQconninfo(c->pg);
    lua_newtable(L);
    for (PQconninfoOption *o = c->opts; o && o->keyword; o++)
        if (o->val && *o->val && strchr(o->dispchar, '*') == NULL) {
            lua_pushstring(L, o->val);
            lua_setfield(L, -2, o->keyword);
        }
    release(c);
    return 1;
}

/* ---------------------------------------------------------------- transactions */

/* A boolean transaction mode from begin's options (index 2): adds yes or no to b when the field is
   set. The field is popped before b grows, as luaL_Buffer needs. */
static void add_mode(lua_State *L, luaL_Buffer *b, const char *field, const char *yes, const char *no) {
    int set = lua_getfield(L, 2, field) != LUA_TNIL;
    int on = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (set)
        luaL_addstring(b, on ? yes : no);
}

static int conn_begin(lua_State *L) {
    static const char *const levels[] = {"read committed", "repeatable read", "serializable",
                                         "read uncommitted", NULL};
    Conn *c = checkconn(L, 1);
    Tx *t;
    const char *settings;
    luaL_Buffer b;
    if (c->intx)
        return luaL_error(L, "a transaction is already open on this connection");
    lua_settop(L, 2);
    settings = per_tx(L, 1); /* "BEGIN; settings" (index 3): the settings go after our BEGIN */
    luaL_buffinit(L, &b);    /* conn opts settings; the buffer comes after */
    luaL_addstring(&b, "BEGIN");
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        if (lua_getfield(L, 2, "isolation") != LUA_TNIL) {
            int i = luaL_checkoption(L, -1, NULL, levels);
            lua_pop(L, 1);
            luaL_addstring(&b, " ISOLATION LEVEL ");
            luaL_addstring(&b, levels[i]);
        } else {
            lua_pop(L, 1);
        }
        add_mode(L, &b, "read_only", " READ ONLY", " READ WRITE");
        add_mode(L, &b, "deferrable", " DEFERRABLE", " NOT DEFERRABLE");
    }
    if (settings != NULL)
        luaL_addstring(&b, settings + 5); /* "; ..." */
    luaL_pushresult(&b);
    t = (Tx *)lua_newuserdatauv(L, sizeof *t, 1); /* finished until BEGIN succeeds */
    t->state = TX_DONE;
    t->nsavepoints = 0;
    luaL_setmetatable(L, TX_MT);
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, -2, 1);
    /* sql tx */
    if (!ready(L, c))
        return 2;
    if (!open_tx(c, lua_tostring(L, -2)))
        return finish(L, c, 0);
    t->state = TX_OPEN;
    c->intx = 1;
    return 1;
}

static Tx *checktx(lua_State *L, Conn **c) {
    Tx *t = (Tx *)luaL_checkudata(L, 1, TX_MT);
    if (t->state != TX_OPEN)
        luaL_error(L, "attempt to use a finished transaction");
    lua_getiuservalue(L, 1, 1);
    *c = (Conn *)lua_touserdata(L, -1); /* kept alive by the transaction's user value */
    lua_pop(L, 1);
    if ((*c)->pg == NULL)
        luaL_error(L, "attempt to use a closed connection");
    release(*c);
    return t;
}

static int tx_commit(lua_State *L) {
    Conn *c;
    Tx *t = checktx(L, &c);
    int was_ok = PQstatus(c->pg) == CONNECTION_OK;
    t->state = TX_DONE; /* whatever happens next, this transaction is over */
    c->intx = 0;
    if (!ready(L, c))
        return 2;
    c->res = PQexec(c->pg, "COMMIT");
    /* COMMIT of an aborted transaction "succeeds" with tag ROLLBACK */
    if (PQresultStatus(c->res) == PGRES_COMMAND_OK && strcmp(PQcmdStatus(c->res), "ROLLBACK") == 0) {
        release(c);
        return pusherror(L, "25P02",
                         "transaction was rolled back: it had been aborted by an earlier error");
    }
    if (was_ok && PQstatus(c->pg) == CONNECTION_BAD) {
        release(c);
        return pusherror(L, "connection",
                         "connection lost during COMMIT: "
                         "the transaction may or may not have committed");
    }
    return finish(L, c, 0);
}

static int tx_rollback(lua_State *L) {
    Conn *c;
    Tx *t = checktx(L, &c);
    t->state = TX_DONE;
    c->intx = 0;
    return command(L, c, "ROLLBACK");
}

static int savepoint_cmd(lua_State *L, const char *verb) {
    Conn *c;
    checktx(L, &c);
    pushident(L, c, 2);
    return command(L, c, lua_pushfstring(L, "%s %s", verb, lua_tostring(L, -1)));
}

static int tx_savepoint(lua_State *L) {
    Conn *c;
    Tx *t = checktx(L, &c);
    int n;
    if (lua_isnoneornil(L, 2)) {
        lua_settop(L, 1);
        lua_pushfstring(L, "sp_%d", ++t->nsavepoints);
    }
    lua_settop(L, 2);
    n = savepoint_cmd(L, "SAVEPOINT");
    if (n == 2)
        return 2;
    lua_pushvalue(L, 2);
    return 1;
}

static int tx_rollback_to(lua_State *L) {
    return savepoint_cmd(L, "ROLLBACK TO SAVEPOINT");
}

static int tx_release(lua_State *L) {
    return savepoint_cmd(L, "RELEASE SAVEPOINT");
}

static int tx_query(lua_State *L) {
    Conn *c;
    const char *sql;
    checktx(L, &c);
    sql = checktext(L, 2);
    return run(L, c, Q_PARAMS, sql, 3, lua_gettop(L) - 2, NULL);
}

static int tx_exec_prepared(lua_State *L) {
    Conn *c;
    const char *name, *sql;
    int n = lua_gettop(L) - 2;
    checktx(L, &c);
    name = checktext(L, 2);
    lua_getiuservalue(L, 1, 1); /* the connection */
    if ((sql = statement(L, lua_gettop(L), name)) == NULL)
        return 2;
    return run(L, c, Q_PARAMS, sql, 3, n, NULL);
}

/* __close: roll back unless committed. Must not raise over the error that may be unwinding. */
static int tx_close(lua_State *L) {
    Tx *t = (Tx *)luaL_checkudata(L, 1, TX_MT);
    Conn *c;
    PGresult *r;
    if (t->state != TX_OPEN)
        return 0;
    t->state = TX_DONE;
    lua_getiuservalue(L, 1, 1);
    c = (Conn *)lua_touserdata(L, -1);
    c->intx = 0;
    if (c->pg == NULL)
        return 0; /* closing the connection ended the transaction */
    r = PQexec(c->pg, "ROLLBACK");
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        const char *msg = r ? PQresultErrorMessage(r) : PQerrorMessage(c->pg);
        fprintf(stderr, "resclean.pg: rollback at end of transaction scope failed%s: %s%s",
                PQstatus(c->pg) == CONNECTION_BAD ? " (connection lost; the server discards the "
                                                    "transaction)"
                                                  : "",
                msg, (*msg && msg[strlen(msg) - 1] == '\n') ? "" : "\n");
    }
    PQclear(r);
    return 0;
}

/* __gc of a transaction nobody closed: no I/O from a finalizer; the connection rolls it back
   before its next use. */
static int tx_gc(lua_State *L) {
    Tx *t = (Tx *)luaL_checkudata(L, 1, TX_MT);
    Conn *c;
    if (t->state != TX_OPEN)
        return 0;
    t->state = TX_DONE;
    lua_getiuservalue(L, 1, 1);
    c = (Conn *)lua_touserdata(L, -1);
    c->intx = 0;
    if (c->pg != NULL)
        c->abandoned = 1;
    return 0;
}

static int tx_tostring(lua_State *L) {
    Tx *t = (Tx *)luaL_checkudata(L, 1, TX_MT);
    lua_pushfstring(L, "%s (%s)", TX_MT, t->state == TX_OPEN ? "open" : "finished");
    return 1;
}

/* ---------------------------------------------------------------- module */

static const luaL_Reg conn_methods[] = {{"backend_pid", conn_backend_pid},
                                        {"begin", conn_begin},
                                        {"close", conn_close},
                                        {"exec", conn_exec},
                                        {"exec_prepared", conn_exec_prepared},
                                        {"info", conn_info},
                                        {"notifications", conn_notifications},
                                        {"per_transaction", conn_per_transaction},
                                        {"prepare", conn_prepare},
                                        {"query", conn_query},
                                        {"quote_ident", conn_quote_ident},
                                        {"quote_literal", conn_quote_literal},
                                        {"server_version", conn_server_version},
                                        {"socket", conn_socket},
                                        {"status", conn_status},
                                        {NULL, NULL}};

static const luaL_Reg conn_meta[] = {{"__close", conn_close},
                                     {"__gc", conn_close},
                                     {"__index", NULL},
                                     {"__tostring", conn_tostring},
                                     {NULL, NULL}};

static const luaL_Reg tx_methods[] = {{"commit", tx_commit},       {"exec_prepared", tx_exec_prepared},
                                      {"query", tx_query},         {"release", tx_release},
                                      {"rollback", tx_rollback},   {"rollback_to", tx_rollback_to},
                                      {"savepoint", tx_savepoint}, {NULL, NULL}};

static const luaL_Reg tx_meta[] = {{"__close", tx_close},
                                   {"__gc", tx_gc},
                                   {"__index", NULL},
                                   {"__tostring", tx_tostring},
                                   {NULL, NULL}};

static const luaL_Reg funcs[] = {{"connect", l_connect}, {NULL, NULL}};

static void newclass(lua_State *L, const char *name, const luaL_Reg *meta, const luaL_Reg *methods) {
    luaL_newmetatable(L, name);
    luaL_setfuncs(L, meta, 0);
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
}

int luaopen_resclean_pg(lua_State *L) {
    newclass(L, CONN_MT, conn_meta, conn_methods);
    newclass(L, TX_MT, tx_meta, tx_methods);
    luaL_newlib(L, funcs);
    lua_pushinteger(L, PQlibVersion());
    lua_setfield(L, -2, "libpq_version");
    return 1;
}
