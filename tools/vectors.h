/*
 * The shared reference vectors (../shared/vectors, SPEC 6): loading a .gdnv file and running
 * one through a backend, token by token, against its float64 results.
 */
#ifndef GDN_TOOLS_VECTORS_H
#define GDN_TOOLS_VECTORS_H

#include "gdn.h"

typedef struct vector_result {
    char message[256]; /* why it failed, or "" */
    long long n, t, h, hv, k, v;
    double out_rel;         /* ||out - ref|| / ||ref|| over all tokens and rows */
    double state_rel;       /* final pool against pool_out */
    double token_state_rel; /* worst per-token state against token_states, if the file has them */
    int pass;
} vector_result;

/* Directory of the vectors: $GDN_VECTORS, else ../shared/vectors (relative to the cwd), else
 * NULL. */
const char *vectors_dir(void);

/* Runs the case in `path` on `backend` (cpu, cuda or reference), one decode call per token;
 * with multi_token, cases of 2..GDN_MAX_TOKENS tokens then run again as one multi-token call
 * with a snapshot slot per token (the reported errors are that run's). Tolerance 1e-5. */
int vectors_run_file(const char *path, gdn_backend backend, int multi_token, vector_result *r);

/* The six case names of the vectors README, NULL-terminated. */
extern const char *const vector_case_names[];

#endif
