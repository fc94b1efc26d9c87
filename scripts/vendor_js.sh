#!/usr/bin/env bash
# Fetch the third-party JavaScript the HTML book needs to work offline into _vendor/ (git-ignored).
#
#   _vendor/widgets/require.js      requirejs 2.3.7 (the browser loader, package root require.js)
#   _vendor/widgets/embed-amd.js    @jupyter-widgets/html-manager 1.0.6, dist/embed-amd.js: the AMD
#                                   widget manager plus the script that renders the saved widget state
#   _vendor/mathjax/                mathjax 3.2.2, es5/: tex-mml-chtml.js and the components it loads
#
# _config.yml lists _vendor in html_static_path and points nb_ipywidgets_js and mathjax_path at these
# files, so nothing is loaded from a CDN. Packages come from the npm registry with `npm pack`, pinned
# by version and checked by sha256. Nothing here is committed. Idempotent: exits at once when _vendor/
# already holds these exact versions.
set -euo pipefail
cd "$(dirname "$0")/.."

VENDOR=_vendor
HTML_MANAGER=@jupyter-widgets/html-manager@1.0.6
REQUIREJS=requirejs@2.3.7
MATHJAX=mathjax@3.2.2
declare -A SHA256=(
  [jupyter-widgets-html-manager-1.0.6.tgz]=6c198ceb99ba7e7526990a1de16e8147ad7d3a714e3fb06741183623c04b5f6e
  [requirejs-2.3.7.tgz]=31f3330c978fb28684622fe71165dc946432cf0210b2ea8a1ca0233e70f2737d
  [mathjax-3.2.2.tgz]=1b9c0a1c44df864e915690558e72adb9cc5203360daefd385084ced3b6c64c09
)
WANT="$HTML_MANAGER $REQUIREJS $MATHJAX"

if [[ -f $VENDOR/.stamp && "$(<"$VENDOR/.stamp")" == "$WANT"
      && -f $VENDOR/widgets/require.js && -f $VENDOR/widgets/embed-amd.js
      && -f $VENDOR/mathjax/tex-mml-chtml.js ]]; then
  echo "vendor_js: _vendor/ is up to date ($WANT)"
  exit 0
fi
if ! command -v npm >/dev/null; then
  echo "vendor_js: npm not found; install Node.js and npm (Debian: apt-get install -y npm)" >&2
  exit 1
fi

# Build in a temporary folder beside _vendor/, then swap it in, so a failed fetch leaves no half state.
tmp=$(mktemp -d "./$VENDOR.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$HTML_MANAGER" "$REQUIREJS" "$MATHJAX" >/dev/null)
for tgz in "${!SHA256[@]}"; do
  echo "${SHA256[$tgz]}  $tmp/$tgz" | sha256sum --check --quiet \
    || { echo "vendor_js: checksum mismatch for $tgz" >&2; exit 1; }
  mkdir -p "$tmp/${tgz%.tgz}"
  tar xzf "$tmp/$tgz" -C "$tmp/${tgz%.tgz}"
done

out=$tmp/out
mkdir -p "$out/widgets" "$out/mathjax"
hm=$tmp/jupyter-widgets-html-manager-1.0.6/package
rq=$tmp/requirejs-2.3.7/package
mj=$tmp/mathjax-3.2.2/package

cp "$rq/require.js" "$out/widgets/require.js"   # its MIT licence header is in the file
cp "$hm/dist/embed-amd.js" "$out/widgets/embed-amd.js"
# The widget CSS bundled in embed-amd.js refers to its icon fonts by file name, next to the script.
cp "$hm"/dist/*.woff "$hm"/dist/*.woff2 "$out/widgets/"
cp "$hm/LICENSE" "$out/widgets/LICENSE-html-manager.txt"

# MathJax: the combined TeX+MathML -> CommonHTML component, and what it loads on demand
# (TeX extensions, fonts, the menu, accessibility and speech components).
cp "$mj/es5/tex-mml-chtml.js" "$out/mathjax/"
for part in input output/chtml.js output/chtml ui a11y sre adaptors; do
  mkdir -p "$out/mathjax/$(dirname "$part")"
  cp -r "$mj/es5/$part" "$out/mathjax/$part"
done
cp "$mj/LICENSE" "$out/mathjax/LICENSE.txt"

echo "$WANT" > "$out/.stamp"
rm -rf "$VENDOR"
mv "$out" "$VENDOR"
echo "vendor_js: fetched $WANT into $VENDOR/"
