# The Node.js package's node:test suites (node/test/*.test.js): `npm install`
# in node/ the first time (dependencies + addon), else an incremental rebuild
# of the addon, then `npm test` (test/serve.test.js drives `nmlx serve` with
# the `openai` client, a devDependency). The addon is built without CUDA
# here (NMLX_CUDA=0): scripts/test.sh checks the CUDA build on its own.
find_program(NPM_EXECUTABLE npm)
if(NPM_EXECUTABLE AND EXISTS ${CMAKE_SOURCE_DIR}/node/package.json)
  add_test(NAME node_package
           COMMAND bash -c "set -e; export NMLX_CUDA=0; if test -d node_modules/@huggingface/jinja && test -d node_modules/openai; then node scripts/build.mjs >/dev/null; else npm install --no-audit --no-fund >/dev/null; fi; npm test"
           WORKING_DIRECTORY ${CMAKE_SOURCE_DIR}/node)
  set_tests_properties(node_package PROPERTIES TIMEOUT 300 RESOURCE_LOCK nmlx_node_dir)
endif()
