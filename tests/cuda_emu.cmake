# The few-rows v2 CUDA kernel (src/compute/cuda/cuda_qrows2.h) emulated on
# the CPU (tests/cuda/qrows2_emu.cpp: host C++20, no CUDA header), so that
# its warp logic is checked in every build, with or without a GPU or CUDA;
# and two deliberately broken builds of it (QR2_BREAK=1: A fragment halves
# crossed; 2: the split-K counters not put back to 0) that must fail.
include(CheckLanguage)
check_language(CXX)
if(CMAKE_CXX_COMPILER)
  enable_language(CXX)
  function(nmlx_qrows2_emu name brk)
    add_executable(${name} ${CMAKE_CURRENT_SOURCE_DIR}/cuda/qrows2_emu.cpp)
    target_include_directories(${name} PRIVATE ${CMAKE_SOURCE_DIR}/src)
    set_target_properties(${name} PROPERTIES CXX_STANDARD 20 CXX_STANDARD_REQUIRED ON)
    target_compile_options(${name} PRIVATE -Wall -Wextra -Wno-unknown-pragmas)
    if(brk)
      target_compile_definitions(${name} PRIVATE QR2_BREAK=${brk})
    endif()
  endfunction()
  nmlx_qrows2_emu(test_qrows2_emu 0)
  add_test(NAME test_qrows2_emu COMMAND test_qrows2_emu)
  foreach(brk 1 2)
    nmlx_qrows2_emu(test_qrows2_emu_broken${brk} ${brk})
    add_test(NAME test_qrows2_emu_broken${brk} COMMAND test_qrows2_emu_broken${brk} quick)
    set_tests_properties(test_qrows2_emu_broken${brk} PROPERTIES WILL_FAIL TRUE)
  endforeach()
endif()
