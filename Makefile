# snapfaas: `make demo` and `make test` do all set-up on a fresh Debian 12/13 machine (run as root).
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: deps sysdeps pydeps native-init bench-runtime test demo serve bench clean

deps: sysdeps pydeps

sysdeps:
	@bash scripts/install-system-deps.sh

pydeps: $(STAMP) native-init

# The sandbox's pid 1 (src/snapfaas/runtime/init.c): freestanding C, no libc, a few pages of code
# and its stack; the daemon falls back to the Python init (runtime/init.py), saying so, where it
# was not built. gcc is a system dependency anyway (CRIU's build).
INIT_SRC := src/snapfaas/runtime/init.c
INIT_BIN := src/snapfaas/runtime/snapfaas-init
INIT_CFLAGS := -Os -static -nostdlib -ffreestanding -fno-builtin -fno-stack-protector \
	-fno-tree-loop-distribute-patterns -fno-asynchronous-unwind-tables -fno-pie -no-pie -Wall -Wextra -Werror \
	-Wl,--build-id=none -Wl,-z,noexecstack -Wl,-z,noseparate-code

native-init: $(INIT_BIN)

$(INIT_BIN): $(INIT_SRC) Makefile
	gcc $(INIT_CFLAGS) -o $@.tmp $(INIT_SRC)
	mv -f $@.tmp $@

# scripts/install-pydeps.sh: pip install -e '.[test]' --no-compile (Python compiles the modules a
# run imports on first use; compiling every installed file up front, botocore, awscli, moto...,
# cost ~40 s CPU), from a wheelhouse in the user's cache once one exists for this pyproject.toml
# (a fresh venv: 63 -> 37 s, no index pages fetched, nothing resolved against the indexes)
$(STAMP): pyproject.toml
	@bash scripts/make-venv.sh $(VENV)
	@bash scripts/install-pydeps.sh $(VENV)
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

# Bytecode for the suite: it starts hundreds of Python processes (pytest, every daemon, the CLIs),
# each importing boto3/botocore/aiohttp/sqlalchemy. With PYTHONDONTWRITEBYTECODE in the caller's
# environment (CI sets it) each of them compiled every module it imported from source (~3 s of
# CPU per daemon start): the suite runs with it cleared, so the first import writes __pycache__
# (ignored by git) and later processes read it. Not PYTHONPYCACHEPREFIX: snapfaas compiles the
# bytecode that deploy zips and the sandbox runtime ship, which must land next to the sources.
test: deps
	PYTHONDONTWRITEBYTECODE= $(PY) -m pytest $(PYTEST_ARGS)

bench-runtime:
	@bash scripts/make-bench-runtime.sh .bench-runtime/py311

demo: deps bench-runtime
	$(VENV)/bin/snapfaas demo

serve: deps
	$(VENV)/bin/snapfaas serve

bench: deps bench-runtime
	$(VENV)/bin/snapfaas bench

clean:
	rm -rf $(VENV) .bench-runtime .snapfaas .pytest_cache $(INIT_BIN)
