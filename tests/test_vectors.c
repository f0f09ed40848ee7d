/* The shared reference vectors (SPEC 6) on every host backend, and on cuda when a GPU is
 * present. A missing vectors directory fails the test: the external oracle must not be
 * skipped silently. */
#include <stdio.h>
#include <string.h>

#include "test.h"
#include "vectors.h"

static void run_all(gdn_backend backend)
{
    const char *dir = vectors_dir();
    CHECK_MSG(dir != NULL,
              "reference vectors not found: set GDN_VECTORS or keep ../shared/vectors beside the checkout");
    if (!dir)
        return;
    for (int i = 0; vector_case_names[i]; i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s.gdnv", dir, vector_case_names[i]);
        vector_result r;
        int ok = vectors_run_file(path, backend, 1, &r);
        printf("    %-26s out_rel %.2e state_rel %.2e token_state_rel %.2e\n", vector_case_names[i],
               r.out_rel, r.state_rel, r.token_state_rel);
        CHECK_MSG(ok, "%s on %s: %s", vector_case_names[i], gdn_backend_name(backend), r.message);
    }
}

static void vectors_cpu(void) { run_all(GDN_BACKEND_CPU); }
static void vectors_reference(void) { run_all(GDN_BACKEND_REFERENCE); }

/* The cpu backend's inner loops exist for several instruction sets (GDN_CPU_ISA): each one this
 * machine has meets the vectors. */
static void vectors_on_isa(const char *isa)
{
    printf("    isa %s\n", isa);
    run_all(GDN_BACKEND_CPU);
}

static void vectors_cpu_every_isa(void) { test_each_cpu_isa(vectors_on_isa); }

static void vectors_cuda(void)
{
    if (!gdn_backend_built(GDN_BACKEND_CUDA) || gdn_cuda_device_count() == 0) {
        test_note("no CUDA device here: the cuda vectors run on the GPU machine (tests/gpu/run.sh)");
        return;
    }
    run_all(GDN_BACKEND_CUDA);
}

void register_vector_tests(void)
{
    test_add("vectors/cpu", vectors_cpu);
    test_add("vectors/reference", vectors_reference);
    test_add("vectors/cpu_every_isa", vectors_cpu_every_isa);
    test_add("vectors/cuda", vectors_cuda);
}
