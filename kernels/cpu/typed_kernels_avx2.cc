// The typed kernels (typed_kernels.h) for the "avx2" family; kernels/CMakeLists.txt sets this
// file's -march.
#define KNOWD_ISA avx2
#define KNOWD_ISA_NAME "avx2"
#include "kernels/cpu/typed_kernels_impl.inc"
