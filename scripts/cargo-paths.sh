# Sourced by examples/demo.sh and the benches/*.sh scripts: where cargo puts things, asked of
# cargo itself, so CARGO_TARGET_DIR, a workspace or a .cargo/config.toml `target-dir` are
# all honoured (no hard-coded `target/release`).
#   dmemu_bin     build the release binary (quietly) and print its path
#   target_dir    print cargo's target directory (criterion writes under it)
# Both need ROOT set to the repository.

dmemu_bin() {
  local exe
  exe=$(cargo build --release --quiet --bin dmemu --message-format=json \
      --manifest-path "$ROOT/Cargo.toml" |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
  if [ -z "$exe" ] || [ ! -x "$exe" ]; then
    echo "cargo build did not report the dmemu binary" >&2
    return 1
  fi
  printf '%s\n' "$exe"
}

target_dir() {
  cargo metadata --format-version 1 --no-deps --manifest-path "$ROOT/Cargo.toml" |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p'
}
