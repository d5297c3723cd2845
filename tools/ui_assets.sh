#!/usr/bin/env bash
# The browser-side libraries of `ravel ui`, from their packages with their licences, into
# ravel/ui/static/vendor (not in git; in the wheel): xterm.js and its fit add-on from the npm
# registry (`npm pack`, pinned versions: Debian's libjs-xterm 3.8 ships no browser build), noVNC
# from Debian's novnc package (its ES modules, /usr/share/novnc). Nothing is fetched at run time.
# Idempotent: a second run with the same versions does nothing. Usage: tools/ui_assets.sh [DEST]
set -euo pipefail
XTERM=5.5.0
FIT=0.10.0
here=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-$here/ravel/ui/static/vendor}
stamp="$dest/VERSIONS"
want="xterm=$XTERM fit=$FIT novnc=$(dpkg-query -W -f='${Version}' novnc 2>/dev/null || echo none)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
test -f /usr/share/novnc/core/rfb.js || { echo "ui_assets: Debian's novnc package is missing (apt-get install novnc)" >&2; exit 1; }
command -v npm >/dev/null || { echo "ui_assets: npm is missing (apt-get install npm)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "@xterm/xterm@$XTERM" "@xterm/addon-fit@$FIT" >/dev/null)
mkdir -p "$work/x" "$work/f"
tar xzf "$work/xterm-xterm-$XTERM.tgz" -C "$work/x"
tar xzf "$work/xterm-addon-fit-$FIT.tgz" -C "$work/f"
new="$dest.new"
rm -rf "$new"
mkdir -p "$new/xterm" "$new/xterm-addon-fit" "$new/novnc"
cp "$work/x/package/lib/xterm.js" "$work/x/package/css/xterm.css" "$work/x/package/LICENSE" "$new/xterm/"
cp "$work/f/package/lib/addon-fit.js" "$work/f/package/LICENSE" "$new/xterm-addon-fit/"
cp -r /usr/share/novnc/core /usr/share/novnc/vendor "$new/novnc/"
cp /usr/share/doc/novnc/copyright "$new/novnc/COPYRIGHT"
# Debian's noVNC links some of its vendored files to other packages: copy what they point to
find "$new/novnc" -type l -exec sh -c 'for l; do t=$(readlink -f "$l"); rm "$l"; cp "$t" "$l"; done' sh {} +
echo "$want" > "$new/VERSIONS"
rm -rf "$dest"
mv "$new" "$dest"
echo "ui assets: $want -> $dest"
