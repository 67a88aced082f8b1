# The CUDA dense add_rmsnorm_matmul kernel (src/compute/cuda/cuda_gemv_dev.cuh)
# on the CPU, one fiber a CUDA thread (tests/cuda/gemv_norm_emu.cpp,
# warp_emu.h): x, y and every output equal the unfused kernels' bit for bit.
# Needs only a C++20 compiler (no CUDA).
include(CheckLanguage)
check_language(CXX)
if(CMAKE_CXX_COMPILER)
  enable_language(CXX)
  add_executable(test_gemv_norm_emu ${CMAKE_CURRENT_SOURCE_DIR}/cuda/gemv_norm_emu.cpp)
  set_target_properties(test_gemv_norm_emu PROPERTIES CXX_STANDARD 20 CXX_STANDARD_REQUIRED ON)
  target_compile_definitions(test_gemv_norm_emu PRIVATE NMLX_GEMV_EMU)
  # the two kernels' float operations as written (no FMA contraction); wvec<__half>
  # reads a uint4 as __half2 (fine in CUDA, aliasing in host C++)
  target_compile_options(test_gemv_norm_emu PRIVATE -Wno-unknown-pragmas -ffp-contract=off
                                             -fno-strict-aliasing)
  target_include_directories(test_gemv_norm_emu PRIVATE ${CMAKE_SOURCE_DIR}/src
                                                        ${CMAKE_SOURCE_DIR}/include)
  add_test(NAME test_gemv_norm_emu COMMAND test_gemv_norm_emu quick
    WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
endif()
