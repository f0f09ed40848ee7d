/*
 * gdn: the command line.
 *   gdn info                    version, backends built, GPUs seen
 *   gdn check [options]         random parity of a backend against the float64 reference
 *   gdn bench [options]         time per call and GB/s of state traffic
 *   gdn prefill [options]       varlen prefill on the cpu backend: tokens/s, chunks vs token by token
 * `gdn <command> --help` lists the options.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buffers.h"
#include "../src/core/backends.h"
#include "commands.h"

int parse_dtype(const char *name, gdn_dtype *dtype)
{
    for (int d = GDN_DTYPE_F32; d <= GDN_DTYPE_I64; d++)
        if (strcmp(name, gdn_dtype_name((gdn_dtype)d)) == 0) {
            *dtype = (gdn_dtype)d;
            return 0;
        }
    return -1;
}

int resolve_tool_backend(const char *name, gdn_backend *backend)
{
    if (!name)
        name = getenv("GDN_BACKEND");
    if (name && name[0] && strcmp(name, "auto") != 0) {
        if (gdn_backend_from_name(name, backend) != 0) {
            fprintf(stderr, "gdn: unknown backend \"%s\" (cpu, cuda, reference)\n", name);
            return -1;
        }
        return 0;
    }
    *backend = gdn_cuda_device_count() > 0 && gdn_backend_built(GDN_BACKEND_CUDA) ? GDN_BACKEND_CUDA
                                                                                  : GDN_BACKEND_CPU;
    return 0;
}

int cmd_info(int argc, char **argv)
{
    (void)argc, (void)argv;
    printf("gdn %s (header %d.%d.%d)\n", gdn_version_string(), GDN_VERSION_MAJOR, GDN_VERSION_MINOR,
           GDN_VERSION_PATCH);
    printf("backends built: cpu reference%s\n", gdn_backend_built(GDN_BACKEND_CUDA) ? " cuda" : "");
    printf("cpu backend instruction set: %s (of: %s; GDN_CPU_ISA chooses)\n", gdn_cpu_isa_name(),
           gdn_cpu_isa_list());
    int devices = gdn_cuda_device_count();
    if (!gdn_backend_built(GDN_BACKEND_CUDA))
        printf("GPUs: (cuda backend not built)\n");
    else if (devices == 0)
        printf("GPUs: none found (no driver or no device)\n");
    for (int d = 0; d < devices; d++) {
        char name[256];
        int major = 0, minor = 0;
        if (gdn_cuda_device_info(d, name, sizeof name, &major, &minor) == GDN_OK)
            printf("GPU %d: %s, compute capability %d.%d%s\n", d, name, major, minor,
                   major >= 8 ? "" : " (unsupported: the cuda backend needs sm_80+)");
    }
    gdn_backend chosen;
    if (resolve_tool_backend(NULL, &chosen) == 0)
        printf("default backend of gdn check/bench: %s\n", gdn_backend_name(chosen));
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        printf("usage: gdn info | check [--help] | bench [--help] | prefill [--help]\n");
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "info") == 0)
        return cmd_info(argc - 1, argv + 1);
    if (strcmp(argv[1], "check") == 0)
        return cmd_check(argc - 1, argv + 1);
    if (strcmp(argv[1], "bench") == 0)
        return cmd_bench(argc - 1, argv + 1);
    if (strcmp(argv[1], "prefill") == 0)
        return cmd_prefill(argc - 1, argv + 1);
    fprintf(stderr, "gdn: unknown command \"%s\" (info, check, bench, prefill)\n", argv[1]);
    return 2;
}
