# The packed npm package installs into a fresh project outside the
# repository and runs there (tests/package/test_pack_install.sh). It packs
# in node/ (prepack/postpack write and remove node/engine and node/models),
# so it never runs beside the node/ suite. It does not depend on this build's
# flags: the sanitizer tree (scripts/test.sh) leaves it to the release tree.
find_program(NPM_EXECUTABLE npm)
if(NPM_EXECUTABLE AND EXISTS ${CMAKE_SOURCE_DIR}/node/package.json AND NOT NMLX_SANITIZE)
  find_program(BASH_EXECUTABLE bash REQUIRED)
  add_test(NAME node_pack_install
           COMMAND ${BASH_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/package/test_pack_install.sh)
  # after node_package, whose `npm install` in node/ fills the npm cache this
  # test installs from (--prefer-offline)
  set_tests_properties(node_pack_install PROPERTIES TIMEOUT 900 RESOURCE_LOCK nmlx_node_dir
                       DEPENDS node_package)
endif()
