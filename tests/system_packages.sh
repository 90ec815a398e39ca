#!/usr/bin/env bash
# Debian packages some tests need: headless Chromium + its driver (the Prefect UI in a browser),
# PostgreSQL (a team Prefect server, Optuna storage) and nginx (TLS in front of the team server).
# Installed where the machine allows it (root with apt-get); elsewhere those tests skip and name the
# missing package. Never fails the test command.
PACKAGES="chromium chromium-driver postgresql nginx"
missing=""
for p in $PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "note: not installing$missing (needs root and apt-get); the tests that need them will skip" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
{ apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing; } >/tmp/cifar-pipeline-apt.log 2>&1 \
  || echo "note: apt-get could not install$missing (see /tmp/cifar-pipeline-apt.log); those tests will skip" >&2
exit 0
