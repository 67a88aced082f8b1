# Replays the fuzz seed corpus and the regression inputs (tests/fuzz/) through
# each libFuzzer harness, linked with a plain main(), under this build's flags
# (ASan with NMLX_SANITIZE=ON). The fuzzers themselves: tests/fuzz/README.md.
foreach(h tokenizer_load tokenize detokenize safetensors config model_config aux_config)
  add_executable(fuzz_replay_${h} ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/fuzz_${h}.c
                                  ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/replay_main.c)
  target_include_directories(fuzz_replay_${h} PRIVATE ${CMAKE_SOURCE_DIR}/src)
  target_link_libraries(fuzz_replay_${h} PRIVATE nmlx)
  add_test(NAME fuzz_replay_${h}
           COMMAND fuzz_replay_${h} tests/fuzz/corpus/${h} tests/fuzz/regressions/${h}
           WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  # the slim tokenizers of the seed corpus: always present and fast to load
  set_tests_properties(fuzz_replay_${h} PROPERTIES TIMEOUT 120 ENVIRONMENT
    "NMLX_FUZZ_TOKENIZERS=tests/fuzz/corpus/tokenizer_load/llama2.json:tests/fuzz/corpus/tokenizer_load/qwen3.json:tests/fuzz/corpus/tokenizer_load/gemma3.json:tests/fuzz/corpus/tokenizer_load/gptoss.json")
endforeach()
