# test_kernels again with the AMX-BF16 dense prefill on (NMLX_AMX=1): its
# direct-kernel cases and every backend bf16 prefill (T >= 24) go through
# AMX tiles where the CPU and OS allow them; elsewhere it prints SKIPPED.
add_test(NAME test_kernels_amx COMMAND test_kernels WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set_tests_properties(test_kernels_amx PROPERTIES ENVIRONMENT "NMLX_AMX=1")
# The AMX kernel with its tile operations emulated in C (tests/amx_emulate.h):
# blocking, packing and tails checked on any CPU with AVX512_BF16.
set_source_files_properties(${CMAKE_CURRENT_SOURCE_DIR}/test_amx_emulated.c PROPERTIES COMPILE_OPTIONS
  "-mavx512f;-mavx512bw;-mavx512vl;-mavx512dq;-mavx512bf16;-mfma;-mf16c;-mavx2")
# The quantized AMX prefill (quant_amx.c), tiles emulated the same way: every
# weight format, split and tail on any CPU with AVX512_BF16.
set_source_files_properties(${CMAKE_CURRENT_SOURCE_DIR}/test_amx_quant_emulated.c PROPERTIES COMPILE_OPTIONS
  "-mavx512f;-mavx512bw;-mavx512vl;-mavx512dq;-mavx512bf16;-mfma;-mf16c;-mavx2")
# ...and built with a deliberately broken packing (NMLX_AMX_QUANT_BREAK=1: each
# k-pair's halves swapped; =2: W's low bf16 part dropped): these must fail,
# which shows the test's bound would catch such a bug. Where the CPU lacks
# AVX512_BF16 the test skips (passes), so they are only registered where
# the build machine has it.
if(CMAKE_HOST_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64")
  execute_process(COMMAND grep -qw avx512_bf16 /proc/cpuinfo RESULT_VARIABLE NMLX_NO_BF16)
  if(NMLX_NO_BF16 EQUAL 0)
    foreach(brk 1 2)
      add_executable(test_amx_quant_broken${brk} ${CMAKE_CURRENT_SOURCE_DIR}/test_amx_quant_emulated.c)
      target_include_directories(test_amx_quant_broken${brk} PRIVATE ${CMAKE_SOURCE_DIR}/src ${CMAKE_CURRENT_SOURCE_DIR})
      target_link_libraries(test_amx_quant_broken${brk} PRIVATE nmlx)
      target_compile_definitions(test_amx_quant_broken${brk} PRIVATE NMLX_AMX_QUANT_BREAK=${brk})
      add_test(NAME amx_quant_broken${brk}_must_fail COMMAND test_amx_quant_broken${brk})
      set_tests_properties(amx_quant_broken${brk}_must_fail PROPERTIES WILL_FAIL TRUE)
    endforeach()
  endif()
endif()
# ...and with the real tiles (AMX CPUs; skipped elsewhere, and with NMLX_AMX=0)
add_executable(test_amx_quant_real ${CMAKE_CURRENT_SOURCE_DIR}/test_amx_quant_emulated.c)
target_include_directories(test_amx_quant_real PRIVATE ${CMAKE_SOURCE_DIR}/src ${CMAKE_CURRENT_SOURCE_DIR})
target_link_libraries(test_amx_quant_real PRIVATE nmlx)
target_compile_definitions(test_amx_quant_real PRIVATE NMLX_AMX_QUANT_REAL=1)
target_compile_options(test_amx_quant_real PRIVATE -mamx-tile -mamx-bf16 -mavx512f -mavx512bw
  -mavx512vl -mavx512dq -mavx512bf16 -mfma -mf16c -mavx2)
add_test(NAME test_amx_quant_real COMMAND test_amx_quant_real WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})

# test_precision with the whole CPU backend on emulated AMX tiles: the
# executables link tests/amx_emu_dense.c, amx_emu_quant.c and amx_emu_int8.c,
# which define every symbol of matmul_amx.o, quant_amx.o and quant_int8_amx.o (so the archive's are not
# pulled in) and report AMX usable wherever AVX512_BF16 is (elsewhere the
# test prints "AMX quantized prefill: SKIPPED"). NMLX_AMX_QUANT=1 forces
# the 3-term kernel from T = 24, an exact path (1e-3): must pass.
set(NMLX_AMX_FLAGS -mamx-tile -mamx-bf16 -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16
  -mfma -mf16c -mavx2)
function(nmlx_amx_emu_test name main)
  # tests/<main>.c on emulated tiles; extra arguments: compile definitions
  add_executable(${name} ${CMAKE_CURRENT_SOURCE_DIR}/${main}.c
    ${CMAKE_CURRENT_SOURCE_DIR}/amx_emu_dense.c ${CMAKE_CURRENT_SOURCE_DIR}/amx_emu_quant.c
    ${CMAKE_CURRENT_SOURCE_DIR}/amx_emu_int8.c ${NMLX_EMU_EXTRA_SOURCES})
  target_include_directories(${name} PRIVATE ${CMAKE_SOURCE_DIR}/src ${CMAKE_CURRENT_SOURCE_DIR})
  target_link_libraries(${name} PRIVATE nmlx)
  target_compile_definitions(${name} PRIVATE NMLX_TEST_AMX_EMU=1 ${ARGN})
  set_source_files_properties(${CMAKE_CURRENT_SOURCE_DIR}/amx_emu_dense.c
    ${CMAKE_CURRENT_SOURCE_DIR}/amx_emu_quant.c ${CMAKE_CURRENT_SOURCE_DIR}/amx_emu_int8.c
    ${NMLX_EMU_EXTRA_SOURCES}
    PROPERTIES COMPILE_OPTIONS "${NMLX_AMX_FLAGS}")
endfunction()
set(NMLX_EMU_EXTRA_SOURCES "")
nmlx_amx_emu_test(test_precision_amx_emu test_precision)
add_test(NAME test_precision_amx_emu COMMAND test_precision_amx_emu WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set_tests_properties(test_precision_amx_emu PROPERTIES ENVIRONMENT
  "NMLX_AMX_QUANT=1;NMLX_PICK_CACHE=0;NMLX_SOURCE_DIR=${CMAKE_SOURCE_DIR}")
if(CMAKE_HOST_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64" AND NMLX_NO_BF16 EQUAL 0)
  # ...with a broken packing (quant_amx.c's NMLX_AMX_QUANT_BREAK): must fail
  foreach(brk 1 2)
    nmlx_amx_emu_test(test_precision_amx_broken${brk} test_precision NMLX_AMX_QUANT_BREAK=${brk})
    add_test(NAME precision_amx_broken${brk}_must_fail COMMAND test_precision_amx_broken${brk}
      WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
    set_tests_properties(precision_amx_broken${brk}_must_fail PROPERTIES WILL_FAIL TRUE ENVIRONMENT
      "NMLX_AMX_QUANT=1;NMLX_PICK_CACHE=0;NMLX_SOURCE_DIR=${CMAKE_SOURCE_DIR}")
  endforeach()
  # The one-term kernel as the default (quant_bf16_avx512.c built again with
  # NMLX_AMX_QUANT_DEFAULT_TERMS=1, tests/amx_emu_pick.c): the untimed pick
  # must take it (no "default selection" failure), and it is held to issue
  # 9's contract, which it does not meet: argmaxes flip on two fixtures
  # (docs/quantization.md). The test passes while that message is printed;
  # once it is not, the one-term default can be reconsidered.
  set(NMLX_EMU_EXTRA_SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/amx_emu_pick.c)
  nmlx_amx_emu_test(test_precision_amx1 test_precision NMLX_AMX_QUANT_DEFAULT_TERMS=1)
  add_test(NAME precision_amx1_default_flips COMMAND test_precision_amx1
    WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(precision_amx1_default_flips PROPERTIES
    ENVIRONMENT "NMLX_PICK_CACHE=0;NMLX_SOURCE_DIR=${CMAKE_SOURCE_DIR}"
    PASS_REGULAR_EXPRESSION "argmax differs from f32"
    FAIL_REGULAR_EXPRESSION "default selection")
  # ...and with a broken packing: the contract's 2e-2 logit bound catches it
  nmlx_amx_emu_test(test_precision_amx1_broken1 test_precision NMLX_AMX_QUANT_DEFAULT_TERMS=1
    NMLX_AMX_QUANT_BREAK=1)
  add_test(NAME precision_amx1_broken1_must_fail COMMAND test_precision_amx1_broken1
    WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(precision_amx1_broken1_must_fail PROPERTIES
    ENVIRONMENT "NMLX_PICK_CACHE=0;NMLX_SOURCE_DIR=${CMAKE_SOURCE_DIR}"
    PASS_REGULAR_EXPRESSION "from f32 \\(bound 2e-02\\)")
  # the pick cache with that default on (emulated) AMX: records keyed by the
  # term count, the untimed pick stored and read back, foreign values refused
  nmlx_amx_emu_test(test_pick_cache_amx1 test_pick_cache NMLX_AMX_QUANT_DEFAULT_TERMS=1)
  add_test(NAME test_pick_cache_amx1 COMMAND test_pick_cache_amx1 WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set(NMLX_EMU_EXTRA_SOURCES "")
endif()

# The AMX-INT8 prefill with int16 x (quant_int8_amx.c), tiles emulated
# (TDPBSUD / TDPBUUD and group 32's half-K shapes in tests/amx_emulate.h):
# against the same int16 x in double, the int16 VNNI prefill bit for bit
# (where the CPU has VNNI) and f32 x, on any CPU with AVX-512 BW / BF16.
set_source_files_properties(${CMAKE_CURRENT_SOURCE_DIR}/test_amx_int8_emulated.c PROPERTIES COMPILE_OPTIONS
  "-mavx512f;-mavx512bw;-mavx512vl;-mavx512dq;-mavx512bf16;-mfma;-mf16c;-mavx2")
# ...built with a deliberate bug (NMLX_AMX8_BREAK=1: the low bytes of x
# dropped; 2: each group takes the previous group's scale; 3: the codes' top
# bit lost): these must fail, so the bound would catch such a bug
if(CMAKE_HOST_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64" AND NMLX_NO_BF16 EQUAL 0)
  foreach(brk 1 2 3)
    add_executable(test_amx_int8_broken${brk} ${CMAKE_CURRENT_SOURCE_DIR}/test_amx_int8_emulated.c)
    target_include_directories(test_amx_int8_broken${brk} PRIVATE ${CMAKE_SOURCE_DIR}/src ${CMAKE_CURRENT_SOURCE_DIR})
    target_link_libraries(test_amx_int8_broken${brk} PRIVATE nmlx)
    target_compile_definitions(test_amx_int8_broken${brk} PRIVATE NMLX_AMX8_BREAK=${brk})
    add_test(NAME amx_int8_broken${brk}_must_fail COMMAND test_amx_int8_broken${brk})
    set_tests_properties(amx_int8_broken${brk}_must_fail PROPERTIES WILL_FAIL TRUE)
  endforeach()
endif()
# ...and with the real tiles (CPUs with AMX-INT8; skipped elsewhere and with NMLX_AMX=0)
add_executable(test_amx_int8_real ${CMAKE_CURRENT_SOURCE_DIR}/test_amx_int8_emulated.c)
target_include_directories(test_amx_int8_real PRIVATE ${CMAKE_SOURCE_DIR}/src ${CMAKE_CURRENT_SOURCE_DIR})
target_link_libraries(test_amx_int8_real PRIVATE nmlx)
target_compile_definitions(test_amx_int8_real PRIVATE NMLX_AMX8_REAL=1)
target_compile_options(test_amx_int8_real PRIVATE -mamx-tile -mamx-int8 -mamx-bf16 -mavx512f
  -mavx512bw -mavx512vl -mavx512dq -mavx512bf16 -mfma -mf16c -mavx2)
add_test(NAME test_amx_int8_real COMMAND test_amx_int8_real WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
# The whole backend with the AMX-INT8 prefill forced from T = 24
# (NMLX_AMX_INT8=1; on a CPU without AMX-INT8 the usual kernels run): the
# kernel tests, the fixtures and the precision contract (the same figures as
# the int16 prefill: the same bits)
foreach(t test_quant_kernels test_fixtures test_precision)
  add_test(NAME ${t}_amx8 COMMAND ${t} WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(${t}_amx8 PROPERTIES ENVIRONMENT
    "NMLX_AMX_INT8=1;NMLX_PICK_CACHE=0;NMLX_SOURCE_DIR=${CMAKE_SOURCE_DIR};NMLX_BINARY_DIR=${CMAKE_BINARY_DIR}")
endforeach()
# ...and with the int16 VNNI prefill off, as the one-time pick can leave it on
# a loaded machine (its timing lost to f32): the AMX-INT8 kernel still runs
# the int16 arithmetic, and the tests must hold it to that bound
add_test(NAME test_quant_kernels_amx8_no_int16 COMMAND test_quant_kernels
  WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set_tests_properties(test_quant_kernels_amx8_no_int16 PROPERTIES ENVIRONMENT
  "NMLX_AMX_INT8=1;NMLX_QUANT_INT16=0;NMLX_PICK_CACHE=0;NMLX_SOURCE_DIR=${CMAKE_SOURCE_DIR}")
# ...and test_precision on emulated AMX-INT8 tiles (any AVX512_BF16 CPU),
# once more with the low bytes of x dropped (must fail: the contract's
# bound sees it)
nmlx_amx_emu_test(test_precision_amx8_emu test_precision)
add_test(NAME test_precision_amx8_emu COMMAND test_precision_amx8_emu WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set_tests_properties(test_precision_amx8_emu PROPERTIES ENVIRONMENT
  "NMLX_AMX_INT8=1;NMLX_PICK_CACHE=0;NMLX_SOURCE_DIR=${CMAKE_SOURCE_DIR}")
if(CMAKE_HOST_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64" AND NMLX_NO_BF16 EQUAL 0)
  nmlx_amx_emu_test(test_precision_amx8_broken1 test_precision NMLX_AMX8_BREAK=1)
  add_test(NAME precision_amx8_broken1_must_fail COMMAND test_precision_amx8_broken1
    WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(precision_amx8_broken1_must_fail PROPERTIES WILL_FAIL TRUE ENVIRONMENT
    "NMLX_AMX_INT8=1;NMLX_PICK_CACHE=0;NMLX_SOURCE_DIR=${CMAKE_SOURCE_DIR}")
endif()
