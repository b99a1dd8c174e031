#include "core/slice.h"

sg_slice_t sg_slice_trim(sg_slice_t s)
{
    while (s.len && (s.base[0] == ' ' || s.base[0] == '\t')) s.base++, s.len--;
    while (s.len && (s.base[s.len - 1] == ' ' || s.base[s.len - 1] == '\t')) s.len--;
    return s;
}
