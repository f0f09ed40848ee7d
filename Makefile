# gdn: Gated DeltaNet kernels. `make help` lists the targets.
#
# The CUDA backend is built whenever nvcc is found (GDN_CUDA=0 leaves it out, GDN_CUDA=1
# insists on it). Outputs go to build/.

PREFIX ?= /usr/local
BUILD ?= build
CC ?= cc
CXX ?= c++
NVCC ?= $(shell command -v nvcc 2>/dev/null || { test -x /usr/local/cuda/bin/nvcc && echo /usr/local/cuda/bin/nvcc; })
GDN_CUDA ?= $(if $(NVCC),1,0)
CUDA_HOME ?= $(abspath $(dir $(NVCC))..)
CUDA_ARCHS ?= -gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90a,code=sm_90a \
              -gencode=arch=compute_80,code=compute_80

WARN = -Wall -Wextra -Werror
# CFLAGS and NVCCFLAGS are the user's (optimisation, debug info; `make CFLAGS=-O1` works); the
# flags the build needs are added separately, so that overriding them cannot drop -Iinclude.
CFLAGS ?= -O3
NVCCFLAGS ?= -O3
BUILD_CFLAGS = $(CFLAGS) -std=gnu11 -fPIC -fvisibility=hidden $(WARN) -Iinclude -pthread
BUILD_NVCCFLAGS = $(NVCCFLAGS) $(NVCC_EXTRA) -std=c++17 $(CUDA_ARCHS) -Werror all-warnings -Xcompiler -fPIC,-fvisibility=hidden,-Wall,-Wextra,-Werror -Iinclude

LIB_SRC = $(wildcard src/core/*.c src/cpu/*.c)
CUDA_SRC = $(wildcard src/cuda/*.cu)
TOOL_SRC = $(wildcard tools/*.c)
TEST_SRC = $(wildcard tests/*.c)

ifeq ($(GDN_CUDA),1)
LIB_SRC := $(filter-out src/core/cuda_absent.c,$(LIB_SRC))
LIB_OBJ = $(LIB_SRC:%.c=$(BUILD)/obj/%.o) $(CUDA_SRC:%.cu=$(BUILD)/obj/%.o)
CUDA_LIBS = -L$(CUDA_HOME)/lib64 -lcudart_static -ldl -lrt -lstdc++
TOOL_CFLAGS = -DGDN_TOOLS_CUDA -I$(CUDA_HOME)/include
LINK = $(CXX)
else
LIB_OBJ = $(LIB_SRC:%.c=$(BUILD)/obj/%.o)
CUDA_LIBS =
TOOL_CFLAGS =
LINK = $(CC)
endif
LIBS = $(CUDA_LIBS) -lpthread -lm
TOOL_OBJ = $(TOOL_SRC:%.c=$(BUILD)/obj/%.o)
KIT_OBJ = $(filter-out $(BUILD)/obj/tools/gdn.o $(BUILD)/obj/tools/cmd_%.o,$(TOOL_OBJ))
TEST_OBJ = $(TEST_SRC:%.c=$(BUILD)/obj/%.o)

.PHONY: all lib run test test-gpu bench install clean format help test-sanitize fuzz fuzz-build
all: lib $(BUILD)/gdn $(BUILD)/test_gdn $(if $(filter 1,$(GDN_CUDA)),$(BUILD)/pdl_layers $(BUILD)/wgmma_check)

help:
	@echo "make            build libgdn (shared + static), the gdn command and the tests"
	@echo "make run        the main job: gdn info, gdn check, gdn bench (cuda if a GPU is there, else cpu)"
	@echo "make test       the C test suite (CPU backend; the CUDA backend too when a GPU is there), then"
	@echo "                the Python binding's CPU tests (tests/python/run.sh; installs NumPy if missing)"
	@echo "make test-gpu   tests/gpu/run.sh: full cuda check matrix + 4096-step run (on a GPU machine)"
	@echo "make test-sanitize  the C test suite again under ASan+UBSan ($(BUILD)/sanitize/, no CUDA)"
	@echo "make fuzz       libFuzzer over gdn_decode on the cpu backend (FUZZ_SECONDS=$(FUZZ_SECONDS); $(BUILD)/fuzz/)"
	@echo "make install    PREFIX=$(PREFIX): header, libraries, gdn, pkg-config file"
	@echo "make format     clang-format the tree"
	@echo "make clean      remove $(BUILD)/"
	@echo "GDN_CUDA=0|1    leave out / require the CUDA backend (now: $(GDN_CUDA), nvcc: $(or $(NVCC),none))"
	@echo "NVCC_EXTRA=...  extra nvcc flags, e.g. -DGDN_FAST_MAX_ROWS=1 (see bench/variants.sh)"

lib: $(BUILD)/libgdn.so $(BUILD)/libgdn.a

$(BUILD)/obj/%.o: %.c $(wildcard include/*.h src/*/*.h tools/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(BUILD_CFLAGS) $(if $(filter tools/% tests/%,$<),$(TOOL_CFLAGS) -Itools) -c $< -o $@

$(BUILD)/obj/%.o: %.cu $(wildcard include/*.h src/*/*.h src/*/*.cuh)
	@mkdir -p $(dir $@)
	$(NVCC) $(BUILD_NVCCFLAGS) -c $< -o $@

$(BUILD)/libgdn.so: $(LIB_OBJ)
	$(LINK) -shared -o $@ $^ -Wl,--exclude-libs,ALL -Wl,-soname,libgdn.so.0 $(LIBS)

$(BUILD)/libgdn.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/gdn: $(TOOL_OBJ) $(BUILD)/libgdn.a
	$(LINK) -o $@ $^ $(LIBS)

$(BUILD)/test_gdn: $(TEST_OBJ) $(KIT_OBJ) $(BUILD)/libgdn.a
	$(LINK) -o $@ $^ $(LIBS)

# The wgmma helpers against a plain product (CUDA only, runs on compute capability 9.0).
$(BUILD)/wgmma_check: tests/gpu/wgmma_check.cu src/cuda/wgmma.cuh
	@mkdir -p $(dir $@)
	$(NVCC) $(BUILD_NVCCFLAGS) -Isrc/cuda $< -o $@

# The layer-pattern benchmark of programmatic dependent launch (CUDA only; bench/pdl_layers.cu).
$(BUILD)/pdl_layers: bench/pdl_layers.cu include/gdn.h $(BUILD)/libgdn.a
	$(NVCC) $(BUILD_NVCCFLAGS) -o $@ $< $(BUILD)/libgdn.a -ldl -lrt -lpthread

run: all
	$(BUILD)/gdn info
	vectors=$$(tests/vectors/ensure.sh) && GDN_VECTORS=$$vectors $(BUILD)/gdn check
	$(BUILD)/gdn bench

test: all
	vectors=$$(tests/vectors/ensure.sh) && GDN_VECTORS=$$vectors $(BUILD)/test_gdn
	tests/python/run.sh

test-gpu: all
	tests/gpu/run.sh

# The C suite again with AddressSanitizer and UBSan: the library, the kit and the tests rebuilt
# into $(BUILD)/sanitize/ (CUDA backend off: nvcc objects do not mix with ASan). Any sanitizer
# report aborts the run and fails the target.
SAN_CC ?= $(CC)
SAN_FLAGS = -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
SAN_ENV = ASAN_OPTIONS=halt_on_error=1:abort_on_error=1:detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1 \
          UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
test-sanitize:
	CFLAGS="-g -O1" $(MAKE) --no-print-directory BUILD=$(BUILD)/sanitize GDN_CUDA=0 \
	    CC="$(SAN_CC) $(SAN_FLAGS)" $(BUILD)/sanitize/test_gdn
	vectors=$$(tests/vectors/ensure.sh) && GDN_VECTORS=$$vectors $(SAN_ENV) $(BUILD)/sanitize/test_gdn \
	    -decode/cpu_prefill_16384 # (its sizes run in make test; ~15x slower under the sanitizers)

# libFuzzer over gdn_decode (cpu backend against the float64 reference), library sources
# compiled into the fuzzer with clang, ASan and UBSan (tests/fuzz/README.md).
FUZZ_CC ?= clang
FUZZ_SECONDS ?= 60
FUZZ_FLAGS = -g -O1 -std=gnu11 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
             -fno-omit-frame-pointer $(WARN) -Iinclude -pthread
FUZZ_LIB_SRC = $(wildcard src/core/*.c src/cpu/*.c)
FUZZ_ARGS ?=
fuzz-build: $(BUILD)/fuzz/fuzz_decode

$(BUILD)/fuzz/fuzz_decode: tests/fuzz/fuzz_decode.c $(FUZZ_LIB_SRC) $(wildcard include/*.h src/*/*.h)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ tests/fuzz/fuzz_decode.c $(FUZZ_LIB_SRC) -lm

fuzz: $(BUILD)/fuzz/fuzz_decode
	@mkdir -p $(BUILD)/fuzz/corpus
	$(SAN_ENV) $(BUILD)/fuzz/fuzz_decode -max_total_time=$(FUZZ_SECONDS) -max_len=512 -timeout=60 \
	    -print_final_stats=1 -artifact_prefix=$(BUILD)/fuzz/ $(FUZZ_ARGS) $(BUILD)/fuzz/corpus tests/fuzz/seeds tests/fuzz/regressions

install: lib $(BUILD)/gdn
	install -d $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/bin
	install -m 644 include/gdn.h $(DESTDIR)$(PREFIX)/include/
	install -m 755 $(BUILD)/libgdn.so $(DESTDIR)$(PREFIX)/lib/libgdn.so.0
	ln -sf libgdn.so.0 $(DESTDIR)$(PREFIX)/lib/libgdn.so
	install -m 644 $(BUILD)/libgdn.a $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(BUILD)/gdn $(DESTDIR)$(PREFIX)/bin/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(shell sed -n 's/^#define GDN_VERSION_\(MAJOR\|MINOR\|PATCH\) //p' include/gdn.h | paste -sd.)|' \
	    -e 's|@LIBS_PRIVATE@|$(LIBS)|' gdn.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/gdn.pc

format:
	clang-format -i $(shell git ls-files '*.c' '*.h' '*.cu')

clean:
	rm -rf $(BUILD)
