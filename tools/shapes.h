/* The model shapes of SPEC 7 and the odd shapes the checks add. */
#ifndef GDN_TOOLS_SHAPES_H
#define GDN_TOOLS_SHAPES_H

#include <stdint.h>

typedef struct shape {
    const char *name;
    int64_t h, hv, k, v;
    const char *model;
} shape;

extern const shape model_shapes[]; /* NULL-name terminated */
extern const shape odd_shapes[];   /* NULL-name terminated */

/* A model or odd shape by name, or NULL. */
const shape *shape_find(const char *name);

#endif
