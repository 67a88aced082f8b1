# test_long_prompt (640 tokens one-shot against the same tokens in uneven
# pieces) again with other prefill chunks (NMLX_PREFILL_CHUNK; the CPU's
# default is 256, CUDA's 512): 100 puts chunk edges inside every piece's
# span, 8192 runs the one-shot prompt as one chunk.
foreach(chunk 100 8192)
  add_test(NAME test_long_prompt_chunk${chunk} COMMAND test_long_prompt WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(test_long_prompt_chunk${chunk} PROPERTIES ENVIRONMENT
    "NMLX_PREFILL_CHUNK=${chunk};NMLX_SOURCE_DIR=${CMAKE_SOURCE_DIR};NMLX_BINARY_DIR=${CMAKE_BINARY_DIR};NMLX_CACHE_DIR=${CMAKE_BINARY_DIR}/pick-cache")
endforeach()
