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
    double out_rel;          /* ||out - ref|| / ||ref|| over all tokens and rows */
    double state_rel;        /* final pool against pool_out */
    double token_state_rel;  /* worst per-token state against token_states, if the file has them */
    int pass;
} vector_result;

/* Directory of the vectors: $GDN_VECTORS, else ../shared/vectors (relative to the cwd), else
 * NULL. */
const char *vectors_dir(void);

/* Runs the case in `path` on `backend` (cpu, cuda or reference). Tolerance 1e-5 relative. */
int vectors_run_file(const char *path, gdn_backend backend, vector_result *r);

/* The six case names of the vectors README, NULL-terminated. */
extern const char *const vector_case_names[];

#endif
