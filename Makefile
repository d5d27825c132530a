# resclean: build, test, demo, bench. GNU make; pkg-config for every library.
#
#   make            build ./resclean
#   make test       install what is missing, build, lint, run every spec on a
#                   throwaway PostgreSQL + Ceph RGW, stop them
#   make asan test  the same with an AddressSanitizer + UBSan build
#   make demo       sweep a realistic mix on a throwaway stack
#   make bench      measure the sweep against the storage floor

PREFIX  ?= /usr/local
DESTDIR ?=
SHAREDIR = $(PREFIX)/share/resclean

PKGS    = lua5.4 lua5.4-cjson libpq libcurl openssl expat
CC      ?= cc
WARN    = -std=c11 -Wall -Wextra $(if $(filter true,$(CI)),-Werror)
CFLAGS  ?= -O2 -g
ALL_CFLAGS = $(WARN) $(CFLAGS) $(shell pkg-config --cflags $(PKGS)) \
             -DRESCLEAN_SHAREDIR='"$(SHAREDIR)"'
LIBS    = $(shell pkg-config --libs $(PKGS))

SRC     = $(wildcard src/*.c)
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
OBJ     = $(SRC:src/%.c=$(OBJDIR)/%.o)

# Debian packages: to build, to test (servers, busted, luacheck), to measure.
DEB_BUILD = gcc make pkg-config lua5.4 liblua5.4-dev lua-cjson lua-cjson-dev \
            libpq-dev libcurl4-openssl-dev libssl-dev libexpat1-dev
DEB_TEST  = lua-busted lua-check postgresql postgresql-client curl python3 \
            radosgw ceph-mon ceph-osd ceph-common prometheus faketime procps openssl
DEB_BENCH = hyperfine clang libclang-rt-14-dev

.PHONY: all asan deps test lint specs demo bench install clean fuzz
all: $(BIN)

asan: $(BIN)

$(BIN): $(OBJ)
	@mkdir -p $(dir $@)
	@echo "  LD  $@"
	@$(CC) $(LDFLAGS) -o $@ $(OBJ) $(LIBS)

$(OBJDIR)/%.o: src/%.c $(HDR) Makefile
	@mkdir -p $(OBJDIR)
	@echo "  CC  $<"
	@$(CC) $(ALL_CFLAGS) -c -o $@ $<

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

lint:
	@luacheck -q lib scripts spec examples

# The stack is started and stopped by with-stack.sh, also on failure.
specs: $(BIN)
	@bash spec/support/with-stack.sh ./$(BIN) run spec/run.lua $(SPECS)

test: deps
	@$(MAKE) --no-print-directory $(if $(filter asan,$(MAKECMDGOALS)),asan) lint specs

demo: deps $(BIN)
	@bash spec/support/with-stack.sh ./$(BIN) run scripts/demo.lua

bench: deps $(BIN)
	@bash spec/support/with-stack.sh ./$(BIN) run scripts/bench.lua $(BENCH_ARGS)

install: $(BIN)
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(SHAREDIR)/lib/resclean \
	  $(DESTDIR)$(SHAREDIR)/scripts $(DESTDIR)$(PREFIX)/share/man/man1
	install -m 755 $(BIN) $(DESTDIR)$(PREFIX)/bin/resclean
	install -m 644 lib/resclean/*.lua $(DESTDIR)$(SHAREDIR)/lib/resclean/
	install -m 644 scripts/*.lua $(DESTDIR)$(SHAREDIR)/scripts/
	install -d $(DESTDIR)$(SHAREDIR)/examples
	install -m 644 examples/* $(DESTDIR)$(SHAREDIR)/examples/
	install -m 644 src/resclean.1 $(DESTDIR)$(PREFIX)/share/man/man1/resclean.1

# libFuzzer harnesses (clang) for the S3 reply parsing and SigV4 encoding; a few minutes each.
fuzz:
	@$(MAKE) --no-print-directory -C spec/fuzz run

clean:
	rm -rf build resclean
