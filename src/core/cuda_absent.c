/* Built instead of src/cuda/ when nvcc was not found: the cuda backend reports itself absent. */
#include "backends.h"

int gdn_cuda_built(void) { return 0; }

int gdn_cuda_usable(void) { return 0; }

gdn_memory_kind gdn_cuda_memory_kind(const void *ptr, int *device)
{
    (void)ptr;
    if (device)
        *device = -1;
    return GDN_MEMORY_HOST;
}

gdn_status gdn_cuda_decode(const gdn_problem *p)
{
    (void)p;
    return gdn_fail(GDN_ERR_BACKEND_UNAVAILABLE, "the cuda backend is not built into this library");
}

int gdn_cuda_device_count(void) { return 0; }

int gdn_cuda_config_count(gdn_cuda_kernel kernel)
{
    (void)kernel;
    return 0;
}

void gdn_cuda_force_config(gdn_cuda_kernel kernel, int config) { (void)kernel, (void)config; }

void gdn_cuda_chunked_force_precise(int precise) { (void)precise; }
void gdn_cuda_chunked_force_pipeline(int pipelined) { (void)pipelined; }
void gdn_cuda_chunked_force_split(int split) { (void)split; }
void gdn_cuda_chunked_force_wgmma(int slices) { (void)slices; }
void gdn_cuda_chunked_force_kary(int kary) { (void)kary; }
void gdn_cuda_chunked_force_wy(int wy) { (void)wy; }
void gdn_cuda_chunked_force_lean(int lean) { (void)lean; }
void gdn_cuda_chunked_force_spread(int spread) { (void)spread; }
void gdn_cuda_chunked_force_wg_late(int late) { (void)late; }
void gdn_cuda_chunked_force_bulk(int bulk) { (void)bulk; }
void gdn_cuda_chunked_force_head_walk(int on) { (void)on; }
void gdn_cuda_chunked_force_local_blocks(int six) { (void)six; }
size_t gdn_cuda_chunk_record_bytes(int64_t head_dim_v)
{
    (void)head_dim_v;
    return GDN_CHUNK_RECORD_BYTES;
}
void gdn_cuda_mixed_force_overlap(int overlap) { (void)overlap; }

void gdn_cuda_config_name(gdn_cuda_kernel kernel, int config, char *buf, size_t size)
{
    (void)kernel, (void)config;
    if (size)
        buf[0] = '\0';
}

gdn_status gdn_cuda_device_info(int device, char *name, size_t name_size, int *cc_major, int *cc_minor)
{
    (void)device, (void)name, (void)name_size, (void)cc_major, (void)cc_minor;
    return gdn_fail(GDN_ERR_BACKEND_UNAVAILABLE, "the cuda backend is not built into this library");
}
