#ifndef GDN_CORE_CHOOSE_BACKEND_H
#define GDN_CORE_CHOOSE_BACKEND_H

#include "backends.h"

/* Resolves AUTO (API argument, then GDN_BACKEND, then pool_kind: where the state pool lives) and
 * checks that the backend is built and usable. */
gdn_status gdn_choose_backend(gdn_backend requested, gdn_memory_kind pool_kind, gdn_backend *chosen);

#endif
