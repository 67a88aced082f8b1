# test_kernels again with the AMX-BF16 dense prefill on (NMLX_AMX=1): its
# direct-kernel cases and every backend bf16 prefill (T >= 24) go through
# AMX tiles where the CPU and OS allow them; elsewhere it prints SKIPPED.
add_test(NAME test_kernels_amx COMMAND test_kernels WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set_tests_properties(test_kernels_amx PROPERTIES ENVIRONMENT "NMLX_AMX=1")
# The AMX kernel with its tile operations emulated in C (tests/amx_emulate.h):
# blocking, packing and tails checked on any CPU with AVX512_BF16.
set_source_files_properties(${CMAKE_CURRENT_SOURCE_DIR}/test_amx_emulated.c PROPERTIES COMPILE_OPTIONS
  "-mavx512f;-mavx512bw;-mavx512vl;-mavx512dq;-mavx512bf16;-mfma;-mf16c;-mavx2")
# The quantized AMX prefill (quant_amx.c), tiles emulated the same way: every
# weight format, split and tail on any CPU with AVX512_BF16.
set_source_files_properties(${CMAKE_CURRENT_SOURCE_DIR}/test_amx_quant_emulated.c PROPERTIES COMPILE_OPTIONS
  "-mavx512f;-mavx512bw;-mavx512vl;-mavx512dq;-mavx512bf16;-mfma;-mf16c;-mavx2")
# ...and built with a deliberately broken packing (NMLX_AMX_QUANT_BREAK=1: each
# k-pair's halves swapped; =2: W's low bf16 part dropped): these must fail,
# which shows the test's bound would catch such a bug. Where the CPU lacks
# AVX512_BF16 the test skips (passes), so they are only registered where
# the build machine has it.
if(CMAKE_HOST_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64")
  execute_process(COMMAND grep -qw avx512_bf16 /proc/cpuinfo RESULT_VARIABLE NMLX_NO_BF16)
  if(NMLX_NO_BF16 EQUAL 0)
    foreach(brk 1 2)
      add_executable(test_amx_quant_broken${brk} ${CMAKE_CURRENT_SOURCE_DIR}/test_amx_quant_emulated.c)
      target_include_directories(test_amx_quant_broken${brk} PRIVATE ${CMAKE_SOURCE_DIR}/src ${CMAKE_CURRENT_SOURCE_DIR})
      target_link_libraries(test_amx_quant_broken${brk} PRIVATE nmlx)
      target_compile_definitions(test_amx_quant_broken${brk} PRIVATE NMLX_AMX_QUANT_BREAK=${brk})
      add_test(NAME amx_quant_broken${brk}_must_fail COMMAND test_amx_quant_broken${brk})
      set_tests_properties(amx_quant_broken${brk}_must_fail PROPERTIES WILL_FAIL TRUE)
    endforeach()
  endif()
endif()
# ...and with the real tiles (AMX CPUs; skipped elsewhere, and with NMLX_AMX=0)
add_executable(test_amx_quant_real ${CMAKE_CURRENT_SOURCE_DIR}/test_amx_quant_emulated.c)
target_include_directories(test_amx_quant_real PRIVATE ${CMAKE_SOURCE_DIR}/src ${CMAKE_CURRENT_SOURCE_DIR})
target_link_libraries(test_amx_quant_real PRIVATE nmlx)
target_compile_definitions(test_amx_quant_real PRIVATE NMLX_AMX_QUANT_REAL=1)
target_compile_options(test_amx_quant_real PRIVATE -mamx-tile -mamx-bf16 -mavx512f -mavx512bw
  -mavx512vl -mavx512dq -mavx512bf16 -mfma -mf16c -mavx2)
add_test(NAME test_amx_quant_real COMMAND test_amx_quant_real WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
