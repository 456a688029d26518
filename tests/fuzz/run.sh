#!/usr/bin/env bash
# run.sh TARGET SECONDS — build one libFuzzer target with clang (ASan+UBSan)
# and run it for a bounded time on a scratch copy of its seed corpus, so
# findings never pollute the committed corpus. Any crash fails the test; the
# crashing input is left in $GW_FUZZ_OUT (default /tmp) to become a
# regression seed.
set -euo pipefail
target=$1; secs=${2:-20}
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${GW_FUZZ_OUT:-$(mktemp -d /tmp/gwfuzz-XXXXXX)}
bin="$out/fuzz_$target"
case $target in
  proto) srcs=("$root/tests/fuzz/fuzz_proto.c" "$root/proto/proto.c" "$root/proto/meta.c"
               "$root/proto/error.c" "$root/daemon/runmeta.c")
         incs=(-I"$root/proto" -I"$root/daemon" $(pkg-config --cflags libcjson))
         libs=($(pkg-config --libs libcjson) -lm) ;;
  config) srcs=("$root/tests/fuzz/fuzz_config.c" "$root/daemon/config.c" "$root/daemon/engine.c"
                "$root/daemon/fdsketch.c"
                "$root/proto/proto.c" "$root/proto/error.c")
          incs=(-I"$root/daemon" -I"$root/proto" $(pkg-config --cflags inih lapacke openblas))
          libs=($(pkg-config --libs inih lapacke openblas) -lm) ;;
  http_query) srcs=("$root/tests/fuzz/fuzz_http_query.c" "$root/daemon/http_query.c"
                    "$root/daemon/point.c" "$root/proto/proto.c" "$root/proto/error.c")
              incs=(-I"$root/daemon" -I"$root/proto" $(pkg-config --cflags libmicrohttpd))
              libs=($(pkg-config --libs libmicrohttpd) -lm) ;;
  rules) srcs=("$root/tests/fuzz/fuzz_rules.c" "$root/daemon/alert_rules.c" "$root/daemon/alert_kinds.c"
               "$root/daemon/point.c" "$root/daemon/util.c" "$root/proto/error.c")
         incs=(-I"$root/daemon" -I"$root/proto" $(pkg-config --cflags inih))
         libs=($(pkg-config --libs inih) -lm -lpthread) ;;
  sse) srcs=("$root/tests/fuzz/fuzz_sse.c" "$root/client/cli_sse.c" "$root/daemon/util.c"
            "$root/proto/error.c")
       incs=(-I"$root/client" -I"$root/daemon" -I"$root/proto") libs=(-lpthread) ;;
  *) echo "unknown fuzz target $target" >&2; exit 2 ;;
esac
clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE "${incs[@]}" "${srcs[@]}" "${libs[@]}" -o "$bin"
mkdir -p "$out/corpus"
cp -r "$root/tests/fuzz/corpus/$target/." "$out/corpus/"
"$bin" -max_total_time="$secs" -print_final_stats=1 -artifact_prefix="$out/" "$out/corpus" 2>&1 | tail -15
echo "fuzz_$target: no findings in ${secs}s"
[ -n "${GW_FUZZ_OUT:-}" ] || rm -rf "$out"
