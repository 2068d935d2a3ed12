#!/usr/bin/env bash
# Optional system data: Debian's Fashion-MNIST (used by --data fashion_mnist).
#   --check    (make setup) say whether it is installed and how to install it; change nothing
#   --install  (make fashion-mnist) install it with apt-get (needs root or sudo)
set -u
mode="${1:---check}"
if dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then exit 0; fi
if [ "$mode" = "--install" ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: apt-get not found; Fashion-MNIST comes from Debian's dataset-fashion-mnist package." >&2
    exit 1
  fi
  $sudo apt-get install -y -q dataset-fashion-mnist || ($sudo apt-get update -q && $sudo apt-get install -y -q dataset-fashion-mnist)
  exit $?
fi
echo "note: Fashion-MNIST is not installed (optional; --data fashion_mnist). Install it with: make fashion-mnist" >&2
exit 0
