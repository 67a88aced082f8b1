# The few-rows v2 and v3 CUDA kernels (src/compute/cuda/cuda_qrows2.h,
# cuda_qrows3.h, and v2 grouped over MoE experts: cuda_qrows2_group.h) emulated on the CPU (tests/cuda/qrows2_emu.cpp: host C++20,
# no CUDA header), so that their warp logic, and v3 = v2 bit for bit, are
# checked in every build, with or without a GPU or CUDA; and deliberately
# broken builds that must fail: QR2_BREAK=1 (v2's A fragment halves crossed),
# 2 (v2's split-K counters not put back to 0), 3 (the grouped MoE kernel
# reads the first task's chunk sums for every task), QR3_BREAK=1 (v3's staged
# chunk sums in another order: within the error bounds, not v2's bits), 2
# (v3 stages a piece while warps still read the one before: no barrier).
include(CheckLanguage)
check_language(CXX)
if(CMAKE_CXX_COMPILER)
  enable_language(CXX)
  function(nmlx_qrows2_emu name def)
    add_executable(${name} ${CMAKE_CURRENT_SOURCE_DIR}/cuda/qrows2_emu.cpp)
    target_include_directories(${name} PRIVATE ${CMAKE_SOURCE_DIR}/src)
    set_target_properties(${name} PROPERTIES CXX_STANDARD 20 CXX_STANDARD_REQUIRED ON)
    target_compile_options(${name} PRIVATE -Wall -Wextra -Wno-unknown-pragmas)
    if(def)
      target_compile_definitions(${name} PRIVATE ${def})
    endif()
  endfunction()
  nmlx_qrows2_emu(test_qrows2_emu "")
  add_test(NAME test_qrows2_emu COMMAND test_qrows2_emu)
  foreach(brk QR2_BREAK=1 QR2_BREAK=2 QR2_BREAK=3 QR3_BREAK=1 QR3_BREAK=2)
    string(REGEX REPLACE "QR([23])_BREAK=([0-9])" "test_qrows\\1_emu_broken\\2" name ${brk})
    nmlx_qrows2_emu(${name} ${brk})
    add_test(NAME ${name} COMMAND ${name} quick)
    set_tests_properties(${name} PROPERTIES WILL_FAIL TRUE)
  endforeach()
endif()

# The fused quantized mat-mat (src/compute/cuda/cuda_qmm_fused.h: the dense
# prefill's opt-in tile and the MoE prefill's grouped form, MXFP4 included)
# emulated on the CPU (tests/cuda/qmm_fused_emu.cpp, quick cases), where the
# CUDA toolkit's headers are installed (it takes __half from cuda_fp16.h);
# QF_BREAK=1 (the grouped form's tasks read the first task's rows) must fail.
find_path(NMLX_CUDA_FP16_DIR cuda_fp16.h
          HINTS ${CUDAToolkit_INCLUDE_DIRS} /usr/local/cuda/include /usr/include)
if(CMAKE_CXX_COMPILER AND NMLX_CUDA_FP16_DIR)
  function(nmlx_qmm_fused_emu name def)
    add_executable(${name} ${CMAKE_CURRENT_SOURCE_DIR}/cuda/qmm_fused_emu.cpp)
    target_include_directories(${name} PRIVATE ${CMAKE_SOURCE_DIR}/src ${CMAKE_SOURCE_DIR}/include)
    target_include_directories(${name} SYSTEM PRIVATE ${NMLX_CUDA_FP16_DIR})
    set_target_properties(${name} PROPERTIES CXX_STANDARD 20 CXX_STANDARD_REQUIRED ON)
    target_compile_definitions(${name} PRIVATE NMLX_QMM_EMU ${def})
    target_compile_options(${name} PRIVATE -Wall -Wextra -Wno-unknown-pragmas -Wno-unused-parameter)
  endfunction()
  nmlx_qmm_fused_emu(test_qmm_fused_emu "")
  add_test(NAME test_qmm_fused_emu COMMAND test_qmm_fused_emu quick)
  nmlx_qmm_fused_emu(test_qmm_fused_emu_broken1 QF_BREAK=1)
  add_test(NAME test_qmm_fused_emu_broken1 COMMAND test_qmm_fused_emu_broken1 quick grouped)
  set_tests_properties(test_qmm_fused_emu_broken1 PROPERTIES WILL_FAIL TRUE)
endif()
