/* Runs every registered test; exit status 0 only when none failed. */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "gdn.h"
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

int main(int argc, char **argv)
{
    register_numeric_tests();
    register_validation_tests();
    register_decode_tests();
    register_vector_tests();
    register_reliability_tests();
    const char *only = argc > 1 ? argv[1] : NULL; /* substring filter on test names */
    int passed = 0, failed = 0;
    printf("gdn %s tests (cuda backend %s, %d CUDA device(s))\n", gdn_version_string(),
           gdn_backend_built(GDN_BACKEND_CUDA) ? "built" : "not built", gdn_cuda_device_count());
    for (int i = 0; i < test_count; i++) {
        if (only && !strstr(tests[i].name, only))
            continue;
        current_failures = 0;
        printf("  %s\n", tests[i].name);
        fflush(stdout);
        tests[i].fn();
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
