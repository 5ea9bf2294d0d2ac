# U-Boot boot script for sag-agent A/B boot counting (RAUC convention).
# Build with: mkimage -A arm -T script -C none -d boot.cmd boot.scr
#
#   BOOT_ORDER   slots to try, first first ("A B" or "B A")
#   BOOT_A_LEFT  tries left for slot A (0..9), decremented before each boot
#   BOOT_B_LEFT  tries left for slot B (0..9)
#
# The first slot of BOOT_ORDER with tries left boots and loses one try; the
# agent resets the counter after a healthy boot (mark good) and puts a new
# slot first for a trial. When no slot has tries left, both counters are
# reset to 3 and the board resets, so the first slot of BOOT_ORDER gets three
# more tries (a device never ends up with nothing to boot). The simulator
# (sag-sim) and platform::RunBootScript implement exactly this; see
# docs/boot.md. Counters stay below 10 because setexpr computes in hex.
#
# Board-specific: mmc device/partitions and load addresses; adapt
# sag_root_a/sag_root_b and the load commands to the board.

test -n "${BOOT_ORDER}" || setenv BOOT_ORDER "A B"
test -n "${BOOT_A_LEFT}" || setenv BOOT_A_LEFT 3
test -n "${BOOT_B_LEFT}" || setenv BOOT_B_LEFT 3
test -n "${sag_root_a}" || setenv sag_root_a /dev/mmcblk0p2
test -n "${sag_root_b}" || setenv sag_root_b /dev/mmcblk0p3

setenv bootargs
setenv sag_part
for BOOT_SLOT in "${BOOT_ORDER}"; do
  if test "x${bootargs}" != "x"; then
    # a slot was already chosen: skip the rest
  elif test "x${BOOT_SLOT}" = "xA"; then
    if test ${BOOT_A_LEFT} -gt 0; then
      setexpr BOOT_A_LEFT ${BOOT_A_LEFT} - 1
      echo "sag: booting slot A, ${BOOT_A_LEFT} tries left"
      setenv sag_part 2
      setenv bootargs "${default_bootargs} root=${sag_root_a} rootwait sag.slot=A"
    fi
  elif test "x${BOOT_SLOT}" = "xB"; then
    if test ${BOOT_B_LEFT} -gt 0; then
      setexpr BOOT_B_LEFT ${BOOT_B_LEFT} - 1
      echo "sag: booting slot B, ${BOOT_B_LEFT} tries left"
      setenv sag_part 3
      setenv bootargs "${default_bootargs} root=${sag_root_b} rootwait sag.slot=B"
    fi
  fi
done

if test -n "${bootargs}"; then
  saveenv
else
  echo "sag: no slot has tries left, resetting BOOT_A_LEFT and BOOT_B_LEFT to 3"
  setenv BOOT_A_LEFT 3
  setenv BOOT_B_LEFT 3
  saveenv
  reset
fi

load mmc 0:${sag_part} ${kernel_addr_r} /boot/Image
load mmc 0:${sag_part} ${fdt_addr_r} /boot/board.dtb
booti ${kernel_addr_r} - ${fdt_addr_r}
