# CUDA backend tests (tests/cuda/): built only with -DNMLX_CUDA=ON, labelled
# "cuda"; each exits 77 (reported as skipped) when no GPU is usable, so a
# CUDA build on a machine without a GPU still passes.
if(NMLX_CUDA)
  file(GLOB NMLX_CUDA_TESTS CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/cuda/test_*.c)
  foreach(src ${NMLX_CUDA_TESTS})
    get_filename_component(name ${src} NAME_WE)
    add_executable(${name} ${src})
    target_include_directories(${name} PRIVATE ${CMAKE_SOURCE_DIR}/src ${CMAKE_CURRENT_SOURCE_DIR})
    target_link_libraries(${name} PRIVATE nmlx PkgConfig::JANSSON)
    add_test(NAME ${name} COMMAND ${name} WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
    set_tests_properties(${name} PROPERTIES LABELS cuda SKIP_RETURN_CODE 77
      ENVIRONMENT "NMLX_SOURCE_DIR=${CMAKE_SOURCE_DIR}")
  endforeach()
  # qmm_kernel, the tensor-core quantized mat-mat that the cuBLAS path
  # replaced as the default (NMLX_CUDA_QMM=mma), stays tested, from 9 rows
  # (NMLX_CUDA_QROWS_MMA_T=0: the few-rows kernel off; 2..8 rows then take
  # the f32 rows kernel)
  foreach(name test_cuda_ops test_cuda_fixtures test_cuda_batch)
    add_test(NAME ${name}_mma COMMAND ${name} WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
    set_tests_properties(${name}_mma PROPERTIES LABELS cuda SKIP_RETURN_CODE 77
      ENVIRONMENT "NMLX_SOURCE_DIR=${CMAKE_SOURCE_DIR};NMLX_CUDA_QMM=mma;NMLX_CUDA_QROWS_MMA_T=0")
  endforeach()
  # the tiled prefill attention (cuda_attention_tiled.cu), which the
  # tensor-core one replaced as the default, stays tested on every fixture
  add_test(NAME test_cuda_fixtures_attn_tiled COMMAND test_cuda_fixtures
    WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(test_cuda_fixtures_attn_tiled PROPERTIES LABELS cuda SKIP_RETURN_CODE 77
    ENVIRONMENT "NMLX_SOURCE_DIR=${CMAKE_SOURCE_DIR};NMLX_CUDA_ATTN_MMA=0")
  # every kernel launched the usual way (programmatic dependent launch off)
  add_test(NAME test_cuda_fixtures_no_pdl COMMAND test_cuda_fixtures WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(test_cuda_fixtures_no_pdl PROPERTIES LABELS cuda SKIP_RETURN_CODE 77
    ENVIRONMENT "NMLX_SOURCE_DIR=${CMAKE_SOURCE_DIR};NMLX_CUDA_PDL=0")
  # the residual norm and rope_kv folded into the decode mat-vec
  # (add_rmsnorm_matmul, opt-in), on v2 and on v1's norm-staging form (no
  # rope_kv fold there)
  add_test(NAME test_cuda_fixtures_folded COMMAND test_cuda_fixtures
    WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(test_cuda_fixtures_folded PROPERTIES LABELS cuda SKIP_RETURN_CODE 77
    ENVIRONMENT "NMLX_SOURCE_DIR=${CMAKE_SOURCE_DIR};NMLX_CUDA_NORM_MATMUL=1")
  add_test(NAME test_cuda_fixtures_folded_v1 COMMAND test_cuda_fixtures
    WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(test_cuda_fixtures_folded_v1 PROPERTIES LABELS cuda SKIP_RETURN_CODE 77
    ENVIRONMENT "NMLX_SOURCE_DIR=${CMAKE_SOURCE_DIR};NMLX_CUDA_NORM_MATMUL=1;NMLX_CUDA_QGEMV16=v1")
  # the o and down mat-vecs adding into x with the norm's sums of squares
  # (matmul_residual), the norms after them staged from those, rope_kv folded
  add_test(NAME test_cuda_fixtures_resid COMMAND test_cuda_fixtures
    WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(test_cuda_fixtures_resid PROPERTIES LABELS cuda SKIP_RETURN_CODE 77
    ENVIRONMENT "NMLX_SOURCE_DIR=${CMAKE_SOURCE_DIR};NMLX_CUDA_RESID=rope")
  # kernel benchmark (not a test): bench/cuda/bench_qmatmul.c
  add_executable(bench_cuda_quant ${CMAKE_SOURCE_DIR}/bench/cuda/bench_qmatmul.c)
  target_include_directories(bench_cuda_quant PRIVATE ${CMAKE_SOURCE_DIR}/src)
  target_link_libraries(bench_cuda_quant PRIVATE nmlx)
  # decode attention, old kernels against flash-decoding (not a test): bench/cuda/bench_attn_decode.c
  add_executable(bench_cuda_attn ${CMAKE_SOURCE_DIR}/bench/cuda/bench_attn_decode.c)
  target_include_directories(bench_cuda_attn PRIVATE ${CMAKE_SOURCE_DIR}/src)
  target_link_libraries(bench_cuda_attn PRIVATE nmlx)
  # decode tok/s at KV depths (not a test): bench/bench_decode_depth.c MODEL cuda
  add_executable(bench_cuda_depth ${CMAKE_SOURCE_DIR}/bench/bench_decode_depth.c)
  target_link_libraries(bench_cuda_depth PRIVATE nmlx)
  # batched decode throughput on the GPU (not a test): bench/bench_batch.c ... cuda
  add_executable(bench_cuda_batch ${CMAKE_SOURCE_DIR}/bench/bench_batch.c)
  target_include_directories(bench_cuda_batch PRIVATE ${CMAKE_SOURCE_DIR}/src)
  target_link_libraries(bench_cuda_batch PRIVATE nmlx)
endif()
