# test_kernels again with the AMX-BF16 dense prefill on (NMLX_AMX=1): its
# direct-kernel cases and every backend bf16 prefill (T >= 24) go through
# AMX tiles where the CPU and OS allow them; elsewhere it prints SKIPPED.
add_test(NAME test_kernels_amx COMMAND test_kernels WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set_tests_properties(test_kernels_amx PROPERTIES ENVIRONMENT "NMLX_AMX=1")
# The AMX kernel with its tile operations emulated in C (tests/amx_emulate.h):
# blocking, packing and tails checked on any CPU with AVX512_BF16.
set_source_files_properties(${CMAKE_CURRENT_SOURCE_DIR}/test_amx_emulated.c PROPERTIES COMPILE_OPTIONS
  "-mavx512f;-mavx512bw;-mavx512vl;-mavx512dq;-mavx512bf16;-mfma;-mf16c;-mavx2")
