#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Every source, script and build file of the tree carries an
# SPDX-License-Identifier line in its first three lines, with the licence of
# its place: GPL-2.0-only OR BSD-3-Clause for the guest kernel driver and the
# VFIO selftests' driver, BSD-3-Clause everywhere else. Data and prose (the
# fuzz corpora, Markdown, JSON, debian's control files) carry none.
#   check_spdx.sh SOURCE_DIR
set -euo pipefail
cd "$1"
bad=0
checked=0
while IFS= read -r -d '' f; do
  f=${f#./}
  case "$f" in
    guest/*|tests/kselftest/*) want="GPL-2.0-only OR BSD-3-Clause" ;;
    *) want="BSD-3-Clause" ;;
  esac
  checked=$((checked + 1))
  got=$(head -3 "$f" | sed -n 's/.*SPDX-License-Identifier: \(.*[^ */]\)[ */]*$/\1/p' | head -1)
  if [ "$got" != "$want" ]; then
    echo "$f: SPDX-License-Identifier ${got:-missing}, expected $want"
    bad=$((bad + 1))
  fi
done < <(find . \( -path ./build -o -path ./.git -o -path ./fuzz/corpus -o -path ./artifacts -o -path ./debian/.debhelper \
                 -o -path './debian/uvfio*' -o -path './debian/libuvfio*' -o -path ./obj-\* \) -prune -o \
              -type f \( -name '*.cc' -o -name '*.h' -o -name '*.c' -o -name '*.sh' -o -name '*.scd' -o -name '*.in' \
                 -o -name '*.map' -o -name '*.bash' -o -name CMakeLists.txt -o -name '*.cmake' -o -name Kbuild \
                 -o -path ./debian/rules \) -print0)
echo "check_spdx: $checked files, $bad without their SPDX line"
[ "$checked" -gt 100 ] || { echo "check_spdx: too few files found: wrong directory?"; exit 1; }
[ "$bad" -eq 0 ]
