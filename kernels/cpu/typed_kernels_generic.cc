// The typed kernels (typed_kernels.h) for the "x86-64" family; kernels/CMakeLists.txt sets this
// file's -march.
#define KNOWD_ISA generic
#define KNOWD_ISA_NAME "x86-64"
#include "kernels/cpu/typed_kernels_impl.inc"
