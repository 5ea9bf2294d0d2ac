# Install layout and Debian packages (docs/packaging.md).
#
# Two install components, one .deb each:
#   agent  -> sag-agent: the daemon, its unit, tmpfiles entry, example
#             configuration (a conffile), bootloader scripts, docs;
#   cloud  -> sag-cloud: the control plane, sag-image (images are built and
#             signed where they are served), its unit, system user, tmpfiles
#             entry, example configuration (a conffile), sag-cloud(8).
# sag-sim and sag-fake-dpi-engine are not installed: they are the simulated
# bootloader/power supply and a stand-in DPI engine, for development and tests,
# and run from the build tree.
#
# Included last by the top-level CMakeLists.txt, once every target exists.

include(GNUInstallDirs)

# Where systemd looks for vendor files. Debian 12 puts units in /lib (its
# /usr merge keeps packaged units there); ask systemd's pkg-config file, so a
# build on another distribution follows its own layout.
pkg_get_variable(_sag_unitdir systemd systemdsystemunitdir)
pkg_get_variable(_sag_sysusersdir systemd sysusersdir)
pkg_get_variable(_sag_tmpfilesdir systemd tmpfilesdir)
if(NOT _sag_unitdir)
  set(_sag_unitdir /lib/systemd/system)
endif()
if(NOT _sag_sysusersdir)
  set(_sag_sysusersdir ${CMAKE_INSTALL_PREFIX}/lib/sysusers.d)
endif()
if(NOT _sag_tmpfilesdir)
  set(_sag_tmpfilesdir ${CMAKE_INSTALL_PREFIX}/lib/tmpfiles.d)
endif()
set(SAG_SYSTEMD_UNIT_DIR ${_sag_unitdir} CACHE PATH "systemd system unit directory")
set(SAG_SYSUSERS_DIR ${_sag_sysusersdir} CACHE PATH "sysusers.d directory")
set(SAG_TMPFILES_DIR ${_sag_tmpfilesdir} CACHE PATH "tmpfiles.d directory")
# The configuration lives in /etc whatever the prefix: the units name
# /etc/sag-agent/agent.yaml and /etc/sag-cloud/cloud.yaml.
set(SAG_CONFIG_DIR /etc CACHE PATH "system configuration directory (agent.yaml, cloud.yaml)")

set(_sag_src ${PROJECT_SOURCE_DIR})
set(_sag_gen ${PROJECT_BINARY_DIR}/packaging)
file(MAKE_DIRECTORY ${_sag_gen})

# Debian wants the changelog and manual pages compressed with gzip -9n (no
# name, no time stamp: the same bytes on every build).
find_program(SAG_GZIP gzip REQUIRED)
set(_sag_gz_outputs)
function(sag_gzip_file src dst)
  add_custom_command(OUTPUT ${dst}
    COMMAND ${SAG_GZIP} -9nc ${src} > ${dst}
    DEPENDS ${src} VERBATIM)
  set(_sag_gz_outputs ${_sag_gz_outputs} ${dst} PARENT_SCOPE)
endfunction()
set(SAG_PACKAGE_MAINTAINER "sag-agent maintainers <sag-agent@example.com>"
    CACHE STRING "Maintainer field and changelog signature of the Debian packages")
set(SAG_DEB_RELEASE 1)
configure_file(packaging/changelog.in ${_sag_gen}/changelog @ONLY)
sag_gzip_file(${_sag_gen}/changelog ${_sag_gen}/changelog.Debian.gz)
sag_gzip_file(${_sag_src}/docs/man/sag-agent.8 ${_sag_gen}/sag-agent.8.gz)
sag_gzip_file(${_sag_src}/docs/man/sag-image.1 ${_sag_gen}/sag-image.1.gz)
sag_gzip_file(${_sag_src}/cloud/sag-cloud.8 ${_sag_gen}/sag-cloud.8.gz)
add_custom_target(sag_packaging_files ALL DEPENDS ${_sag_gz_outputs})

# A program in /usr/bin. Stripped for packages (CPACK_STRIP_FILES), also of
# the compiler's .comment section, as Debian's dh_strip does.
find_program(SAG_OBJCOPY NAMES objcopy ${CMAKE_OBJCOPY})
function(sag_install_program target component)
  install(TARGETS ${target} RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT ${component})
  if(SAG_OBJCOPY)
    install(CODE "if(CMAKE_INSTALL_DO_STRIP)
      execute_process(COMMAND \"${SAG_OBJCOPY}\" --remove-section=.comment
        \"\$ENV{DESTDIR}\${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_BINDIR}/${target}\")
    endif()" COMPONENT ${component})
  endif()
endfunction()

# --- sag-agent -------------------------------------------------------------
sag_install_program(sag-agent agent)
install(FILES systemd/sag-agent.service DESTINATION ${SAG_SYSTEMD_UNIT_DIR} COMPONENT agent)
install(FILES systemd/sag-agent.tmpfiles DESTINATION ${SAG_TMPFILES_DIR}
        RENAME sag-agent.conf COMPONENT agent)
install(FILES agent/examples/agent.yaml DESTINATION ${SAG_CONFIG_DIR}/sag-agent COMPONENT agent)
install(FILES platform/bootloader/boot.cmd platform/bootloader/grub.cfg
        DESTINATION ${CMAKE_INSTALL_DATADIR}/sag-agent/bootloader COMPONENT agent)
install(FILES ${_sag_gen}/sag-agent.8.gz DESTINATION ${CMAKE_INSTALL_MANDIR}/man8 COMPONENT agent)
install(FILES README.md docs/status.md docs/packaging.md docs/device-upgrade.md docs/dpi.md
              docs/boot.md docs/download.md
              packaging/copyright ${_sag_gen}/changelog.Debian.gz
        DESTINATION ${CMAKE_INSTALL_DATADIR}/doc/sag-agent COMPONENT agent)
install(FILES packaging/lintian/sag-agent DESTINATION ${CMAKE_INSTALL_DATADIR}/lintian/overrides
        COMPONENT agent)
install(FILES packaging/sag-agent-devices.conf
        DESTINATION ${CMAKE_INSTALL_DATADIR}/doc/sag-agent/examples RENAME devices.conf
        COMPONENT agent)

# --- sag-cloud -------------------------------------------------------------
sag_install_program(sag-cloud cloud)
sag_install_program(sag-image cloud)
install(FILES systemd/sag-cloud.service DESTINATION ${SAG_SYSTEMD_UNIT_DIR} COMPONENT cloud)
install(FILES systemd/sag-cloud.sysusers DESTINATION ${SAG_SYSUSERS_DIR}
        RENAME sag-cloud.conf COMPONENT cloud)
install(FILES systemd/sag-cloud.tmpfiles DESTINATION ${SAG_TMPFILES_DIR}
        RENAME sag-cloud.conf COMPONENT cloud)
install(FILES cloud/examples/cloud.yaml DESTINATION ${SAG_CONFIG_DIR}/sag-cloud COMPONENT cloud)
install(FILES packaging/lintian/sag-cloud DESTINATION ${CMAKE_INSTALL_DATADIR}/lintian/overrides
        COMPONENT cloud)
install(FILES ${_sag_gen}/sag-image.1.gz DESTINATION ${CMAKE_INSTALL_MANDIR}/man1 COMPONENT cloud)
install(FILES ${_sag_gen}/sag-cloud.8.gz DESTINATION ${CMAKE_INSTALL_MANDIR}/man8 COMPONENT cloud)
install(FILES README.md docs/packaging.md docs/cloud.md docs/protocol.md docs/image-format.md
              packaging/copyright ${_sag_gen}/changelog.Debian.gz
        DESTINATION ${CMAKE_INSTALL_DATADIR}/doc/sag-cloud COMPONENT cloud)

# --- Debian packages (cpack -G DEB) -----------------------------------------
# conffiles: every file a package puts in /etc, so that dpkg keeps the
# operator's edits on upgrade and asks before replacing them.
file(WRITE ${_sag_gen}/agent/conffiles "${SAG_CONFIG_DIR}/sag-agent/agent.yaml\n")
file(WRITE ${_sag_gen}/cloud/conffiles "${SAG_CONFIG_DIR}/sag-cloud/cloud.yaml\n")
set(_sag_cloud_control ${_sag_gen}/cloud/conffiles ${_sag_src}/packaging/deb/sag-cloud/postinst
    ${_sag_src}/packaging/deb/sag-cloud/prerm ${_sag_src}/packaging/deb/sag-cloud/postrm)

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME sag-agent)
set(CPACK_PACKAGE_VENDOR "sag-agent project")
set(CPACK_PACKAGE_CONTACT "${SAG_PACKAGE_MAINTAINER}")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_COMPONENTS_ALL agent cloud)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_STRIP_FILES ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_RELEASE ${SAG_DEB_RELEASE})
set(CPACK_DEBIAN_PACKAGE_SOURCE sag-agent)
set(CPACK_DEBIAN_PACKAGE_SECTION admin)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
if(NOT CPACK_DEBIAN_COMPRESSION_TYPE)
  set(CPACK_DEBIAN_COMPRESSION_TYPE xz)
endif()

set(CPACK_DEBIAN_AGENT_PACKAGE_NAME sag-agent)
# The extended description's lines: CPack indents each by one space.
set(CPACK_DEBIAN_AGENT_DESCRIPTION
    "upgrade agent of Smart Access Gateway appliances
sag-agent installs signed Device OS images into A/B slots (trial boot,
health checks, automatic rollback) and signed DPI signature databases
(staged, validated, swapped atomically, reloaded, confirmed), pushed by the
control plane over a mutual-TLS channel or installed locally.
.
The service is installed disabled: set the slot devices and identity in
/etc/sag-agent/agent.yaml, then run systemctl enable --now sag-agent.")
# dpkg-shlibdeps sees the linked libraries only: libarchive is loaded with
# dlopen() while a DPI package is extracted (dpi/libarchive.h).
set(CPACK_DEBIAN_AGENT_PACKAGE_DEPENDS "libarchive13")
set(CPACK_DEBIAN_AGENT_PACKAGE_SUGGESTS "grub-common, libubootenv-tool")
set(CPACK_DEBIAN_AGENT_PACKAGE_CONTROL_EXTRA
    ${_sag_gen}/agent/conffiles
    ${_sag_src}/packaging/deb/sag-agent/postinst
    ${_sag_src}/packaging/deb/sag-agent/prerm
    ${_sag_src}/packaging/deb/sag-agent/postrm)

set(CPACK_DEBIAN_CLOUD_PACKAGE_NAME sag-cloud)
set(CPACK_DEBIAN_CLOUD_DESCRIPTION
    "control plane for Smart Access Gateway upgrades
sag-cloud serves the Smartag RPC API (UpdateSmartAccessGatewayVersion), the
device channel the appliances' sag-agent connects to, and the repository of
signed images; sag-image builds, signs and verifies those images.
.
The service runs as the system user sag-cloud and is installed disabled:
write /etc/sag-cloud/cloud.yaml and its PKI, then run
systemctl enable --now sag-cloud.")
# systemd-sysusers creates the user in postinst (as debhelper's
# dh_installsysusers does, with the same dependency); the unit's ExecReload=
# runs /bin/kill (procps). dpkg-shlibdeps adds the linked libraries
# (libsqlite3-0 for the store, libssl3, ...) with versions.
set(CPACK_DEBIAN_CLOUD_PACKAGE_DEPENDS "procps, systemd | systemd-standalone-sysusers | systemd-sysusers")
set(CPACK_DEBIAN_CLOUD_PACKAGE_CONTROL_EXTRA ${_sag_cloud_control})

include(CPack)
