#!/usr/bin/env bash
# Rebuilds the example spells and refreshes their SBOMs and signatures.
#
#   spells/build.sh                 build wasm, copy module.wasm, sbom + sign
#   spells/build.sh --modules-only  build wasm and copy module.wasm only
#
# The guests are a separate Cargo workspace (spells/Cargo.toml) built into
# spells/target for wasm32-wasip1; the sbom/sign/keygen steps use the
# spellhost CLI from the repo root. The signing key is the committed DEMO key
# in spells/demo-key (see spells/demo-key/README.md): never trust it in production.
set -euo pipefail

SPELLS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$SPELLS/.." && pwd)"
SPELL_NAMES=(hello wordfreq primes)
TARGET=wasm32-wasip1
GUEST_TARGET_DIR="${SPELLS_TARGET_DIR:-$SPELLS/target}"

modules_only=0
case "${1:-}" in
  "") ;;
  --modules-only) modules_only=1 ;;
  *) echo "usage: $0 [--modules-only]" >&2; exit 2 ;;
esac

if command -v rustup >/dev/null 2>&1; then
  if ! rustup target list --installed | grep -qx "$TARGET"; then
    rustup target add "$TARGET"
  fi
fi

echo "==> building guests ($TARGET, release)" >&2
(
  cd "$SPELLS"
  # Keep the local cargo home path (in panic location strings) out of the
  # modules, so the bytes do not depend on where the registry lives.
  cargo_home="${CARGO_HOME:-$HOME/.cargo}"
  CARGO_TARGET_DIR="$GUEST_TARGET_DIR" \
  RUSTFLAGS="${RUSTFLAGS:-} --remap-path-prefix=$cargo_home=/cargo" \
    cargo build --locked --release --target "$TARGET"
)

for name in "${SPELL_NAMES[@]}"; do
  mkdir -p "$SPELLS/$name"
  install -m 0644 "$GUEST_TARGET_DIR/$TARGET/release/$name.wasm" "$SPELLS/$name/module.wasm"
done

if [ "$modules_only" = 1 ]; then
  echo "==> modules built (sbom/sign skipped)" >&2
  exit 0
fi

spellhost() {
  cargo run --quiet --manifest-path "$ROOT/Cargo.toml" -- "$@"
}

KEY="$ROOT/spells/demo-key/spell.key"
if [ ! -f "$KEY" ]; then
  echo "==> creating DEMO signing key in spells/demo-key" >&2
  spellhost spell keygen --out "$ROOT/spells/demo-key"
fi

for name in "${SPELL_NAMES[@]}"; do
  dir="$SPELLS/$name"
  echo "==> $name: sbom + sign" >&2
  spellhost spell sbom "$dir"
  spellhost spell sign "$dir" --key "$KEY"
  spellhost spell verify "$dir" --public-key "$ROOT/spells/demo-key/spell.pub" >&2
done
echo "==> done" >&2
