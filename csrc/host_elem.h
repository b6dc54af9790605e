/*
 * host_elem.h -- one element of a host array of any fa_dtype, as float or as double
 * (cpu_reference.c): 16-bit floats converted with round-to-nearest-even, NaN kept quiet. Used
 * by both host references (forward and backward). The double pair keeps float64 elements exact;
 * for the other dtypes it is the float pair widened (every float is a double).
 */
#ifndef FA_HOST_ELEM_H
#define FA_HOST_ELEM_H

#include <stdint.h>

#include "flashattn.h"

float fa_host_load(const void *base, int64_t idx, fa_dtype dt);
void fa_host_store(void *base, int64_t idx, fa_dtype dt, float v);
double fa_host_load64(const void *base, int64_t idx, fa_dtype dt);
void fa_host_store64(void *base, int64_t idx, fa_dtype dt, double v);

#endif /* FA_HOST_ELEM_H */
