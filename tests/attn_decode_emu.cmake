# cuda_attention_decode.cu's flash-decoding kernel run on the CPU
# (tests/cuda/attn_decode_emu.cpp: its threads as fibers, its blocks in a
# shuffled order) against a double-precision reference: no GPU or nvcc
# needed, so every build checks its partition and merges. Three
# deliberately broken builds of it must fail (DEC_BREAK=1: the one-block
# output not normalised; 2: the counts not put back to 0; 3: the last
# block found by counting all S blocks instead of the nb with keys; 4: the
# short-context kernel's output not normalised; 5: the phased kernel's).
include(CheckLanguage)
check_language(CXX)
if(CMAKE_CXX_COMPILER)
  enable_language(CXX)
  function(nmlx_attn_decode_emu name brk)
    add_executable(${name} ${CMAKE_CURRENT_SOURCE_DIR}/cuda/attn_decode_emu.cpp)
    target_include_directories(${name} PRIVATE ${CMAKE_SOURCE_DIR}/src ${CMAKE_SOURCE_DIR}/include)
    set_target_properties(${name} PROPERTIES CXX_STANDARD 20 CXX_STANDARD_REQUIRED ON)
    target_compile_options(${name} PRIVATE -Wall -Wextra -Wno-unknown-pragmas) # the kernel's #pragma unroll
    if(brk)
      target_compile_definitions(${name} PRIVATE DEC_BREAK=${brk})
    endif()
  endfunction()
  nmlx_attn_decode_emu(attn_decode_emu 0)
  add_test(NAME attn_decode_emu COMMAND attn_decode_emu)
  foreach(brk 1 2 3 4 5)
    nmlx_attn_decode_emu(attn_decode_emu_broken${brk} ${brk})
    add_test(NAME attn_decode_emu_broken${brk} COMMAND attn_decode_emu_broken${brk} quick)
    set_tests_properties(attn_decode_emu_broken${brk} PROPERTIES WILL_FAIL TRUE)
  endforeach()
endif()
