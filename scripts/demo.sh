#!/usr/bin/env bash
# The demo behind `make demo`: a git-annex repository, a cluster of three
# local directories as one remote, and a lost disk that costs no data.
# Run it through `make demo`, which sets up git-annex and this project first.
set -euo pipefail

DEMO=${DEMO_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/git-annex-cluster-demo.XXXXXX")}
mkdir -p "$DEMO"
export GIT_AUTHOR_NAME=${GIT_AUTHOR_NAME:-demo} GIT_AUTHOR_EMAIL=${GIT_AUTHOR_EMAIL:-demo@localhost}
export GIT_COMMITTER_NAME=${GIT_COMMITTER_NAME:-demo} GIT_COMMITTER_EMAIL=${GIT_COMMITTER_EMAIL:-demo@localhost}

bold=""; plain=""
if [ -t 1 ]; then bold=$(tput bold 2>/dev/null || true); plain=$(tput sgr0 2>/dev/null || true); fi
say() { printf '\n%s==> %s%s\n' "$bold" "$*" "$plain"; }
run() { printf '%s$ %s%s\n' "$bold" "$*" "$plain"; "$@"; }
objects_per_node() {
  for d in disk1 disk2 disk3; do
    if [ -d "$DEMO/nodes/$d" ]; then
      n=$(find "$DEMO/nodes/$d" -path '*/tmp' -prune -o -type f -print | wc -l)
      echo "   $d: $n object(s)"
    else
      echo "   $d: (gone)"
    fi
  done
}

say "Using $(git annex version --raw) and $(command -v git-annex-remote-cluster)"
echo "Everything happens under $DEMO"

say "Three directories stand in for three disks (or three servers) of a cluster"
run mkdir -p "$DEMO/nodes/disk1" "$DEMO/nodes/disk2" "$DEMO/nodes/disk3"

say "A git-annex repository with some data in it"
run git init -q "$DEMO/repo"
cd "$DEMO/repo"
run git annex init -q "demo laptop"
mkdir -p data
for i in 1 2 3 4 5; do echo "measurement $i taken $(date -u +%FT%TZ)" > "data/run$i.txt"; done
head -c 3M /dev/urandom > data/scan.bin
run git annex add -q data
run git commit -q -m "add the data"

say "Make the cluster one git-annex remote: each file goes to 2 of the 3 disks"
run git annex initremote demo type=external externaltype=cluster encryption=none \
  nodes="disk1=file://$DEMO/nodes/disk1 disk2=file://$DEMO/nodes/disk2 disk3=file://$DEMO/nodes/disk3" \
  copies=2

say "Copy everything to the cluster"
run git annex copy --to demo data

say "git-annex knows the cluster has every file"
run git annex whereis data/scan.bin data/run1.txt
say "The cluster remote, as git annex info shows it"
run git annex info demo
say "Behind it, the objects are spread over the disks (6 files x 2 copies = 12)"
objects_per_node

say "Drop the local copies: git-annex checks that the cluster really has them first"
run git annex drop data

say "Disaster: disk1 dies"
run rm -rf "$DEMO/nodes/disk1"
objects_per_node

say "Get everything back: each file still has a copy on a surviving disk"
run git annex get data
run git annex fsck -q data
echo "Every file is back and its checksum verified."

say "Done. Explore $DEMO, or remove it with: rm -rf $DEMO"
