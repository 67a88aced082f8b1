# cuda_qgemm.cu's element kernels (the row-chunk dequantization, the GEMM
# output joins) run on the CPU (tests/cuda/qgemm_emu.cpp, warp_emu.h's
# fibers) against plain loops, bit for bit: no GPU or nvcc needed.
include(CheckLanguage)
check_language(CXX)
if(CMAKE_CXX_COMPILER)
  enable_language(CXX)
  add_executable(qgemm_emu ${CMAKE_CURRENT_SOURCE_DIR}/cuda/qgemm_emu.cpp)
  target_include_directories(qgemm_emu PRIVATE ${CMAKE_SOURCE_DIR}/src ${CMAKE_SOURCE_DIR}/include)
  set_target_properties(qgemm_emu PROPERTIES CXX_STANDARD 20 CXX_STANDARD_REQUIRED ON)
  target_compile_definitions(qgemm_emu PRIVATE NMLX_QGEMM_EMU)
  # the kernel's #pragma unroll; its 16-byte stores through uint4 casts
  target_compile_options(qgemm_emu PRIVATE -Wall -Wextra -Wno-unknown-pragmas -fno-strict-aliasing)
  add_test(NAME qgemm_emu COMMAND qgemm_emu)
endif()
