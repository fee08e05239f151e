#!/usr/bin/env bash
# The one command that checks everything: installs what a fresh machine lacks
# (the real servers the tests start, etcd, Prometheus and ZooKeeper, and protoc with its
# well-known types for etcd-client's build script), then format, the README's run command as a
# machine without protoc runs it, lints, every test, a build of the
# benchmarks and a short fuzz run. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
# ZooKeeper's server jar (the tests start its JVM directly; the package brings Java).
[ -f /usr/share/java/zookeeper.jar ] || missing+=(zookeeper)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
# protoc's well-known types (google/protobuf/*.proto), which etcd's protos import.
[ -f /usr/include/google/protobuf/descriptor.proto ] || missing+=(libprotobuf-dev)
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ]; then
    echo "==> installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "The tests start real servers; install them first:" >&2
    echo "    sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi
# The Debian packages install services; the tests start their own copies.
for service in etcd prometheus; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$service" 2>/dev/null; then
    echo "note: a system $service service is running; the tests use their own ports and data" >&2
  fi
done

echo "==> cargo fmt --check"
cargo fmt --all --check

# The README's run command, as on a fresh machine: no protoc anywhere
# (PROTOC pointing nowhere makes every protoc-calling build script fail as it
# would there). Its own target directory, where protoc never existed, so that
# no artifact built with protoc can stand in for one that would fail.
echo "==> cargo run -p examples --bin quickstart (as on a machine without protoc)"
quickstart_log=$(mktemp)
if ! env PROTOC=/nonexistent/protoc CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/fresh-machine" \
  cargo run --quiet -p examples --bin quickstart >"$quickstart_log" 2>&1; then
  cat "$quickstart_log" >&2
  echo "the README's run command fails without protoc" >&2
  exit 1
fi
grep -E "^(volo|tonic) +-> .* served by " "$quickstart_log"
grep -q "deregistered both servers and shut down cleanly" "$quickstart_log"
rm -f "$quickstart_log"

echo "==> cargo clippy"
cargo clippy --workspace --all-targets --all-features --quiet -- -D warnings

echo "==> rpc-ext-registry: feature tower pulls in no tonic (feature tonic does)"
tree_of() { cargo tree -p rpc-ext-registry --features "$1" -e normal --prefix none; }
if tree_of tower | grep -q '^tonic '; then
  echo "rpc-ext-registry's feature tower depends on tonic" >&2
  exit 1
fi
tree_of tonic | grep -q '^tonic ' || { echo "feature tonic lost tonic?" >&2; exit 1; }

# The example binaries are started by the shutdown tests.
echo "==> example binaries"
cargo build --workspace --all-features --bins --quiet

echo "==> cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --all-features 2>&1 | tee "$log"

# Benchmarks are run by hand (BENCHMARKS.md); here they must only build. The
# dev profile reuses the test build instead of compiling everything again
# in release mode.
echo "==> benchmarks build"
cargo build --workspace --all-features --benches --quiet

# A short fuzz run of every target (cargo-fuzz, libFuzzer): what the suite
# reads from the network and from registry backends must never panic. The
# stable compiler takes cargo-fuzz's instrumentation flags with
# RUSTC_BOOTSTRAP; the unoptimized build keeps this step's compile short.
# Longer runs: RELIABILITY.md.
fuzz_seconds="${FUZZ_SECONDS:-10}"
echo "==> fuzz (${fuzz_seconds} s per target)"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi
fuzz=(env RUSTC_BOOTSTRAP=1 cargo fuzz)
fuzz_flags=(--dev --sanitizer none --debug-assertions)
"${fuzz[@]}" build "${fuzz_flags[@]}"
fuzz_log=$(mktemp)
trap 'rm -f "$log" "$fuzz_log"' EXIT
for target in $("${fuzz[@]}" list); do
  corpus=$(mktemp -d)
  "${fuzz[@]}" run "${fuzz_flags[@]}" "$target" "$corpus" "fuzz/seeds/$target" -- \
    -max_total_time="$fuzz_seconds" -print_final_stats=1 >"$fuzz_log" 2>&1 || {
    cat "$fuzz_log" >&2
    echo "fuzz target $target failed; the crashing input is under fuzz/artifacts/$target" >&2
    exit 1
  }
  runs=$(awk '/stat::number_of_executed_units/ { print $2 }' "$fuzz_log")
  echo "fuzz $target: ${runs:-?} inputs, no failure"
  rm -rf "$corpus"
done

# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "summary: %d passed, %d failed\n", p, f }' "$log"
