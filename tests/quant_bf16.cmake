# test_quant_kernels again with the bf16 prefill forced on affine weights
# (NMLX_QUANT_BF16=prefill): bf16 bounds there, and weights flagged
# f32_input (the LM head) still held to the f32 bound.
add_test(NAME test_quant_kernels_bf16_prefill COMMAND test_quant_kernels
         WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set_tests_properties(test_quant_kernels_bf16_prefill PROPERTIES ENVIRONMENT "NMLX_QUANT_BF16=prefill")
# ...and with the AVX512_BF16 4-bit decode mat-vec forced (NMLX_QUANT_BF16=matvec),
# whatever the one-time pick measures: every backend matmul of 1..15 tokens on
# affine 4-bit g64/g128 weights goes through it, with 1 and 2 threads.
add_test(NAME test_quant_kernels_bf16_matvec COMMAND test_quant_kernels
         WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set_tests_properties(test_quant_kernels_bf16_matvec PROPERTIES ENVIRONMENT "NMLX_QUANT_BF16=matvec")
# ...and with the int16 VNNI decode mat-vec forced (NMLX_QUANT_INT16_DEC=1,
# quant_dec_vnni_avx512.c), whatever the pick measures: every backend matmul
# of 1..23 tokens on affine 4/8-bit g32/64/128 weights goes through it or its
# few-token form where the CPU has AVX512_VNNI.
add_test(NAME test_quant_kernels_int16_dec COMMAND test_quant_kernels
         WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set_tests_properties(test_quant_kernels_int16_dec PROPERTIES ENVIRONMENT "NMLX_QUANT_INT16_DEC=1")
