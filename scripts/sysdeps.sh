#!/bin/sh
# Install the Debian packages named on the command line when they are missing.
# As root it runs apt-get; otherwise it says what to install and carries on,
# since tests that need a missing package skip with a reason.
set -eu
missing=""
for pkg in "$@"; do
  case $pkg in
    git) have() { command -v git >/dev/null; } ;;
    gnupg) have() { command -v gpg >/dev/null; } ;;
    openssh-server) have() { test -x /usr/sbin/sshd; } ;;
    # Debian's git-annex (10.20230126) is the old client of the compatibility tests;
    # the current git-annex comes from PyPI into the virtualenv.
    git-annex) have() { test -x /usr/bin/git-annex; } ;;
    # docs/deploy-http.md's nginx site and nftables ruleset are tested as written:
    # the tests run their own nginx (-c, on loopback ports) and only check rules (nft -c).
    nginx) have() { test -x /usr/sbin/nginx; } ;;
    nftables) have() { test -x /usr/sbin/nft; } ;;
    # GNU time: the benchmarks' peak RSS of a command (bench/harness.py).
    time) have() { test -x /usr/bin/time; } ;;
    *) echo "sysdeps.sh: unknown package $pkg" >&2; exit 2 ;;
  esac
  have || missing="$missing $pkg"
done
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then missing="$missing python3-venv"; fi
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ]; then
  echo "Installing Debian packages:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  # shellcheck disable=SC2086
  apt-get install -y -q --no-install-recommends $missing >/dev/null
else
  echo "Missing Debian packages:$missing" >&2
  echo "Install them with: sudo apt-get install$missing" >&2
  case " $missing " in
    *" git "*|*" python3-venv "*) exit 1 ;;
  esac
  echo "(continuing: tests that need them will be skipped)" >&2
fi
