# umhblob: build the kernel, the helper and the module, and test them in QEMU.
#
#   make demo    boot a VM, load the module, show requests, unload it
#   make test    set up, check, unit tests, then the VM tests
#
# Every variable below can be set on the command line or in the environment.

# Kernel version to build and boot: one of $(KERNELS).
KERNEL ?= 6.1
KERNELS := 5.10 6.1 6.12
# Kernel variant: empty for the test kernel, debug (KASAN, lockdep,
# kmemleak; see kernel-config/debug.config) or gdb (debug info and the
# kernel's gdb scripts).
VARIANT ?=
# Kernel build directory for the module. Empty means build $(KERNEL) into
# the cache; set it to use your own build (it needs CONFIG_USERMODE_DRIVER=y).
KDIR ?=
# Build outputs inside the clone: the helper ELF and the recorded KDIR.
OUT ?= $(CURDIR)/build
# Go command; GOFLAGS and friends pass through the environment.
GO ?= go
# Set V=1 for the full kernel build commands.
V ?= 0
# Seconds that `make fuzz` runs each fuzz target for.
FUZZ_TIME ?= 30

HELPER := $(OUT)/umhblob_helper
MODULE := kmod/umhblob.ko
KDIR_FILE := $(OUT)/kdir-$(KERNEL)$(if $(VARIANT),-$(VARIANT))
# bzImage the VM boots. Empty means arch/x86/boot/bzImage in the kernel
# build directory.
KERNEL_IMAGE ?=
BZIMAGE = "$(if $(KERNEL_IMAGE),$(abspath $(KERNEL_IMAGE)),$$(cat $(KDIR_FILE))/arch/x86/boot/bzImage)"

# Debian packages that `make demo` and `make test` install when missing.
# libclang-rt-14-dev holds libFuzzer and the sanitizer runtimes; it is
# only a Recommends of clang. llvm gives llvm-symbolizer for traces.
DEB_PACKAGES := bc bison build-essential clang cpio dwarves flex gdb kmod \
	libclang-rt-14-dev libelf-dev libssl-dev llvm patch perl \
	qemu-system-x86 xz-utils

.PHONY: all deps kernel helper module check unit vmtest test test-all \
	test-debug demo vm gdb fuzz clean

all: module

# Install missing Debian packages (needs root, or sudo).
deps:
	@missing=; for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | \
			grep -q '^install ok installed$$' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "deps: installing$$missing"; \
		sudo=; [ "$$(id -u)" = 0 ] || sudo=sudo; \
		$$sudo apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq \
			--no-install-recommends $$missing; \
	fi
	@$(GO) mod download

# Build the kernel (or find it in the cache) and record its directory.
kernel: | $(OUT)
ifeq ($(KDIR),)
	$(GO) run ./harness/cmd/kernel -version $(KERNEL) -variant "$(VARIANT)" \
		> $(KDIR_FILE).tmp
	@mv $(KDIR_FILE).tmp $(KDIR_FILE)
else
	$(GO) run ./harness/cmd/kernel -check "$(abspath $(KDIR))"
	@echo "$(abspath $(KDIR))" > $(KDIR_FILE)
endif

# The helper is rebuilt on every run, but replaced only when its bytes
# change, so an unchanged helper never relinks the module.
helper: | $(OUT)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' \
		-o $(HELPER).tmp ./helper
	@if cmp -s $(HELPER).tmp $(HELPER); then rm $(HELPER).tmp; \
		else mv $(HELPER).tmp $(HELPER); fi

module: kernel helper
	$(MAKE) -C kmod KDIR="$$(cat $(KDIR_FILE))" UMHBLOB_HELPER=$(HELPER) V=$(V)

# checkpatch from the kernel source, gofmt and go vet. The compat header
# is the one file allowed to test LINUX_VERSION_CODE, and checkpatch's
# constant-on-the-right rule misfires on those version comparisons.
CHECKPATCH = "$$(cat $(KDIR_FILE))/source/scripts/checkpatch.pl" --no-tree --quiet
KMOD_SOURCES := $(filter-out kmod/umhblob_compat.h,\
	$(wildcard kmod/umhblob_*.c kmod/umhblob*.h kmod/umhblob_*.S kmod/test/*.c))

check: kernel
	$(CHECKPATCH) -f $(KMOD_SOURCES)
	$(CHECKPATCH) --ignore LINUX_VERSION_CODE,CONSTANT_COMPARISON \
		-f kmod/umhblob_compat.h
	@test -z "$$(gofmt -l .)" || { gofmt -l .; echo "check: gofmt needed"; exit 1; }
	$(GO) vet ./... ./usermode/testdata/badhelper

# Go tests with the race detector against the helper that gets embedded,
# then the C frame code under the sanitizers: the shared vectors, and the
# fuzz corpus replayed once.
unit: helper
	UMHBLOB_HELPER=$(HELPER) $(GO) test -race -count=1 ./...
	$(MAKE) -C kmod/test test

# Run each fuzz target for FUZZ_TIME seconds. A finding fails the target
# and leaves its input in testdata/fuzz/ (Go) or kmod/test/fuzz-out/ (C).
fuzz: deps
	$(GO) test -run='^$$' -fuzz='^FuzzDecodeHeader$$' -fuzztime=$(FUZZ_TIME)s ./proto
	$(GO) test -run='^$$' -fuzz='^FuzzReadFrame$$' -fuzztime=$(FUZZ_TIME)s ./proto
	$(GO) test -run='^$$' -fuzz='^FuzzServe$$' -fuzztime=$(FUZZ_TIME)s ./helper
	$(MAKE) -C kmod/test fuzz-run FUZZ_TIME=$(FUZZ_TIME)

vmtest: module
	UMHBLOB_KERNEL=$(BZIMAGE) UMHBLOB_MODULE=$(CURDIR)/$(MODULE) \
		$(GO) test -count=1 -timeout 60m -v -run 'TestVM' ./harness/vm

test: deps
	$(MAKE) check
	$(MAKE) unit
	$(MAKE) vmtest

# The VM suite on every supported kernel, after one round of checks.
test-all: deps
	$(MAKE) check
	$(MAKE) unit
	@failed=; for k in $(KERNELS); do \
		$(MAKE) vmtest KERNEL=$$k || failed="$$failed $$k"; \
	done; \
	if [ -n "$$failed" ]; then echo "test-all: failed on$$failed"; exit 1; fi

# The VM suite on the debug kernel; any KASAN, lockdep, kmemleak or
# might_sleep report fails it.
# KASAN and lockdep need more memory, and slow TCG down several times.
test-debug: deps
	UMHBLOB_VM_MEMORY=$${UMHBLOB_VM_MEMORY:-1024} \
	UMHBLOB_VM_TIMEOUT=$${UMHBLOB_VM_TIMEOUT:-30m} \
		$(MAKE) vmtest VARIANT=debug

# An interactive shell in the guest, with the module at /umhblob.ko.
vm: deps
	$(MAKE) module
	$(GO) run ./harness/cmd/vm -kernel $(BZIMAGE) -module $(CURDIR)/$(MODULE)

# The guest halted under QEMU's gdb stub, with gdb on vmlinux.
gdb: deps
	$(MAKE) module VARIANT=gdb
	$(GO) run ./harness/cmd/vm -gdb -kdir "$$(cat $(OUT)/kdir-$(KERNEL)-gdb)" \
		-module $(CURDIR)/$(MODULE)

demo: deps
	$(MAKE) module
	$(GO) run ./harness/cmd/demo -kernel $(BZIMAGE) -module $(CURDIR)/$(MODULE)

clean:
	-$(MAKE) -C kmod/test clean
	-[ ! -f $(KDIR_FILE) ] || $(MAKE) -C kmod KDIR="$$(cat $(KDIR_FILE))" clean
	rm -rf $(OUT)

$(OUT):
	mkdir -p $@
