# The CUDA int16 mat-vec kernels (src/compute/cuda/cuda_qgemv16_dev.cuh) run
# on the CPU, one fiber a CUDA thread (tests/cuda/qgemv16_emu.cpp, warp_emu.h):
# kernel v2 equals v1 bit for bit, v1 is within its bound of a double
# reference. Needs only a C++20 compiler (no CUDA).
include(CheckLanguage)
check_language(CXX)
if(CMAKE_CXX_COMPILER)
  enable_language(CXX)
  add_executable(test_qgemv16_emu ${CMAKE_CURRENT_SOURCE_DIR}/cuda/qgemv16_emu.cpp)
  set_target_properties(test_qgemv16_emu PROPERTIES CXX_STANDARD 20 CXX_STANDARD_REQUIRED ON)
  target_compile_definitions(test_qgemv16_emu PRIVATE NMLX_QGEMV16_EMU)
  target_compile_options(test_qgemv16_emu PRIVATE -Wno-unknown-pragmas)
  target_include_directories(test_qgemv16_emu PRIVATE ${CMAKE_SOURCE_DIR}/src
                                                      ${CMAKE_SOURCE_DIR}/include)
  add_test(NAME test_qgemv16_emu COMMAND test_qgemv16_emu quick
    WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
endif()
