/* Sub-commands of the gdn command line (tools/gdn.c dispatches). */
#ifndef GDN_TOOLS_COMMANDS_H
#define GDN_TOOLS_COMMANDS_H

#include "gdn.h"

int cmd_info(int argc, char **argv);
int cmd_check(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_prefill(int argc, char **argv);

/* The backend of --backend NAME, else GDN_BACKEND, else cuda when a GPU is usable, else cpu. */
int resolve_tool_backend(const char *name, gdn_backend *backend);

/* Parses "f32" / "bf16" / "f16" (and "i32", "i64"); -1 when unknown. */
int parse_dtype(const char *name, gdn_dtype *dtype);

#endif
