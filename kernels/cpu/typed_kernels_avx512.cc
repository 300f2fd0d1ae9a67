// The typed kernels (typed_kernels.h) for the "avx512" family; kernels/CMakeLists.txt sets this
// file's -march.
#define KNOWD_ISA avx512
#define KNOWD_ISA_NAME "avx512"
#include "kernels/cpu/typed_kernels_impl.inc"
