package ort

/*
#cgo linux LDFLAGS: -ldl
#include <dlfcn.h>
#include <stddef.h>

// qatc_trim calls the C library's malloc_trim where it has one (glibc).
static void qatc_trim(void) {
	static int (*trim)(size_t) = NULL;
	static int looked = 0;
	if (!looked) {
		trim = (int (*)(size_t))dlsym(RTLD_DEFAULT, "malloc_trim");
		looked = 1;
	}
	if (trim) {
		trim(0);
	}
}
*/
import "C"

// releaseFreed hands the memory the C allocator holds free back to the
// system. A closed session's weights and arena are freed into malloc's
// free lists, which glibc keeps: a process that opens its sessions one
// after another (export's check) would otherwise peak at their sum.
func releaseFreed() { C.qatc_trim() }
