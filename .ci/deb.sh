#!/usr/bin/env bash
# Builds the .deb with cargo-deb (metadata in crates/pixpool/Cargo.toml) and
# checks its contents with dpkg-deb. CI uses the debug build (`--profile dev`)
# to stay fast: what is checked is the package, not the optimiser.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || cargo install --locked cargo-deb
profile=${PIXPOOL_DEB_PROFILE:-dev}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# With PIXPOOL_BIN (set by .ci/run) the binary `cargo test --workspace` built is
# packaged as it is: `cargo deb` building `-p pixpool` alone would resolve other
# dependency features and compile them all again.
build=()
[[ -n ${PIXPOOL_BIN:-} && $profile == dev ]] && build=(--no-build)
cargo deb -p pixpool --profile "$profile" --no-strip --fast "${build[@]}" -o "$out/" --quiet
deb=$(ls "$out"/*.deb)
listing=$(dpkg-deb -c "$deb")
echo "$listing"
for want in ./usr/bin/pixpool ./lib/systemd/system/pixpool.service ./lib/systemd/system/pixpool.socket \
    ./etc/pixpool/pixpool.toml ./usr/share/doc/pixpool/LIFECYCLE.md; do
  grep -q " $want\$" <<<"$listing" || { echo "missing from the package: $want"; exit 1; }
done
# Captured first: `dpkg-deb | grep -q` under pipefail fails whenever grep exits
# at the match before dpkg-deb has finished writing (SIGPIPE).
info=$(dpkg-deb -I "$deb")
grep -q "Depends:.*adduser" <<<"$info" || { echo "the package must depend on adduser"; exit 1; }
# PIXPOOL_DEB_EXPECT: a library the build links, which the package must depend on.
if [[ -n ${PIXPOOL_DEB_EXPECT:-} ]]; then
  grep -q "Depends:.*$PIXPOOL_DEB_EXPECT" <<<"$info" || { echo "the package must depend on $PIXPOOL_DEB_EXPECT"; echo "$info"; exit 1; }
fi
ctrl=$(mktemp -d); dpkg-deb -e "$deb" "$ctrl"
for s in postinst prerm postrm conffiles; do [ -e "$ctrl/$s" ] || { echo "missing $s"; rm -rf "$ctrl"; exit 1; }; done
grep -q "adduser --system" "$ctrl/postinst" || { echo "postinst does not create the system user"; exit 1; }
grep -q "/etc/pixpool/pixpool.toml" "$ctrl/conffiles" || { echo "the config is not a conffile"; exit 1; }
rm -rf "$ctrl"
echo "package OK: $(basename "$deb")"
