-- luacheck: Lua 5.4 everywhere; busted's globals in spec/.
std = "lua54"
max_line_length = 120
codes = true
files["spec/"] = { std = "+busted" }
exclude_files = { "build/" }
