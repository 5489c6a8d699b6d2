// SPDX-License-Identifier: BSD-3-Clause
// Clang's thread-safety analysis (-Wthread-safety): which lock guards which
// data, which functions need a lock held or must not hold it. Checked by
// the clang builds (the fuzz preset in CI); no effect on other compilers.
#pragma once

#if defined(__clang__)
#define UVFIO_TSA(x) __attribute__((x))
#else
#define UVFIO_TSA(x)
#endif

#define CAPABILITY(x) UVFIO_TSA(capability(x))
#define SCOPED_CAPABILITY UVFIO_TSA(scoped_lockable)
#define GUARDED_BY(x) UVFIO_TSA(guarded_by(x))
#define PT_GUARDED_BY(x) UVFIO_TSA(pt_guarded_by(x))
#define ACQUIRED_BEFORE(...) UVFIO_TSA(acquired_before(__VA_ARGS__))
#define ACQUIRED_AFTER(...) UVFIO_TSA(acquired_after(__VA_ARGS__))
#define REQUIRES(...) UVFIO_TSA(requires_capability(__VA_ARGS__))
#define REQUIRES_SHARED(...) UVFIO_TSA(requires_shared_capability(__VA_ARGS__))
#define ACQUIRE(...) UVFIO_TSA(acquire_capability(__VA_ARGS__))
#define ACQUIRE_SHARED(...) UVFIO_TSA(acquire_shared_capability(__VA_ARGS__))
#define RELEASE(...) UVFIO_TSA(release_capability(__VA_ARGS__))
#define RELEASE_SHARED(...) UVFIO_TSA(release_shared_capability(__VA_ARGS__))
#define RELEASE_GENERIC(...) UVFIO_TSA(release_generic_capability(__VA_ARGS__))
#define TRY_ACQUIRE(...) UVFIO_TSA(try_acquire_capability(__VA_ARGS__))
#define EXCLUDES(...) UVFIO_TSA(locks_excluded(__VA_ARGS__))
#define ASSERT_CAPABILITY(x) UVFIO_TSA(assert_capability(x))
#define RETURN_CAPABILITY(x) UVFIO_TSA(lock_returned(x))
#define NO_THREAD_SAFETY_ANALYSIS UVFIO_TSA(no_thread_safety_analysis)
