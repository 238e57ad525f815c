#!/usr/bin/env bash
# Installs the system packages the test suite needs beyond Rust, Python/pip and gcc: a Vulkan
# loader and Mesa's lavapipe (a Vulkan driver that runs on the CPU), so the wgpu tests run on a
# machine without a GPU. Does nothing when a Vulkan driver is already installed.
set -euo pipefail

have_vulkan_driver() {
  ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1' || return 1
  for dir in /usr/share/vulkan/icd.d /etc/vulkan/icd.d; do
    compgen -G "$dir/*.json" > /dev/null && return 0
  done
  return 1
}

if have_vulkan_driver; then
  exit 0
fi

packages=(libvulkan1 mesa-vulkan-drivers)
if ! command -v apt-get > /dev/null; then
  echo "error: no Vulkan driver found and no apt-get to install one; install a Vulkan loader and driver (on Debian/Ubuntu: ${packages[*]}) and rerun" >&2
  exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo > /dev/null; then sudo=(sudo); else
    echo "error: installing ${packages[*]} needs root (no sudo here); install them and rerun" >&2
    exit 1
  fi
fi
echo "installing ${packages[*]} (Vulkan on the CPU for the wgpu tests)" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get install -y --no-install-recommends "${packages[@]}" > /dev/null 2>&1 || {
  "${sudo[@]}" apt-get update > /dev/null
  "${sudo[@]}" apt-get install -y --no-install-recommends "${packages[@]}" > /dev/null
}
have_vulkan_driver || { echo "error: ${packages[*]} installed but no Vulkan driver is registered" >&2; exit 1; }
