#!/usr/bin/env bash
# gencheck.sh fails if the generated code under proto/ is not what the
# committed .proto files and pinned generators produce. It regenerates in
# place, so a failing run leaves the fresh output in the work tree.
#
# Usage: tools/gencheck.sh   (or `make gen-check`; CI runs it)
set -euo pipefail

tools="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$tools/gen.sh"
cd "$tools/.."

if ! git diff --quiet -- proto/; then
	echo "gencheck: proto/ differs from what is committed (stale generated code, or uncommitted .proto edits):" >&2
	git diff --stat -- proto/ >&2
	echo "gencheck: run 'make gen' and commit the result." >&2
	exit 1
fi
untracked="$(git ls-files --others --exclude-standard -- proto/)"
if [ -n "$untracked" ]; then
	echo "gencheck: files under proto/ are not committed:" >&2
	sed 's/^/  /' <<<"$untracked" >&2
	echo "gencheck: run 'make gen', then git add and commit them (or delete them)." >&2
	exit 1
fi
echo "gencheck: proto/ is up to date."
