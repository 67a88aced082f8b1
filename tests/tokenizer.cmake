# Tokenizer against the reference: `nmlx tokenize` vs HuggingFace `tokenizers`
# (npm) on the real vocabularies in node_modules (npm ci installs them). The
# test fails, with a message saying to run `npm ci`, when they are missing.
# Sanitizer builds load the 10-30 MB files slowly, so they check the smaller
# vocabularies and the variants built on them.
if(TARGET nmlx-cli)
  find_program(NMLX_NODE_EXECUTABLE node)
  if(NMLX_NODE_EXECUTABLE)
    add_test(NAME tokenizer_compare
             COMMAND ${NMLX_NODE_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/tokenizer/compare.mjs
                     $<TARGET_FILE:nmlx-cli>
             WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
    if(NMLX_SANITIZE)
      set_tests_properties(tokenizer_compare PROPERTIES ENVIRONMENT
        "NMLX_TOK_VOCABS=llama2,qwen3,deepseek_v3,claude,llama2-metaspace-first,llama2-metaspace-always-split,llama2-never-digits-punct,llama2-unk-fused,llama2-unk-unfused,qwen3-splits-added,claude-whitespace")
    endif()
  else()
    add_test(NAME tokenizer_compare
             COMMAND sh -c "echo 'tokenizer_compare: node is not installed (needed for the HF reference)' >&2; exit 1")
  endif()
  set_tests_properties(tokenizer_compare PROPERTIES TIMEOUT 900)
endif()
