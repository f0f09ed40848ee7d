/* The per-item work for the compiler's default target (x86-64: SSE2 only; any other
 * architecture: its baseline). */
#define GDN_CPU_ITEM_FN gdn_cpu_decode_item_baseline
#include "decode_item_body.h"
