/* Runs every registered test; exit status 0 only when none failed. */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gdn.h"
#include "../src/core/backends.h"
#include "test.h"

#define MAX_TESTS 512

static struct {
    const char *name;
    test_fn fn;
} tests[MAX_TESTS];
static int test_count, current_failures;

void test_add(const char *name, test_fn fn)
{
    if (test_count == MAX_TESTS) {
        fprintf(stderr, "too many tests (raise MAX_TESTS)\n");
        exit(2);
    }
    tests[test_count].name = name;
    tests[test_count].fn = fn;
    test_count++;
}

void test_fail(const char *file, int line, const char *what)
{
    current_failures++;
    fprintf(stderr, "    FAILED %s:%d: %s\n", file, line, what);
}

void test_note(const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    printf("    note: ");
    vprintf(fmt, args);
    printf("\n");
    va_end(args);
}

/* Arguments filter test names by substring: a test runs when it contains any plain argument
 * (or there is none) and none of the arguments written -name ("test_gdn cuda -huge"). */
static int selected(const char *name, int argc, char **argv)
{
    int wanted = 1;
    for (int i = 1; i < argc; i++)
        if (argv[i][0] != '-')
            wanted = 0;
    for (int i = 1; i < argc; i++) {
        if (argv[i][0] == '-' && argv[i][1] && strstr(name, argv[i] + 1))
            return 0;
        if (argv[i][0] != '-' && strstr(name, argv[i]))
            wanted = 1;
    }
    return wanted;
}

void test_each_cpu_isa(void (*body)(const char *isa))
{
    char list[64], chosen[32];
    snprintf(list, sizeof list, "%s", gdn_cpu_isa_list());
    snprintf(chosen, sizeof chosen, "%s", gdn_cpu_isa_name());
    for (char *name = strtok(list, " "); name; name = strtok(NULL, " ")) {
        if (gdn_cpu_force_isa(name) != 0) {
            test_note("%s: not on this CPU", name);
            continue;
        }
        body(name);
    }
    gdn_cpu_force_isa(chosen);
}

int main(int argc, char **argv)
{
    register_numeric_tests();
    register_validation_tests();
    register_decode_tests();
    register_vector_tests();
    register_reliability_tests();
    register_cuda_tests();
    register_cpu_threads_tests();
    int passed = 0, failed = 0;
    printf("gdn %s tests (cuda backend %s, %d CUDA device(s))\n", gdn_version_string(),
           gdn_backend_built(GDN_BACKEND_CUDA) ? "built" : "not built", gdn_cuda_device_count());
    for (int i = 0; i < test_count; i++) {
        if (!selected(tests[i].name, argc, argv))
            continue;
        current_failures = 0;
        printf("  %s\n", tests[i].name);
        fflush(stdout);
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        tests[i].fn();
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double seconds = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
        if (seconds >= 0.5)
            printf("    (%.1f s)\n", seconds);
        if (current_failures) {
            failed++;
            printf("  -> FAIL %s\n", tests[i].name);
        } else {
            passed++;
        }
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
