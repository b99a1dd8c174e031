#include "core/error.h"

static const struct {
    const char *name;
    int status;
    const char *message;
} sg_err_table[] = {
#define SG_ERR_ROW(name, str, status, msg) {str, status, msg},
    SG_ERRORS(SG_ERR_ROW)
#undef SG_ERR_ROW
};

static sg_err_t clamp(sg_err_t e)
{
    return (unsigned)e < SG_ERR__COUNT ? e : SG_ERR_INTERNAL;
}

const char *sg_err_name(sg_err_t e)
{
    return sg_err_table[clamp(e)].name;
}

int sg_err_status(sg_err_t e)
{
    return sg_err_table[clamp(e)].status;
}

const char *sg_err_message(sg_err_t e)
{
    return sg_err_table[clamp(e)].message;
}
