/* SPDX-License-Identifier: GPL-2.0-only OR BSD-3-Clause */
/*
 * Force-included by tests/kselftest/build.sh only where the selftests'
 * lib/ calls calloc_assert() and nothing in that source defines it.
 */
#include <stdio.h>
#include <stdlib.h>

static inline void *calloc_assert(size_t nmemb, size_t size)
{
	void *p = calloc(nmemb, size);

	if (!p) {
		fprintf(stderr, "calloc(%zu, %zu) failed\n", nmemb, size);
		exit(1);
	}
	return p;
}
