#!/usr/bin/env bash
# Builds the eddy Debian package (the lean daemon, /etc/eddy/eddy.toml, the
# hardened systemd unit) for each target given, default the host:
#
#   deploy/debian/build-deb.sh                                   # amd64
#   deploy/debian/build-deb.sh aarch64-unknown-linux-gnu         # arm64
#   deploy/debian/build-deb.sh armv7-unknown-linux-gnueabihf     # armhf
#
# Needs cargo-deb (cargo install cargo-deb --locked) and, for ARM, Debian's
# cross compilers (gcc-aarch64-linux-gnu, gcc-arm-linux-gnueabihf) and
# `rustup target add TRIPLE`; the linkers are set in .cargo/config.toml.
# Prints the path of each .deb written (target/debian/eddy_VERSION_ARCH.deb).
set -euo pipefail
cd "$(dirname "$0")/../.."

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("")
for target in "${targets[@]}"; do
  args=(deb --locked -p eddy-cli)
  [ -z "$target" ] || args+=(--target "$target")
  # cargo deb prints the path of the package it wrote as its last line.
  cargo "${args[@]}" | tail -1
done
