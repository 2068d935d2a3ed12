#!/usr/bin/env bash
# Optional system data: Debian's Fashion-MNIST. Installed only where apt exists and we are root;
# otherwise say how to get it. Never fails the setup.
set -u
if dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing Debian's dataset-fashion-mnist (optional; used by --data fashion_mnist)..."
  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
    || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) \
    && exit 0
fi
echo "note: Fashion-MNIST not installed (needs root and apt: apt-get install dataset-fashion-mnist); the other data sets work." >&2
exit 0
