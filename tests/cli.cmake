# Script tests of the `nmlx` command line: tests/cli/test_*.sh (bash + node),
# each run with the nmlx binary and the fixtures folder.
if(TARGET nmlx-cli)
  find_program(BASH_EXECUTABLE bash REQUIRED)
  find_program(NODE_EXECUTABLE node REQUIRED)
  file(GLOB NMLX_CLI_TESTS CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/cli/test_*.sh)
  foreach(script ${NMLX_CLI_TESTS})
    get_filename_component(name ${script} NAME_WE)
    string(REGEX REPLACE "^test_" "cli_" name ${name})
    add_test(NAME ${name}
             COMMAND ${BASH_EXECUTABLE} ${script} $<TARGET_FILE:nmlx-cli>
                     ${CMAKE_CURRENT_SOURCE_DIR}/fixtures)
    set_tests_properties(${name} PROPERTIES TIMEOUT 300)
  endforeach()
endif()
