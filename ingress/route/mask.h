/* Mask templates: the Host value a sandbox's service expects. */
#ifndef SG_ROUTE_MASK_H
#define SG_ROUTE_MASK_H

#include "core/strbuf.h"
#include <stdint.h>

/* Appends `tmpl` to out with every literal "${PORT}" replaced by the decimal
 * port. Other "$" sequences are copied unchanged. */
void sg_mask_expand(sg_strbuf_t *out, sg_slice_t tmpl, uint16_t port);

/* Validates a template: ASCII host[:port] characters only (letters, digits,
 * '-', '.', ':', '[', ']', '_' and the literal "${PORT}"), 1..255 bytes.
 * Returns NULL when valid, else a static reason. */
const char *sg_mask_validate(sg_slice_t tmpl);

#endif
