# The generated model code must match what tools/hf2c produces.
find_program(NODE_EXECUTABLE node REQUIRED)
add_test(NAME hf2c_regenerate_check
         COMMAND ${NODE_EXECUTABLE} ${CMAKE_SOURCE_DIR}/tools/hf2c/cli.mjs --check)
add_test(NAME hf2c_model_def_validation
         COMMAND ${NODE_EXECUTABLE} --test ${CMAKE_SOURCE_DIR}/tools/hf2c/test/)
