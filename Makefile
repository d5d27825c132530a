# resclean: build, test, demo, bench. GNU make; pkg-config for every library.
#
#   make            build ./resclean
#   make test       install what is missing, build, lint, run every spec on a
#                   throwaway PostgreSQL + Ceph RGW, stop them
#   make asan test  the same with an AddressSanitizer + UBSan build
#   make check      build, run only the specs that need no stack (UNIT_SPECS: no PostgreSQL,
#                   no RGW, no apt), in seconds; make asan check the same with the sanitizers;
#                   make unit is the same as make check
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

# Releases. VERSION holds the release (CHANGELOG.md's top entry and debian/changelog's upstream
# version agree with it: spec/release_spec.lua). A build from a git tree also says which commit,
# unless HEAD is the tag v$(VERSION) and clean: 0.2.0+g1a2b3c4d5e (.dirty with local changes).
# A copy of the tree made by `make deb` has no .git: it carries that string in .version.
VERSION_FILE := $(shell cat VERSION 2>/dev/null)
ifeq ($(shell printf '%s' '$(VERSION_FILE)' | grep -xE '[0-9]+\.[0-9]+\.[0-9]+'),)
$(error VERSION must hold the release as MAJOR.MINOR.PATCH (e.g. 0.2.0), found '$(VERSION_FILE)')
endif
RESCLEAN_VERSION := $(shell \
  if [ -f .version ]; then cat .version; \
  elif [ "$$(git rev-parse --show-toplevel 2>/dev/null)" = "$$(pwd -P)" ]; then \
    dirty=$$(git diff --quiet HEAD -- 2>/dev/null || echo .dirty); \
    if [ -z "$$dirty" ] && git describe --exact-match --tags --match 'v$(VERSION_FILE)' HEAD >/dev/null 2>&1; \
    then echo '$(VERSION_FILE)'; \
    else echo "$(VERSION_FILE)+g$$(git rev-parse --short=10 HEAD)$$dirty"; fi; \
  else echo '$(VERSION_FILE)'; fi)
# Only main.c and sys.c print it: they are rebuilt when it changes (build/version), nothing else.
VERSION_DEF   = -DRESCLEAN_VERSION='"$(RESCLEAN_VERSION)"'
VERSION_STAMP = build/version

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
NET_SRC  = src/net.c src/luax.c src/pg.c src/s3.c src/s3_delete.c src/s3req.c src/s3xml.c src/http.c src/buf.c \
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
            groff-base man-db systemd pgbouncer prometheus-pushgateway jq
DEB_BENCH = hyperfine clang libclang-rt-14-dev clang-format universal-ctags
# To build and check the Debian package and the OCI image (make deb, make image, their specs), and
# to read examples/compose.yaml (python3-yaml).
DEB_PACKAGE = debhelper lintian dpkg-dev fakeroot podman buildah mmdebstrap runc uidmap python3-yaml

.PHONY: FORCE all asan deps test check unit lint specs demo bench soak install uninstall deb image clean fuzz format format-check
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

$(OBJDIR)/main.o $(OBJDIR)/sys.o: $(VERSION_STAMP)
$(OBJDIR)/main.o $(OBJDIR)/sys.o: ALL_CFLAGS += $(VERSION_DEF)

# Rewritten only when the version string changes, so that main.o and sys.o follow it.
$(VERSION_STAMP): FORCE
	@mkdir -p $(dir $@)
	@echo '$(RESCLEAN_VERSION)' | cmp -s - $@ || echo '$(RESCLEAN_VERSION)' >$@

FORCE:

$(OBJDIR)/pic/%.o: src/%.c $(HDR) Makefile
	@mkdir -p $(OBJDIR)/pic
	@echo "  CC  $< (pic)"
	@$(CC) $(ALL_CFLAGS) -fPIC -c -o $@ $<

# Installs only what is missing; says what it installs.
deps:
	@missing=""; for p in $(DEB_BUILD) $(DEB_TEST) $(DEB_BENCH) $(DEB_PACKAGE); do \
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

# Every spec run checks the log events the code emits against lib/resclean/events.lua: log.lua
# notes the unlisted ones in this file, the runner fails the spec that caused them.
EVENT_CHECK = RESCLEAN_EVENT_CHECK=$(CURDIR)/build/event-check

# The stack is started and stopped by with-stack.sh, also on failure.
specs: $(BIN) $(NET_SO)
	@mkdir -p build
	@$(EVENT_CHECK) bash spec/support/with-stack.sh ./$(BIN) run spec/run.lua $(SPECS)

# The specs that pass with no stack: pure Lua (fakes for the database and the store) and
# the host's C primitives. Each was run alone with no stack variables set; a spec added
# here must too. They run without the stack's variables, so one that needs it fails here.
UNIT_SPECS = spec/alerts_kubernetes_spec.lua spec/harness_spec.lua spec/cli_spec.lua spec/daemon_unit_spec.lua \
             spec/errors_spec.lua spec/events_doc_spec.lua spec/examples_spec.lua \
             spec/fuzz_regressions_spec.lua spec/log_spec.lua spec/notify_unit_spec.lua \
             spec/policy_spec.lua spec/pool_unit_spec.lua spec/reconcile_unit_spec.lua \
             spec/release_spec.lua spec/schedule_spec.lua spec/shape_spec.lua spec/sigv4_spec.lua \
             spec/standby_errors_spec.lua spec/store_contract_spec.lua spec/sweep_unit_spec.lua \
             spec/sys_spec.lua
STACK_VARS = DATABASE_URL DATABASE_URL_TLS RESCLEAN_STACK_DIR RESCLEAN_THROWAWAY_STACK \
             PGHOST PGPORT PGUSER PGPASSWORD PGDATABASE AWS_ENDPOINT_URL_S3 \
             AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
check unit: $(BIN) $(NET_SO)
	@mkdir -p build
	@env $(addprefix -u ,$(STACK_VARS)) $(EVENT_CHECK) ./$(BIN) run spec/run.lua $(UNIT_SPECS)

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
# only check, sweep, cancel, status and reconcile), the examples and two manuals, whose paths
# follow PREFIX (@BINDIR@, @LIBDIR@, @SHAREDIR@, @VERSION@ and the examples'
# /usr/local/bin/resclean replaced). The folders install had to create are listed in
# SHAREDIR/installed-dirs: uninstall removes them again once empty, and no others.
#
# Upgrades: SHAREDIR/MANIFEST lists the files this install put (its first line names the
# version). An install over an earlier one removes what the earlier MANIFEST lists and this one
# does not install, and, for installs older than manifests (0.1.0), the files of LEGACY_FILES;
# uninstall removes the union of all three. Only paths of this install's own (under SHAREDIR
# and LIBDIR, the binary and the two manuals) are ever removed, whatever a MANIFEST says.
OWN_DIRS    = $(LIBDIR) $(SHAREDIR) $(SHAREDIR)/lib $(SHAREDIR)/lib/resclean $(SHAREDIR)/scripts \
              $(SHAREDIR)/examples
COMMON_DIRS = $(PREFIX) $(BINDIR) $(PREFIX)/lib $(PREFIX)/share $(MANDIR) $(MANDIR)/man1 $(MANDIR)/man7
INSTALLED   = $(BINDIR)/resclean $(LIBDIR)/resclean_net.so \
              $(addprefix $(SHAREDIR)/lib/resclean/,$(notdir $(wildcard lib/resclean/*.lua))) \
              $(addprefix $(SHAREDIR)/scripts/,$(notdir $(wildcard scripts/*.lua))) \
              $(addprefix $(SHAREDIR)/examples/,$(notdir $(wildcard examples/*))) \
              $(MANDIR)/man1/resclean.1 $(MANDIR)/man7/resclean-lua.7
# Every file under SHAREDIR that a version before manifests installed (from git history).
LEGACY_FILES = scripts/bench.lua scripts/demo.lua scripts/check.lua lib/resclean/check.lua \
              lib/resclean/pool.lua examples/README-operations.md examples/cancel-requests.sql
MANIFEST    = $(SHAREDIR)/MANIFEST
SUBST = sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@LIBDIR@|$(LIBDIR)|g' -e 's|@SHAREDIR@|$(SHAREDIR)|g' \
            -e 's|@VERSION@|$(VERSION_FILE)|g' -e 's|/usr/local/bin/resclean|$(BINDIR)/resclean|g'
# Reads paths (without DESTDIR) on stdin and removes those that exist, if they are this install's.
REMOVE_LISTED = while IFS= read -r f; do \
	  case $$f in ''|'\#'*) continue ;; *[!A-Za-z0-9_./+-]*|*/../*|*/..) echo "  SKIP $$f: not a plain path" >&2; continue ;; \
	    $(SHAREDIR)/*|$(LIBDIR)/*|$(BINDIR)/resclean|$(MANDIR)/man1/resclean.1|$(MANDIR)/man7/resclean-lua.7) ;; \
	    *) echo "  SKIP $$f: not under $(SHAREDIR) or $(LIBDIR), not resclean's: left alone" >&2; continue ;; esac; \
	  if [ -e "$(DESTDIR)$$f" ] || [ -L "$(DESTDIR)$$f" ]; then rm -f "$(DESTDIR)$$f" && { [ -z "$$why" ] || echo "  RM  $(DESTDIR)$$f$$why"; }; fi; \
	done

# The host finds its files from /proc/self/exe; PREFIX is only its fallback. The tree's build
# keeps the default one (src/resclean.h), so `make install PREFIX=...` never changes ./resclean:
# install compiles main.c once more, with its PREFIX, into build/install.
INST_OBJ = build/install

install: $(BIN) $(NET_SO)
	@mkdir -p $(INST_OBJ)
	@echo "  CC  src/main.c (PREFIX=$(PREFIX))"
	@$(CC) $(ALL_CFLAGS) $(VERSION_DEF) -DRESCLEAN_SHAREDIR='"$(SHAREDIR)"' -DRESCLEAN_LIBDIR='"$(LIBDIR)"' \
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
	@why=" (an earlier version's, not installed by $(RESCLEAN_VERSION))"; \
	{ cat "$(DESTDIR)$(MANIFEST)" 2>/dev/null; printf '%s\n' $(addprefix $(SHAREDIR)/,$(LEGACY_FILES)); } \
	  | grep -vxF "$$(printf '%s\n' $(INSTALLED))" | sort -u | $(REMOVE_LISTED)
	@{ echo "# resclean $(RESCLEAN_VERSION): the files make install put under $(PREFIX)"; \
	  printf '%s\n' $(INSTALLED); } >"$(DESTDIR)$(MANIFEST)" && chmod 644 "$(DESTDIR)$(MANIFEST)"
	@echo "  MANIFEST $(DESTDIR)$(MANIFEST): $(words $(INSTALLED)) files"

uninstall:
	@echo "  RM  the files of $(DESTDIR)$(MANIFEST), of this version and of pre-manifest versions"
	@why=; { cat "$(DESTDIR)$(MANIFEST)" 2>/dev/null; \
	  printf '%s\n' $(INSTALLED) $(addprefix $(SHAREDIR)/,$(LEGACY_FILES)); } | sort -u | $(REMOVE_LISTED)
	@rm -f "$(DESTDIR)$(MANIFEST)"
	@list="$(DESTDIR)$(SHAREDIR)/installed-dirs"; created=$$(cat "$$list" 2>/dev/null); rm -f "$$list"; \
	for d in $$(printf '%s\n' $(OWN_DIRS) $$created | sort -u -r); do \
	  if [ -d "$(DESTDIR)$$d" ] && rmdir "$(DESTDIR)$$d" 2>/dev/null; then echo "rmdir $(DESTDIR)$$d"; fi; \
	done

# The Debian package (debian/): dpkg-buildpackage in a copy of the tree (build/deb/src), whose
# `make clean` never touches this tree's build, with the version string of this tree in .version;
# the .deb lands in build/deb/ and is rebuilt only when a file it is made from changes. lintian
# must report no error (its report: build/deb/*.lintian; LINTIAN= skips it). debian/changelog's
# top entry must be VERSION-N.
DEB_VERSION := $(shell awk 'NR == 1 { gsub(/[()]/, "", $$2); print $$2 }' debian/changelog 2>/dev/null)
DEB_ARCH    := $(shell dpkg --print-architecture 2>/dev/null)
DEB_FILE     = build/deb/resclean_$(DEB_VERSION)_$(DEB_ARCH).deb
DEB_TREE     = build/deb/src/resclean-$(VERSION_FILE)
DEB_SOURCES  = Makefile VERSION CHANGELOG.md README.md $(VERSION_STAMP) $(wildcard debian/* debian/source/* \
               src/* lib/resclean/*.lua scripts/*.lua examples/*)
LINTIAN     ?= lintian

deb: $(DEB_FILE)

$(DEB_FILE): $(DEB_SOURCES)
	@command -v dpkg-buildpackage >/dev/null && command -v dh >/dev/null || \
	  { echo "deb: dpkg-buildpackage or debhelper is not installed (make deps installs them)" >&2; exit 2; }
	@[ "$(DEB_VERSION:-$(lastword $(subst -, ,$(DEB_VERSION)))=)" = "$(VERSION_FILE)" ] || \
	  { echo "deb: debian/changelog's top entry is $(DEB_VERSION) but VERSION says $(VERSION_FILE):" \
	    "add an entry $(VERSION_FILE)-1 at the top of debian/changelog (dch -v $(VERSION_FILE)-1)" >&2; exit 2; }
	@rm -rf build/deb/src && mkdir -p $(DEB_TREE)
	@tar -c --anchored --exclude=./build --exclude=./.git --exclude=./spec --exclude=./resclean \
	  --exclude=./resclean_net.so --exclude=./.version . | tar -x -C $(DEB_TREE)
	@echo '$(RESCLEAN_VERSION)' >$(DEB_TREE)/.version
	@echo "  DEB $@ (resclean $(RESCLEAN_VERSION); log: build/deb/build.log)"
	@cd $(DEB_TREE) && dpkg-buildpackage -b -us -uc -jauto >../../build.log 2>&1 || \
	  { tail -n 30 ../../build.log >&2; echo "deb: dpkg-buildpackage failed: build/deb/build.log" >&2; exit 1; }
	@mv build/deb/src/*.deb build/deb/ && rm -rf build/deb/src
	@rm -f $(@:.deb=.lintian); if [ -n "$(LINTIAN)" ]; then echo "  LINTIAN $@"; \
	  $(LINTIAN) --fail-on error --tag-display-limit 0 $@ >$(@:.deb=.lintian) 2>&1; rc=$$?; \
	  grep -v 'running with root privileges' $(@:.deb=.lintian); [ $$rc = 0 ] || { rm -f $@; exit 1; }; fi

# The OCI image (Containerfile): the .deb above installed on Debian, non-root, ENTRYPOINT resclean.
# No registry here: the base localhost/debian:bookworm is made once with mmdebstrap and podman
# import, and kept in podman's storage (IMAGE_BASE=debian:bookworm-slim where a registry is
# reachable). The image carries the .deb's SHA-256 as a label and is not rebuilt while an image
# of that tag has it (make test and make asan test build it once).
PODMAN       ?= podman --runtime runc --cgroup-manager=cgroupfs
PODMAN_LIMITS = --ulimit nofile=1024:1024 --ulimit nproc=1024:1024
IMAGE        ?= localhost/resclean
IMAGE_BASE   ?= localhost/debian:bookworm

image: $(DEB_FILE)
	@command -v podman >/dev/null || { echo "image: podman is not installed (make deps installs it)" >&2; exit 2; }
	@if [ "$(IMAGE_BASE)" = localhost/debian:bookworm ] && ! $(PODMAN) image exists $(IMAGE_BASE); then \
	  echo "  BASE $(IMAGE_BASE) (mmdebstrap, once)"; mkdir -p build/image && \
	  mmdebstrap --quiet --variant=minbase --include=ca-certificates bookworm build/image/base.tar && \
	  $(PODMAN) import build/image/base.tar $(IMAGE_BASE) >/dev/null && rm -f build/image/base.tar || exit 1; fi
	@sha=$$(sha256sum $(DEB_FILE) | cut -c1-64); \
	if [ "$$($(PODMAN) image inspect --format '{{ index .Labels "org.resclean.deb-sha256" }}' \
	    $(IMAGE):$(VERSION_FILE) 2>/dev/null)" = "$$sha" ]; then \
	  echo "  IMAGE $(IMAGE):$(VERSION_FILE) is built from $(DEB_FILE) already"; exit 0; fi; \
	rm -rf build/image/ctx && mkdir -p build/image/ctx && cp $(DEB_FILE) Containerfile build/image/ctx/ && \
	echo "  IMAGE $(IMAGE):$(VERSION_FILE) from $(DEB_FILE) on $(IMAGE_BASE) (log: build/image/build.log)" && \
	$(PODMAN) build --network=host $(PODMAN_LIMITS) --build-arg BASE=$(IMAGE_BASE) \
	  --label org.resclean.deb-sha256=$$sha --label org.opencontainers.image.version=$(RESCLEAN_VERSION) \
	  -t $(IMAGE):$(VERSION_FILE) -t $(IMAGE):latest build/image/ctx >build/image/build.log 2>&1 || \
	  { tail -n 30 build/image/build.log >&2; echo "image: podman build failed: build/image/build.log" >&2; exit 1; }

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
