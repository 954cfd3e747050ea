// Closes no_checks_begin.h. No include guard on purpose.
#if defined(NORM_EXT_SIMT_CHECKED)
#pragma clang attribute pop
#endif
