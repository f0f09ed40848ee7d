#include "shapes.h"

#include <string.h>

const shape model_shapes[] = {
    {"qwen3-next", 16, 32, 128, 128, "Qwen3-Next-80B-A3B, TP1"},
    {"qwen3.5-397b", 16, 64, 128, 128, "Qwen3.5-397B-A17B, TP1"},
    {"qwen3.5-27b", 16, 48, 128, 128, "Qwen3.5-27B, TP1 (group of 3)"},
    {"contest", 4, 8, 128, 128, "Qwen3-Next at TP4"},
    {NULL, 0, 0, 0, 0, NULL},
};

/* Odd sizes: one q head, groups of 3, K and V that are not 128 (generic kernels), sizes that
 * are not multiples of 4 or of the fast path's 16 rows. */
const shape odd_shapes[] = {
    {"odd-h1-hv3", 1, 3, 128, 128, "one q head, group of 3"},
    {"odd-k32-v16", 1, 3, 32, 16, "small heads"},
    {"odd-k64-v48", 2, 6, 64, 48, "K=64, V=48"},
    {"odd-k100-v72", 3, 9, 100, 72, "K=100, V=72: no vector path"},
    {"odd-k128-v40", 2, 4, 128, 40, "fast path with a partial row block"},
    {NULL, 0, 0, 0, 0, NULL},
};

const shape *shape_find(const char *name)
{
    const shape *lists[] = {model_shapes, odd_shapes};
    for (int l = 0; l < 2; l++)
        for (const shape *s = lists[l]; s->name; s++)
            if (strcmp(s->name, name) == 0)
                return s;
    return NULL;
}
