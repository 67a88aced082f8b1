# cuda_attention_decode.cu's flash-decoding kernel run on the CPU
# (tests/cuda/attn_decode_emu.cpp: its threads as fibers, its blocks in a
# shuffled order) against a double-precision reference: no GPU or nvcc
# needed, so every build checks its partition and merges.
include(CheckLanguage)
check_language(CXX)
if(CMAKE_CXX_COMPILER)
  enable_language(CXX)
  add_executable(attn_decode_emu ${CMAKE_CURRENT_SOURCE_DIR}/cuda/attn_decode_emu.cpp)
  target_include_directories(attn_decode_emu PRIVATE ${CMAKE_SOURCE_DIR}/src ${CMAKE_SOURCE_DIR}/include)
  set_target_properties(attn_decode_emu PROPERTIES CXX_STANDARD 20 CXX_STANDARD_REQUIRED ON)
  target_compile_options(attn_decode_emu PRIVATE -Wno-unknown-pragmas) # the kernel's #pragma unroll
  add_test(NAME attn_decode_emu COMMAND attn_decode_emu)
endif()
