# Tokenizer against the reference: `nmlx tokenize` vs HuggingFace `tokenizers`
# (npm) on the real vocabularies in node_modules (npm ci installs them). The
# test fails, with a message saying to run `npm ci`, when they are missing.
if(TARGET nmlx-cli)
  find_program(NMLX_NODE_EXECUTABLE node)
  if(NMLX_NODE_EXECUTABLE)
    add_test(NAME tokenizer_compare
             COMMAND ${NMLX_NODE_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/tokenizer/compare.mjs
                     $<TARGET_FILE:nmlx-cli>
             WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  else()
    add_test(NAME tokenizer_compare
             COMMAND sh -c "echo 'tokenizer_compare: node is not installed (needed for the HF reference)' >&2; exit 1")
  endif()
  set_tests_properties(tokenizer_compare PROPERTIES TIMEOUT 600)
endif()
