// SPDX-License-Identifier: BSD-3-Clause
// Copies that survive a SIGBUS: memory mapped from a client's file can
// vanish under the mapping when the client shrinks the file (a memfd
// truncated after DMA_MAP). A plain memcpy would kill the whole daemon; a
// safe_memcpy() fails instead, and the caller fails that one DMA (EFAULT).
//
// How: a process-wide SIGBUS handler (installed on first use, chained to the
// previous one) jumps back into the copy that faulted when the fault happens
// on a thread inside safe_memcpy(); any other SIGBUS goes to the previous
// handler (or the default action) as before. The copy may have written part
// of `dst` when it fails.
#pragma once

#include <cstddef>

namespace uvfio {

// false if the copy faulted (SIGBUS); true otherwise.
bool safe_memcpy(void* dst, const void* src, size_t n);

}  // namespace uvfio
