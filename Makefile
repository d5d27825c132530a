# resclean: build, test, demo, bench. GNU make; pkg-config for every library.
#
#   make            build ./resclean
#   make test       install what is missing, build, lint, run every spec on a
#                   throwaway PostgreSQL + Ceph RGW, stop them
#   make asan test  the same with an AddressSanitizer + UBSan build
#   make demo       sweep a realistic mix on a throwaway stack
#   make bench      measure the sweep against the storage floor (on loopback, and remote:
#                   through delay proxies, S3 +10 ms and PostgreSQL +1 ms a round trip)
#   make soak       the long-running sweep for 1,000 cycles: RSS, fds, sessions (~20 min)
#   make install    PREFIX=/usr/local (DESTDIR= for packaging); make uninstall the same

PREFIX  ?= /usr/local
DESTDIR ?=
BINDIR   = $(PREFIX)/bin
SHAREDIR = $(PREFIX)/share/resclean
MANDIR   = $(PREFIX)/share/man

LIBDIR   = $(PREFIX)/lib/resclean

# The host links Lua and cjson only; the network primitives (pg, s3, sigv4) are
# resclean_net.so next to it, loaded on the first require: an empty script
# starts without loading libcurl, libpq, OpenSSL and their thirty dependencies.
HOST_PKGS = lua5.4 lua5.4-cjson
NET_PKGS  = lua5.4 libpq libcurl openssl expat
CC      ?= cc
WARN    = -std=c11 -Wall -Wextra $(if $(filter true,$(CI)),-Werror)
CFLAGS  ?= -O2 -g
ALL_CFLAGS = $(WARN) $(CFLAGS) $(shell pkg-config --cflags $(HOST_PKGS) $(NET_PKGS))
HOST_LIBS = $(shell pkg-config --libs $(HOST_PKGS)) -pthread
NET_LIBS  = $(shell pkg-config --libs $(NET_PKGS))

HOST_SRC = src/main.c src/sys.c src/httpd.c
NET_SRC  = src/net.c src/luax.c src/pg.c src/s3.c src/s3req.c src/s3xml.c src/http.c src/buf.c \
           src/sigv4.c src/sigv4_lua.c src/push.c
HDR     = $(wildcard src/*.h)

# `make asan test` builds and tests the sanitizer variant.
ifneq ($(filter asan,$(MAKECMDGOALS)),)
OBJDIR  = build/asan
BIN     = build/asan/resclean
ALL_CFLAGS += -O1 -fsanitize=address,undefined -fno-omit-frame-pointer \
              -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
export ASAN_OPTIONS = detect_leaks=1:abort_on_error=0:strict_string_checks=1
export UBSAN_OPTIONS = print_stacktrace=1:halt_on_error=1
else
OBJDIR  = build/obj
BIN     = resclean
endif
HOST_OBJ = $(HOST_SRC:src/%.c=$(OBJDIR)/%.o)
NET_OBJ  = $(NET_SRC:src/%.c=$(OBJDIR)/pic/%.o)
NET_SO   = $(dir $(BIN))resclean_net.so

# Debian packages: to build, to test (servers, busted, luacheck), to measure.
DEB_BUILD = gcc make pkg-config lua5.4 liblua5.4-dev lua-cjson lua-cjson-dev lua-argparse \
            libpq-dev libcurl4-openssl-dev libssl-dev libexpat1-dev
DEB_TEST  = lua-busted lua-check postgresql postgresql-client curl python3 \
            radosgw ceph-mon ceph-osd ceph-common prometheus faketime procps openssl \
            groff-base man-db systemd prometheus-pushgateway jq
DEB_BENCH = hyperfine clang libclang-rt-14-dev clang-format universal-ctags

.PHONY: all asan deps test lint specs demo bench soak install uninstall clean fuzz format format-check
all: $(BIN) $(NET_SO)

asan: $(BIN) $(NET_SO)

$(BIN): $(HOST_OBJ)
	@mkdir -p $(dir $@)
	@echo "  LD  $@"
	@$(CC) $(LDFLAGS) -o $@ $(HOST_OBJ) $(HOST_LIBS)

$(NET_SO): $(NET_OBJ)
	@mkdir -p $(dir $@)
	@echo "  LD  $@"
	@$(CC) $(LDFLAGS) -shared -o $@ $(NET_OBJ) $(NET_LIBS)

$(OBJDIR)/%.o: src/%.c $(HDR) Makefile
	@mkdir -p $(OBJDIR)
	@echo "  CC  $<"
	@$(CC) $(ALL_CFLAGS) -c -o $@ $<

$(OBJDIR)/pic/%.o: src/%.c $(HDR) Makefile
	@mkdir -p $(OBJDIR)/pic
	@echo "  CC  $< (pic)"
	@$(CC) $(ALL_CFLAGS) -fPIC -c -o $@ $<

# Installs only what is missing; says what it installs.
deps:
	@missing=""; for p in $(DEB_BUILD) $(DEB_TEST) $(DEB_BENCH); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' \
	    || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "deps: installing$$missing"; \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $$missing; \
	else echo "deps: all installed"; fi

# luacheck on the Lua; clang-format on the C (src/.clang-format), skipped with the reason where
# clang-format is missing (make deps installs it).
lint:
	@luacheck -q lib scripts spec examples
	@if command -v clang-format >/dev/null; then clang-format --dry-run --Werror src/*.[ch] && echo "lint: src/ follows src/.clang-format"; \
	else echo "lint: clang-format not installed: C style check skipped (make deps installs it)"; fi

# The stack is started and stopped by with-stack.sh, also on failure.
specs: $(BIN) $(NET_SO)
	@bash spec/support/with-stack.sh ./$(BIN) run spec/run.lua $(SPECS)

test: deps
	@$(MAKE) --no-print-directory $(if $(filter asan,$(MAKECMDGOALS)),asan) lint specs

demo: deps $(BIN) $(NET_SO)
	@bash spec/support/with-stack.sh ./$(BIN) run spec/demo/demo.lua

# The bench's remote profile puts this between resclean and the servers.
DELAY_PROXY = build/delay_proxy
$(DELAY_PROXY): spec/support/delay_proxy.c Makefile
	@mkdir -p $(dir $@)
	@echo "  CC  $<"
	@$(CC) $(WARN) -O2 -o $@ $<

bench: deps $(BIN) $(NET_SO) $(DELAY_PROXY)
	@bash spec/support/with-stack.sh ./$(BIN) run spec/bench/bench.lua $(BENCH_ARGS)
	@bash spec/support/with-stack.sh ./$(BIN) run spec/bench/notify_bench.lua $(NOTIFY_BENCH_ARGS)

soak: deps $(BIN) $(NET_SO)
	@bash spec/support/with-stack.sh ./$(BIN) run spec/bench/soak.lua $(SOAK_ARGS)

# Installed: the binary, resclean_net.so, the Lua library, the operator scripts (scripts/ holds
# only check, sweep, cancel, status and reconcile), the examples and two manuals, whose paths follow
# PREFIX (@BINDIR@, @LIBDIR@, @SHAREDIR@ and the examples' /usr/local/bin/resclean replaced).
# The folders install had to create are listed in SHAREDIR/installed-dirs: uninstall removes
# them again once empty, and no others.
OWN_DIRS    = $(LIBDIR) $(SHAREDIR) $(SHAREDIR)/lib $(SHAREDIR)/lib/resclean $(SHAREDIR)/scripts \
              $(SHAREDIR)/examples
COMMON_DIRS = $(PREFIX) $(BINDIR) $(PREFIX)/lib $(PREFIX)/share $(MANDIR) $(MANDIR)/man1 $(MANDIR)/man7
INSTALLED   = $(BINDIR)/resclean $(LIBDIR)/resclean_net.so \
              $(addprefix $(SHAREDIR)/lib/resclean/,$(notdir $(wildcard lib/resclean/*.lua))) \
              $(addprefix $(SHAREDIR)/scripts/,$(notdir $(wildcard scripts/*.lua))) \
              $(addprefix $(SHAREDIR)/examples/,$(notdir $(wildcard examples/*))) \
              $(MANDIR)/man1/resclean.1 $(MANDIR)/man7/resclean-lua.7
SUBST = sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@LIBDIR@|$(LIBDIR)|g' -e 's|@SHAREDIR@|$(SHAREDIR)|g' \
            -e 's|/usr/local/bin/resclean|$(BINDIR)/resclean|g'

# The host finds its files from /proc/self/exe; PREFIX is only its fallback. The tree's build
# keeps the default one (src/resclean.h), so `make install PREFIX=...` never changes ./resclean:
# install compiles main.c once more, with its PREFIX, into build/install.
INST_OBJ = build/install

install: $(BIN) $(NET_SO)
	@mkdir -p $(INST_OBJ)
	@echo "  CC  src/main.c (PREFIX=$(PREFIX))"
	@$(CC) $(ALL_CFLAGS) -DRESCLEAN_SHAREDIR='"$(SHAREDIR)"' -DRESCLEAN_LIBDIR='"$(LIBDIR)"' \
	  -c -o $(INST_OBJ)/main.o src/main.c
	@$(CC) $(LDFLAGS) -o $(INST_OBJ)/resclean $(INST_OBJ)/main.o $(filter-out %/main.o,$(HOST_OBJ)) $(HOST_LIBS)
	@new=; for d in $(COMMON_DIRS) $(OWN_DIRS); do [ -d "$(DESTDIR)$$d" ] || new="$$new $$d"; done; \
	install -d $(addprefix $(DESTDIR),$(COMMON_DIRS) $(OWN_DIRS)) && \
	for d in $$new; do echo "$$d"; done >>"$(DESTDIR)$(SHAREDIR)/installed-dirs"
	install -m 755 $(INST_OBJ)/resclean $(DESTDIR)$(BINDIR)/resclean
	install -m 644 $(NET_SO) $(DESTDIR)$(LIBDIR)/resclean_net.so
	install -m 644 lib/resclean/*.lua $(DESTDIR)$(SHAREDIR)/lib/resclean/
	install -m 644 scripts/*.lua $(DESTDIR)$(SHAREDIR)/scripts/
	@for f in examples/* src/resclean.1 src/resclean-lua.7; do \
	  case $$f in *.1) to=$(MANDIR)/man1 ;; *.7) to=$(MANDIR)/man7 ;; *) to=$(SHAREDIR)/examples ;; esac; \
	  echo "  SED $$f -> $(DESTDIR)$$to/"; \
	  $(SUBST) "$$f" >"$(DESTDIR)$$to/$${f##*/}" && chmod 644 "$(DESTDIR)$$to/$${f##*/}" || exit 1; done

uninstall:
	@echo "  RM  $(words $(INSTALLED)) files under $(DESTDIR)$(PREFIX)"
	@rm -f $(addprefix $(DESTDIR),$(INSTALLED))
	@list="$(DESTDIR)$(SHAREDIR)/installed-dirs"; created=$$(cat "$$list" 2>/dev/null); rm -f "$$list"; \
	for d in $$(printf '%s\n' $(OWN_DIRS) $$created | sort -u -r); do \
	  if [ -d "$(DESTDIR)$$d" ] && rmdir "$(DESTDIR)$$d" 2>/dev/null; then echo "rmdir $(DESTDIR)$$d"; fi; \
	done

# One house style for C (src/.clang-format): format rewrites src/, format-check fails on a difference.
format:
	@clang-format -i src/*.[ch]

format-check:
	@clang-format --dry-run --Werror src/*.[ch]

# libFuzzer harnesses (clang) for the S3 reply parsing and SigV4 encoding; a few minutes each.
fuzz:
	@$(MAKE) --no-print-directory -C spec/fuzz run

clean:
	rm -rf build resclean resclean_net.so
