# shellcheck shell=bash
# step NAME CMD...: run CMD under a "=== NAME" heading, append "<seconds> s  NAME" (and its
# exit code when it failed) to $CI_TIMES, return CMD's exit code. Sourced by .ci/run and
# .ci/docker-part, which write to one file while they run side by side.
step() {
  local name="$1" started=$SECONDS rc=0
  shift
  printf '\n=== %s\n' "$name"
  "$@" || rc=$?
  local line
  line="$(printf '%5d s  %s' $((SECONDS - started)) "$name")"
  ((rc == 0)) || line+=" (exit $rc)"
  printf '%s\n' "$line" >>"$CI_TIMES"
  return "$rc"
}
