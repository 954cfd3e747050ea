// Included first by the runtime's own translation units (with no_checks_end.h last): in the checked
// build, the functions they declare and define are left out of AddressSanitizer's instrumentation,
// so that only kernel code reaches the checker. The runtime's own memory accesses would otherwise
// each make a callback, which made a launch about 30 times slower. No include guard on purpose.
#if defined(NORM_EXT_SIMT_CHECKED)
#pragma clang attribute push(__attribute__((no_sanitize("address"))), apply_to = function)
#endif
