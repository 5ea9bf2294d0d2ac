# Compiler set-up shared by every target: warnings, sanitizers, ccache.

find_program(SAG_CCACHE ccache)
if(SAG_CCACHE)
  set(CMAKE_C_COMPILER_LAUNCHER ${SAG_CCACHE})
  set(CMAKE_CXX_COMPILER_LAUNCHER ${SAG_CCACHE})
endif()

add_library(sag_build_flags INTERFACE)
target_compile_options(sag_build_flags INTERFACE -Wall -Wextra -Wpedantic -Wshadow
                       -Wnon-virtual-dtor -Wcast-align -Wunused -Woverloaded-virtual)
if(SAG_WERROR)
  target_compile_options(sag_build_flags INTERFACE -Werror)
endif()
if(SAG_SANITIZE)
  target_compile_options(sag_build_flags INTERFACE -fsanitize=address,undefined
                         -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  target_link_options(sag_build_flags INTERFACE -fsanitize=address,undefined)
  # The sanitizers' metadata makes millions of relative relocations (sag-agent:
  # 2.7 million, 66 MB of .rela.dyn), which ld.so applies at every exec and
  # dpkg-shlibdeps reads one objdump line at a time. Packed (DT_RELR, glibc
  # 2.36 and binutils 2.38 on): 1.1 MB, and `sag-agent --version` starts in
  # half the time, for every test that runs a binary.
  include(CheckLinkerFlag)
  check_linker_flag(CXX -Wl,-z,pack-relative-relocs SAG_HAVE_RELR)
  if(SAG_HAVE_RELR)
    target_link_options(sag_build_flags INTERFACE -Wl,-z,pack-relative-relocs)
  endif()
  # Even packed, ld.so still writes every one of them, so each exec copies
  # most of the 64 MB data segment (sag-agent --version: 23,700 page faults,
  # 0.21 s, half of it in the kernel). A position-dependent executable has
  # its addresses fixed at link time: 8,600 faults, 0.10 s. The suite starts
  # thousands of these processes (each test case, every power-cut trial's
  # agent and simulator). Test builds only: release binaries stay PIE.
  target_link_options(sag_build_flags INTERFACE
                      $<$<STREQUAL:$<TARGET_PROPERTY:TYPE>,EXECUTABLE>:-no-pie>)
else()
  # The binaries keep only the code they call: the agent's text shrinks by a
  # fifth (2.56 -> 2.07 MB), and its peak RSS during an install, of which the
  # pages of its own text the kernel maps are a part, by 300-400 KiB.
  target_compile_options(sag_build_flags INTERFACE -ffunction-sections -fdata-sections)
  target_link_options(sag_build_flags INTERFACE -Wl,--gc-sections)
endif()
# A unity build (tools/test.sh configures the test build with
# -DCMAKE_UNITY_BUILD=ON: 17.5 -> 14.5 min cold, clang-tidy 1241 -> 804 s)
# includes .cpp files into one source, so GCC takes each for a header and
# warns of its anonymous-namespace types in coroutine frames and members.
if(CMAKE_UNITY_BUILD)
  target_compile_options(sag_build_flags INTERFACE -Wno-subobject-linkage)
endif()
# Boost 1.74's asio/awaitable.hpp uses std::exchange without <utility>; every
# translation unit gets <utility> first so GCC 12 in C++20 mode compiles it.
target_compile_options(sag_build_flags INTERFACE -include utility)
target_compile_definitions(sag_build_flags INTERFACE BOOST_ASIO_NO_DEPRECATED
                           SAG_VERSION="${PROJECT_VERSION}")

# sag_module(NAME SOURCES... LINKS...) is how a module library is declared,
# so every module looks the same in CMake.
# Release code is compiled for size (-Os): nearly all of it waits on the
# network, the event loop, a hook or a person, or runs once per job, and the
# daemon's idle RSS is mostly its own mapped code (bench/daemon_bench.sh:
# -0.9 MiB). The install's data path is named with sag_speed_critical() and
# is compiled with -O2 (smaller code than -O3; its speed against -O3 is not measured yet).
set(SAG_SIZE_FLAGS $<$<CONFIG:Release,RelWithDebInfo,MinSizeRel>:-Os>)
set(SAG_SPEED_FLAGS $<$<CONFIG:Release,RelWithDebInfo,MinSizeRel>:-O2>)

function(sag_module name)
  cmake_parse_arguments(M "" "" "SOURCES;LINKS" ${ARGN})
  add_library(${name} STATIC ${M_SOURCES})
  target_include_directories(${name} PUBLIC ${PROJECT_SOURCE_DIR})
  target_link_libraries(${name} PUBLIC ${M_LINKS} PRIVATE sag_build_flags)
  target_compile_options(${name} PRIVATE ${SAG_SIZE_FLAGS})
endfunction()

# sag_speed_critical(TARGET SOURCES...): files of TARGET on the install's
# data path (read, hash, decompress, write, extract), compiled for speed.
function(sag_speed_critical target)
  set_source_files_properties(${ARGN} TARGET_DIRECTORY ${target} PROPERTIES COMPILE_OPTIONS
                              "${SAG_SPEED_FLAGS}")
endfunction()

function(sag_executable name)
  cmake_parse_arguments(E "" "" "SOURCES;LINKS" ${ARGN})
  add_executable(${name} ${E_SOURCES})
  target_link_libraries(${name} PRIVATE ${E_LINKS} sag_build_flags)
endfunction()

