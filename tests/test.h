/*
 * A minimal test runner: each tests/<name>.c file defines a register_<file>_tests() that calls
 * test_add() for its tests; tests/main.c runs them all and ends with "N passed, N failed".
 * CHECK records a failure (with file, line and the expression) and lets the test go on, so
 * one run reports every broken expectation.
 */
#ifndef GDN_TESTS_TEST_H
#define GDN_TESTS_TEST_H

#include <stdio.h>

typedef void (*test_fn)(void);

void test_add(const char *name, test_fn fn);
void test_fail(const char *file, int line, const char *what);
/* Prints a note under the current test: a measured number, or why a part could not run. */
void test_note(const char *fmt, ...);

#define CHECK(cond)                                                                                          \
    do {                                                                                                     \
        if (!(cond))                                                                                         \
            test_fail(__FILE__, __LINE__, #cond);                                                            \
    } while (0)

#define CHECK_MSG(cond, ...)                                                                                 \
    do {                                                                                                     \
        if (!(cond)) {                                                                                       \
            test_fail(__FILE__, __LINE__, #cond);                                                            \
            fprintf(stderr, "      ");                                                                       \
            fprintf(stderr, __VA_ARGS__);                                                                    \
            fprintf(stderr, "\n");                                                                           \
        }                                                                                                    \
    } while (0)

/* Runs body once for every instruction-set variant of the cpu backend this machine has (the
 * others are noted), then restores the variant that was in use. */
void test_each_cpu_isa(void (*body)(const char *isa));

void register_validation_tests(void);
void register_decode_tests(void);
void register_vector_tests(void);
void register_numeric_tests(void);
void register_reliability_tests(void);
void register_cuda_tests(void);
void register_cpu_threads_tests(void);

#endif
