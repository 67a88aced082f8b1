# test_kernels again with the AMX-BF16 dense prefill on (NMLX_AMX=1): its
# direct-kernel cases and every backend bf16 prefill (T >= 24) go through
# AMX tiles where the CPU and OS allow them; elsewhere it prints SKIPPED.
add_test(NAME test_kernels_amx COMMAND test_kernels WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set_tests_properties(test_kernels_amx PROPERTIES ENVIRONMENT "NMLX_AMX=1")
