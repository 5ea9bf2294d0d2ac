# sag_add_subdirs(): adds every direct subdirectory that has a CMakeLists.txt,
# so that parts of the tree can grow without editing a shared list.
function(sag_add_subdirs)
  file(GLOB entries LIST_DIRECTORIES true ${CMAKE_CURRENT_SOURCE_DIR}/*)
  list(SORT entries)
  foreach(d ${entries})
    if(IS_DIRECTORY ${d} AND EXISTS ${d}/CMakeLists.txt)
      add_subdirectory(${d})
    endif()
  endforeach()
endfunction()
